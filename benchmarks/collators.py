"""Collator throughput against transformers' collators on the same inputs and tokenizer, one thread.

Run from the repository root: `python benchmarks/collators.py [--rounds N]`.

Inputs are pre-tokenized batches given as plain Python lists of ints (as `datasets` hands them over): 64 x 512 and
8 x 4096 blocks of real tokenized text, and ragged batches (64 documents of 128..512 tokens) for padding-free rows.
Each row times the baseline and ours interleaved in the same run (`_timing.interleaved_medians`), so the ratio is
robust to machine load. Targets (issue 3): MLM >= 5x `DataCollatorForLanguageModeling(mlm=True)` and >= 10 M
tokens/s (64 x 512 in <= 3.3 ms), with `document_lengths` too (`attention_on_device=True`, the recipe's path).

`document_rows` times, in one interleaved group per objective and shape, transformers' collator (the named
baseline, on the same blocks without document lengths), ours without document lengths, and ours with them in each
form: the compact device form (`attention_on_device=True`) and the default form that isolates documents in the
batch itself (CLM: no attention_mask; MLM, and CLM with `attn_implementation`: a (B, 1, T, T) mask). The label
gives each with-documents row's time relative to ours without them.

Rows come from the functions in `ROWS`, each `fn(ctx: Context) -> list[row]`; a row is
`[collator, batch shape, ms/batch (ours), Mtok/s (ours), baseline ms/batch, speed-up]`, best made with
`ctx.measure(...)`. When `benchmarks/_span_cases.py` exists, its `span_rows(rounds) -> list[row]` rows are appended
(7-column rows `[collator, batch, ms, Mtok/s, baseline name, baseline ms, speed-up]` get the baseline name folded
into the collator column).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _timing import format_table, interleaved_medians  # noqa: E402
from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening  # noqa: E402

from hf_pretrain.collators import DataCollatorForCausalLM, DataCollatorForMaskedLM  # noqa: E402
from hf_pretrain.data.packing import block_document_lengths  # noqa: E402
from hf_pretrain.data.tokenizer import train_tokenizer  # noqa: E402

HEADERS = ["collator", "batch shape", "ms/batch (ours)", "Mtok/s (ours)", "baseline ms/batch", "speed-up"]
Row = list


def synthetic_text(n_words: int, seed: int = 0) -> str:
    """Pseudo-English: words of 1-4 syllables from a fixed generator, with punctuation, so words span tokens."""
    rng = np.random.default_rng(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "ch"]
    vowels = ["a", "e", "i", "o", "u", "ou", "ea", "ai"]
    codas = ["", "", "n", "r", "s", "t", "l", "ng", "ck"]
    lexicon = [
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.integers(1, 5)))
        for _ in range(3000)
    ]
    weights = 1.0 / np.arange(1, len(lexicon) + 1)  # Zipf's law, as in natural text
    words = rng.choice(lexicon, n_words, p=weights / weights.sum())
    return " ".join(w + (rng.choice([".", ","]) if rng.random() < 0.08 else "") for w in words)


@dataclass
class Context:
    """Shared inputs for the benchmark rows."""

    tokenizer: object
    rounds: int
    token_stream: list[int]  # real tokenized text, chopped into blocks by `blocks`
    offsets: list[tuple[int, int]]
    rows: list[Row] = field(default_factory=list)

    def blocks(self, batch: int, length: int, with_offsets: bool = False) -> list[dict]:
        """`batch` features of `length` consecutive tokens each, as Python lists."""
        features = []
        for i in range(batch):
            start = (i * length) % (len(self.token_stream) - length)
            feature = {"input_ids": self.token_stream[start : start + length]}
            if with_offsets:
                feature["offset_mapping"] = self.offsets[start : start + length]
            features.append(feature)
        return features

    def ragged(self, batch: int, low: int, high: int, seed: int = 0) -> list[dict]:
        rng = np.random.default_rng(seed)
        lengths = rng.integers(low, high + 1, batch)
        starts = np.cumsum(np.concatenate([[0], lengths[:-1]])) % (len(self.token_stream) - high)
        return [{"input_ids": self.token_stream[s : s + n]} for s, n in zip(starts, lengths)]

    def measure(
        self,
        label: str,
        shape: str,
        ours: Callable[[Sequence[dict]], object],
        baseline: Callable[[Sequence[dict]], object] | None,
        features: Sequence[dict],
        baseline_features: Sequence[dict] | None = None,
    ) -> Row:
        """Time `ours(features)` against `baseline(baseline_features or features)`, interleaved."""
        n_tokens = sum(len(f["input_ids"]) for f in features)
        fns = [lambda: ours(features)]
        if baseline is not None:
            other = baseline_features if baseline_features is not None else features
            fns.insert(0, lambda: baseline(other))
        times = interleaved_medians(fns, rounds=self.rounds)
        return _row(label, shape, n_tokens, times[-1], times[0] if baseline is not None else None)

    def measure_group(
        self,
        shape: str,
        baseline: Callable[[Sequence[dict]], object],
        baseline_features: Sequence[dict],
        candidates: Sequence[tuple[str, Callable[[Sequence[dict]], object], Sequence[dict]]],
    ) -> list[Row]:
        """Time the baseline and every (label, collator, features) candidate interleaved in one group, so their
        ratios share the machine's load; the first candidate is the reference of the others' relative cost."""
        fns = [lambda: baseline(baseline_features)] + [
            (lambda fn=fn, features=features: fn(features)) for _, fn, features in candidates
        ]
        base_s, *times = interleaved_medians(fns, rounds=self.rounds)
        rows = []
        for (label, _, features), ours_s in zip(candidates, times):
            if rows:
                label = f"{label} ({ours_s / times[0]:.2f}x the time without)"
            n_tokens = sum(len(f["input_ids"]) for f in features)
            rows.append(_row(label, shape, n_tokens, ours_s, base_s))
        return rows


def _row(label: str, shape: str, n_tokens: int, ours_s: float, base_s: float | None) -> Row:
    return [
        label,
        shape,
        ours_s * 1e3,
        n_tokens / ours_s / 1e6,
        base_s * 1e3 if base_s is not None else "-",
        f"{base_s / ours_s:.1f}x" if base_s is not None else "-",
    ]


def mlm_rows(ctx: Context) -> list[Row]:
    tok = ctx.tokenizer
    ours = DataCollatorForMaskedLM(tok, seed=0)
    baseline = DataCollatorForLanguageModeling(tok, mlm=True)
    return [
        ctx.measure("MLM (vs HF mlm=True)", f"{b} x {t}", ours, baseline, ctx.blocks(b, t))
        for b, t in [(64, 512), (8, 4096)]
    ]


def mlm_variant_rows(ctx: Context) -> list[Row]:
    tok = ctx.tokenizer
    features = ctx.blocks(64, 512, with_offsets=True)  # HF whole-word masking needs offset_mapping; ours ignores it
    baseline = DataCollatorForLanguageModeling(tok, mlm=True)
    with warnings.catch_warnings():  # HF whole-word masking warns that it forces mask_replace_prob = 1
        warnings.simplefilter("ignore")
        baseline_wwm = DataCollatorForLanguageModeling(tok, mlm=True, whole_word_mask=True)
    ragged = ctx.ragged(64, 128, 512)
    return [
        ctx.measure(
            "MLM whole-word (vs HF whole_word_mask)",
            "64 x 512",
            DataCollatorForMaskedLM(tok, whole_word_mask=True, seed=0),
            baseline_wwm,
            features,
        ),
        ctx.measure(
            "MLM exact count (vs HF mlm=True)",
            "64 x 512",
            DataCollatorForMaskedLM(tok, exact_count=True, seed=0),
            baseline,
            ctx.blocks(64, 512),
        ),
        ctx.measure(
            "MLM padding-free (vs HF mlm=True, padded)",
            f"64 x 128..512 -> 1 x {sum(len(f['input_ids']) for f in ragged)}",
            DataCollatorForMaskedLM(tok, padding_free=True, seed=0),
            baseline,
            ragged,
        ),
    ]


def clm_rows(ctx: Context) -> list[Row]:
    tok = ctx.tokenizer
    ours = DataCollatorForCausalLM(tok)
    baseline = DataCollatorForLanguageModeling(tok, mlm=False)
    rows = [
        ctx.measure("CLM (vs HF mlm=False)", f"{b} x {t}", ours, baseline, ctx.blocks(b, t))
        for b, t in [(64, 512), (8, 4096)]
    ]
    ragged = ctx.ragged(64, 128, 512)
    rows.append(
        ctx.measure(
            "CLM padding-free (vs HF DataCollatorWithFlattening)",
            f"64 x 128..512 -> 1 x {sum(len(f['input_ids']) for f in ragged)}",
            DataCollatorForCausalLM(tok, padding_free=True),
            DataCollatorWithFlattening(return_flash_attn_kwargs=True),
            ragged,
        )
    )
    return rows


def with_document_lengths(features: Sequence[dict], mean_length: int = 300, seed: int = 0) -> list[dict]:
    """The blocks with `document_lengths` as packing makes them: documents of 1..2 * mean_length tokens cut at
    block ends (`block_document_lengths`), so a 512-token block holds ~2-3 pieces and a 4096-token one ~14."""
    block = len(features[0]["input_ids"])
    rng = np.random.default_rng(seed)
    documents = rng.integers(1, 2 * mean_length, 4 * block * len(features) // mean_length + 8)
    pieces = block_document_lengths(documents, block, len(features)).to_pylist()
    return [{**f, "document_lengths": p} for f, p in zip(features, pieces)]


def document_rows(ctx: Context) -> list[Row]:
    """The cost of document isolation: per objective and shape, transformers' collator (the named baseline), ours
    without `document_lengths`, and ours with them in the device form and in the default (in-batch) form."""
    tok = ctx.tokenizer
    mlm_baseline = DataCollatorForLanguageModeling(tok, mlm=True)
    clm_baseline = DataCollatorForLanguageModeling(tok, mlm=False)
    rows = []
    for b, t in [(64, 512), (8, 4096)]:
        plain = ctx.blocks(b, t)
        documents = with_document_lengths(plain)
        shape = f"{b} x {t}"
        rows += ctx.measure_group(
            shape,
            mlm_baseline,
            plain,
            [
                ("MLM, no document_lengths (vs HF mlm=True)", DataCollatorForMaskedLM(tok, seed=0), plain),
                (
                    "MLM + document_lengths, attention_on_device=True",
                    DataCollatorForMaskedLM(tok, seed=0, attention_on_device=True),
                    documents,
                ),
                ("MLM + document_lengths, default: 4D sdpa mask", DataCollatorForMaskedLM(tok, seed=0), documents),
            ],
        )
        rows += ctx.measure_group(
            shape,
            clm_baseline,
            plain,
            [
                ("CLM, no document_lengths (vs HF mlm=False)", DataCollatorForCausalLM(tok), plain),
                (
                    "CLM + document_lengths, attention_on_device=True",
                    DataCollatorForCausalLM(tok, attention_on_device=True),
                    documents,
                ),
                ("CLM + document_lengths, default: no attention_mask", DataCollatorForCausalLM(tok), documents),
                (
                    "CLM + document_lengths, attn_implementation='sdpa': 4D mask",
                    DataCollatorForCausalLM(tok, attn_implementation="sdpa"),
                    documents,
                ),
            ],
        )
    return rows


ROWS: list[Callable[[Context], list[Row]]] = [mlm_rows, mlm_variant_rows, clm_rows, document_rows]


def _six_columns(row: Row) -> Row:
    if len(row) == 7:  # [collator, batch, ms, Mtok/s, baseline name, baseline ms, speed-up]
        label, shape, ms, mtoks, baseline, base_ms, ratio = row
        return [label if baseline in ("-", "", None) else f"{label} (vs {baseline})", shape, ms, mtoks, base_ms, ratio]
    return list(row)


def build_context(rounds: int) -> Context:
    text = synthetic_text(120_000)
    tokenizer = train_tokenizer([text[i : i + 10_000] for i in range(0, len(text), 10_000)], vocab_size=8192)
    encoding = tokenizer(text, return_offsets_mapping=True)
    return Context(tokenizer, rounds, encoding["input_ids"], encoding["offset_mapping"])


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per row (after 3 warm-up calls)")
    parser.add_argument(
        "--only", choices=[fn.__name__ for fn in ROWS], nargs="+", help="run only these row groups (default: all)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ctx = build_context(args.rounds)
    row_functions = [fn for fn in ROWS if not args.only or fn.__name__ in args.only]
    try:
        from _span_cases import span_rows  # written alongside the span-corruption / prefix-LM / UL2 collators
    except ImportError:
        pass
    else:
        if not args.only:
            row_functions.append(lambda ctx: [_six_columns(row) for row in span_rows(ctx.rounds)])
    rows = [row for fn in row_functions for row in fn(ctx)]
    table = format_table(HEADERS, rows)
    print(
        f"torch {torch.__version__}, 1 thread, vocab {len(ctx.tokenizer)}; median of {args.rounds} interleaved rounds"
    )
    print(table)
    return table


if __name__ == "__main__":
    main()
