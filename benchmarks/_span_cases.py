"""Benchmark rows for the span-corruption, prefix-LM and UL2 collators (issue 4).

`span_rows()` returns table rows [collator, batch shape, ours ms/batch, ours M raw tok/s, baseline, baseline
ms/batch, speed-up]; `benchmarks/collators.py` appends them to its table, and `python benchmarks/_span_cases.py`
prints them alone. One thread (`torch.set_num_threads(1)`), features as plain Python lists (what `datasets` hands
a collator), timings interleaved round by round with the baseline. Targets: span corruption >= 4x the per-example
NumPy baseline and >= 10 M raw tokens/s; prefix LM and UL2 >= 10 M tokens/s (no baseline: "-").
"""

from __future__ import annotations

import random

import torch
from _span_baseline import NumpySpanCorruptionBaseline
from _timing import format_table, interleaved_medians

from hf_pretrain.collators.prefix_lm import DataCollatorForPrefixLM
from hf_pretrain.collators.span_corruption import DataCollatorForSpanCorruption, compute_span_corruption_lengths
from hf_pretrain.collators.ul2 import DataCollatorForUL2
from hf_pretrain.data.tokenizer import train_tokenizer

HEADERS = ["collator", "batch", "ours ms/batch", "ours M raw tok/s", "baseline", "baseline ms/batch", "speed-up"]
BATCH, INPUTS_LENGTH, LENGTH = 64, 512, 512
CORPUS = ["Span corruption replaces spans of tokens with sentinels.", "The decoder restores them in order."] * 8


def _features(batch: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"input_ids": [rng.randrange(200, vocab) for _ in range(length)]} for _ in range(batch)]


def span_rows(rounds: int = 30) -> list[list]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer = train_tokenizer(CORPUS, vocab_size=512, min_frequency=1)
        raw_length, _ = compute_span_corruption_lengths(INPUTS_LENGTH, 0.15, 3.0)
        span_features = _features(BATCH, raw_length, len(tokenizer))
        ours = DataCollatorForSpanCorruption(tokenizer, inputs_length=INPUTS_LENGTH)
        baseline = NumpySpanCorruptionBaseline(ours.sentinel_ids, tokenizer.eos_token_id)
        assert ours(span_features)["input_ids"].shape == baseline(span_features)["input_ids"].shape
        ours_s, base_s = interleaved_medians(
            [lambda: ours(span_features), lambda: baseline(span_features)], rounds=rounds
        )
        raw_tokens = BATCH * raw_length
        rows = [
            [
                "span corruption (T5)",
                f"{BATCH}x{raw_length} raw -> {INPUTS_LENGTH}",
                ours_s * 1e3,
                raw_tokens / ours_s / 1e6,
                "per-example NumPy (Flax T5MLM)",
                base_s * 1e3,
                f"{base_s / ours_s:.1f}x",
            ]
        ]
        features = _features(BATCH, LENGTH, len(tokenizer), seed=1)
        others = [
            ("prefix LM, decoder-only (sdpa 4D mask)", DataCollatorForPrefixLM(tokenizer)),
            ("UL2, encoder-decoder", DataCollatorForUL2(tokenizer)),
            ("UL2, decoder-only (sdpa 4D mask)", DataCollatorForUL2(tokenizer, decoder_only=True)),
        ]
        for name, collator in others:
            # Timed one at a time: interleaving them would let the 16-30 MB 4D masks of one evict the others'
            # working sets from cache, a cost none of them has in a real run (one collator per run).
            (seconds,) = interleaved_medians([lambda c=collator: c(features)], rounds=rounds)
            rows.append([name, f"{BATCH}x{LENGTH}", seconds * 1e3, BATCH * LENGTH / seconds / 1e6, "-", "-", "-"])
        return rows
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(format_table(HEADERS, span_rows()))
