"""Benchmark rows for the span-corruption, prefix-LM and UL2 collators (issue 4).

`span_rows()` returns table rows [collator, batch shape, ours ms/batch, ours M raw tok/s, baseline, baseline
ms/batch, speed-up]; `benchmarks/collators.py` appends them to its table, and `python benchmarks/_span_cases.py`
prints them alone. One thread (`torch.set_num_threads(1)`), features as plain Python lists (what `datasets` hands
a collator), timings interleaved round by round with the baseline. Targets: span corruption >= 4x the per-example
NumPy baseline and >= 10 M raw tokens/s; prefix LM and UL2 >= 10 M tokens/s (no baseline: "-").

`document_rows` (issue 14): the decoder-only collators in the recipe's form (`attention_on_device=True`: compact
columns, the mask built on the device) on 64 x 512 and 8 x 4096 blocks, without and with `document_lengths` (packed
documents of 1..600 tokens cut at block ends, ~2-3 pieces per 512-token block), timed interleaved per collator and
shape; target >= 10 M tokens/s with document lengths too.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import torch
from _span_baseline import NumpySpanCorruptionBaseline
from _timing import format_table, interleaved_medians

from hf_pretrain.collators.prefix_lm import DataCollatorForPrefixLM
from hf_pretrain.collators.span_corruption import (
    DataCollatorForSpanCorruption,
    add_sentinel_tokens,
    compute_span_corruption_lengths,
)
from hf_pretrain.collators.ul2 import DataCollatorForUL2
from hf_pretrain.data.packing import block_document_lengths
from hf_pretrain.data.tokenizer import train_tokenizer

HEADERS = ["collator", "batch", "ours ms/batch", "ours M raw tok/s", "baseline", "baseline ms/batch", "speed-up"]
BATCH, INPUTS_LENGTH, LENGTH = 64, 512, 512
CORPUS = ["Span corruption replaces spans of tokens with sentinels.", "The decoder restores them in order."] * 8


def _features(batch: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"input_ids": [rng.randrange(200, vocab) for _ in range(length)]} for _ in range(batch)]


def _with_document_lengths(features: list[dict], mean_length: int = 300, seed: int = 0) -> list[dict]:
    """The features with `document_lengths` as packing makes them (`benchmarks/collators.py`'s documents)."""
    block = len(features[0]["input_ids"])
    rng = np.random.default_rng(seed)
    documents = rng.integers(1, 2 * mean_length, 4 * block * len(features) // mean_length + 8)
    pieces = block_document_lengths(documents, block, len(features)).to_pylist()
    return [{**f, "document_lengths": p} for f, p in zip(features, pieces)]


def document_rows(tokenizer, rounds: int) -> list[list]:
    """Decoder-only UL2, span corruption and prefix LM, `attention_on_device=True`, without and with documents."""
    vocab = len(tokenizer)  # ordinary tokens only in the features
    tokenizer = copy.deepcopy(tokenizer)
    add_sentinel_tokens(tokenizer, 1024)  # 8 x 4096 rows without documents: up to 683 spans (X, density 0.5)
    collators = [
        ("UL2", lambda: DataCollatorForUL2(tokenizer, decoder_only=True, attention_on_device=True, seed=0)),
        (
            "span corruption",
            lambda: DataCollatorForSpanCorruption(tokenizer, decoder_only=True, attention_on_device=True, seed=0),
        ),
        ("prefix LM", lambda: DataCollatorForPrefixLM(tokenizer, attention_on_device=True, seed=0)),
    ]
    rows = []
    for batch, length in [(64, 512), (8, 4096)]:
        plain = _features(batch, length, vocab, seed=2)
        documents = _with_document_lengths(plain)
        for name, make in collators:
            collator = make()
            plain_s, documents_s = interleaved_medians(
                [lambda c=collator, f=plain: c(f), lambda c=collator, f=documents: c(f)], rounds=rounds
            )
            label = f"{name}, decoder-only, attention_on_device"
            shape, tokens = f"{batch}x{length}", batch * length
            rows.append([label, shape, plain_s * 1e3, tokens / plain_s / 1e6, "-", "-", "-"])
            rows.append(
                [
                    f"{label} + document_lengths ({documents_s / plain_s:.2f}x the time without)",
                    shape,
                    documents_s * 1e3,
                    tokens / documents_s / 1e6,
                    "-",
                    "-",
                    "-",
                ]
            )
    return rows


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
        return rows + document_rows(tokenizer, rounds)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(format_table(HEADERS, span_rows()))
