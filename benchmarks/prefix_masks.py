"""Prefix masks out of the DataLoader worker: decoder-only prefix LM and UL2 with the (B, 1, T, T) mask built in the
worker (before, `attention_on_device=False`) against the compact columns (after, `attention_on_device=True`).

Run from the repository root: `python benchmarks/prefix_masks.py [--rounds N] [--device cpu|cuda] [--breakdown]`.

One thread (`torch.set_num_threads(1)`: tokens/s per core). Features are plain Python lists (what `datasets` hands
a collator) of 64 x 512 and 8 x 4096 tokens, without and with `document_lengths` (documents of 1..600 tokens cut
at block ends by `block_document_lengths`: ~2-3 pieces per 512-token block, ~14 per 4096-token block). Before and
after are timed interleaved round by round (`_timing.interleaved_medians`; after in bursts of `BURST` calls, see
`burst`; rows whose before-call takes seconds get fewer rounds), so their ratio holds on a loaded machine;
absolute figures do not. "after alone" times the after-collator by itself, back to back, as a worker runs it
(interleaved, the before-call's 16-130 MB masks still slow the after-call behind it): the figure for the target.
Tokens/s count the raw tokens of the features. "mask ms" is what the step then pays instead: `isolate_documents`
on the after-batch (what `PretrainingTrainer._prepare_inputs` does), sdpa form, on `--device` (on a CPU it builds
B x T x T intermediates one thread at a time: seconds at 8 x 4096; an accelerator's figure is the one that
matters). `--breakdown` prints where an after-call of each collator spends its time, stage by stage.
Target: >= 10 M tokens/s per core after, for both collators.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _timing import format_table, interleaved_medians, median_seconds  # noqa: E402

from hf_pretrain.collators import prefix_lm, ul2  # noqa: E402
from hf_pretrain.collators._rows import Pieces  # noqa: E402
from hf_pretrain.data.packing import block_document_lengths  # noqa: E402
from hf_pretrain.data.tokenizer import train_tokenizer  # noqa: E402
from hf_pretrain.training.document_mask import isolate_documents  # noqa: E402

SHAPES = [(64, 512), (8, 4096)]
BURST = 4  # calls per timed sample, reported per call
CORPUS = ["Span corruption replaces spans of tokens with sentinels.", "The decoder restores them in order."] * 8
HEADERS = [
    "collator",
    "batch",
    "documents",
    "before ms",
    "before Mtok/s",
    "after ms",
    "speed-up",
    "after alone ms",
    "after alone Mtok/s",
    "mask ms (device)",
]


def tokenizer():
    # UL2's X-denoiser (50% noise, spans of 3) cuts a 4096-token row into ~680 spans: one sentinel each.
    return train_tokenizer(CORPUS, vocab_size=2048, min_frequency=1, num_sentinels=1024)


def features(batch: int, length: int, vocab: int, documents: bool, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = [{"input_ids": [rng.randrange(1200, vocab) for _ in range(length)]} for _ in range(batch)]
    if not documents:
        return rows
    lengths = np.random.default_rng(seed).integers(1, 600, 8 * batch * length // 300 + 8)
    pieces = block_document_lengths(lengths, length, batch).to_pylist()
    return [{**row, "document_lengths": p} for row, p in zip(rows, pieces)]


def collators(tok) -> dict[str, tuple]:
    """name -> (before, after): the same collator with the mask built in the worker, then on the device."""
    return {
        "prefix LM, decoder-only": tuple(
            prefix_lm.DataCollatorForPrefixLM(tok, seed=0, attention_on_device=on) for on in (False, True)
        ),
        "UL2, decoder-only": tuple(
            ul2.DataCollatorForUL2(tok, decoder_only=True, seed=0, attention_on_device=on) for on in (False, True)
        ),
    }


def burst(collator, feats):
    """BURST calls back to back, as a worker makes them: an after-call right behind a before-call finds its working
    set evicted by the before-call's 16 MB to 130 MB 4D mask, a cost no run that uses one collator has."""
    return lambda: [collator(feats) for _ in range(BURST)]


def mask_seconds(batch: dict, device: str, rounds: int) -> float:
    """Median time of the step's mask build from the after-batch's columns, on `device`."""
    inputs = {k: v.to(device) for k, v in batch.items()}

    def build():
        isolate_documents(inputs, causal=True, implementation="sdpa", dtype=torch.float32)
        if device == "cuda":
            torch.cuda.synchronize()

    return median_seconds(build, repeat=rounds)


def rows(tok, rounds: int, device: str) -> list[list]:
    out = []
    for name, (before, after) in collators(tok).items():
        for batch, length in SHAPES:
            for documents in (False, True):
                feats = features(batch, length, len(tok), documents)
                start = time.perf_counter()
                before(feats)
                slow = time.perf_counter() - start  # a 2 s before-call gets fewer rounds
                row_rounds = max(3, min(rounds, int(rounds * 0.05 / slow)))
                before_s, after_s = interleaved_medians(
                    [lambda c=before, f=feats: c(f), burst(after, feats)], rounds=row_rounds, warmup=1
                )
                after_s /= BURST
                alone_s = median_seconds(lambda c=after, f=feats: c(f), repeat=rounds)  # what a worker runs
                tokens = batch * length
                out.append(
                    [
                        name,
                        f"{batch}x{length}",
                        "yes" if documents else "no",
                        before_s * 1e3,
                        tokens / before_s / 1e6,
                        after_s * 1e3,
                        f"{before_s / after_s:.1f}x",
                        alone_s * 1e3,
                        tokens / alone_s / 1e6,
                        mask_seconds(after(feats), device, max(rounds // 3, 3)) * 1e3,
                    ]
                )
    return out


# ---- where the time of an after-call goes ----------------------------------------------------------------------------

_STAGES = {  # module -> the names it calls that are timed as stages (names a module lacks are skipped)
    prefix_lm: ("input_id_rows", "document_pieces_of", "sample_keys", "draw_split_points", "decoder_only_batch"),
    ul2: (
        "examples_of",
        "document_keys",
        "keyed_fraction",
        "draw_spans",
        "place_segments",
        "draw_split_points",
        "decoder_only_batch",
    ),
}


def breakdown(tok, rounds: int) -> str:
    """Stage times (ms per call) of the after-collators, measured by wrapping the functions they call."""
    spent: dict[str, float] = collections.defaultdict(float)

    def timed(label, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start

        return wrapper

    saved = [
        (module, name, getattr(module, name))
        for module, names in _STAGES.items()
        for name in names
        if hasattr(module, name)
    ]
    lay_out = Pieces.lay_out
    for module, name, fn in saved:
        setattr(module, name, timed(name, fn))
    Pieces.lay_out = timed("Pieces.lay_out", lay_out)
    lines = []
    try:
        for name, (_, after) in collators(tok).items():
            for batch, length in SHAPES:
                for documents in (False, True):
                    feats = features(batch, length, len(tok), documents)
                    for _ in range(3):
                        after(feats)
                    spent.clear()
                    start = time.perf_counter()
                    for _ in range(rounds):
                        after(feats)
                    total = (time.perf_counter() - start) / rounds
                    stages = {k: v / rounds for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
                    stages["(the collator's own code)"] = total - sum(stages.values())
                    parts = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in stages.items())
                    docs = "documents" if documents else "no documents"
                    lines.append(f"{name} {batch}x{length} {docs}: {total * 1e3:.2f} ms = {parts}")
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)
        Pieces.lay_out = lay_out
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per row (after 3 warm-up calls)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--breakdown", action="store_true", help="also print the stage times of the after-calls")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tok = tokenizer()
    table = format_table(HEADERS, rows(tok, args.rounds, args.device))
    print(
        f"torch {torch.__version__}, 1 thread, mask on {args.device}; median of {args.rounds} interleaved rounds; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(table)
    if args.breakdown:
        print("\nms per after-call, by stage:")
        print(breakdown(tok, args.rounds))
    return table


if __name__ == "__main__":
    main()
