"""Cost of document isolation: step time and peak memory of forward+backward, shared attention vs the dense 4D mask.

A llama-mini-sized decoder (hidden 128, 4 layers, 4 heads, vocab 8192) on packed blocks of 512 tokens, batch 8,
documents of seeded random lengths. "shared" is the plain (B, T) padding mask (documents see each other);
"isolated" passes the batch through `isolate_documents` (mask built inside the timed step, as the trainer would)
and hands the (B, 1, T, T) mask to eager (additive float) or sdpa (bool). Ratios are against shared attention of
the same implementation, timed interleaved (benchmarks/_timing.py).

Peak memory: on CUDA `torch.cuda.max_memory_allocated` over one step; on CPU torch.profiler with
profile_memory=True: the running sum, in start order, of every event's self_cpu_memory_usage (bytes each op
allocated or freed itself, "[memory]" events for frees outside ops) over one step: the peak of tensor memory
allocated during the step above what was live before it, at op granularity. tracemalloc is not used: it sees only
Python's allocator, not torch's tensors.

    python benchmarks/document_mask.py [--rounds 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table, interleaved_medians  # noqa: E402

from hf_pretrain.training.document_mask import document_position_ids, isolate_documents  # noqa: E402

BLOCK, BATCH = 512, 8


def build_model(implementation: str, device: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=BLOCK,
    )
    model = LlamaForCausalLM(config).to(device).train()
    model.set_attn_implementation(implementation)
    return model


def packed_batch(device: str) -> dict[str, torch.Tensor]:
    """(B, T) ids, padding mask, labels and document_ids: documents of 16..256 tokens, the last cut at the block end."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(BATCH):
        lengths, total = [], 0
        while total < BLOCK:
            n = min(int(torch.randint(16, 257, (1,), generator=generator)), BLOCK - total)
            lengths.append(n)
            total += n
        rows.append(torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)))
    document_ids = torch.stack(rows)  # (B, T)
    ids = torch.randint(0, 8192, (BATCH, BLOCK), generator=generator)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": ids.to(device),
        "document_ids": document_ids.to(device),
    }


MODES = {
    "shared": "shared (padding mask)",
    "dense": "isolated (4D mask on the device)",
    "native": "isolated (position_ids, no mask)",
}


def step_fn(model, batch, mode: str, implementation: str):
    def step():
        inputs = dict(batch)
        if mode == "dense":
            inputs = isolate_documents(inputs, causal=True, implementation=implementation, dtype=model.dtype)
        else:
            inputs["position_ids"] = document_position_ids(inputs.pop("document_ids"))  # same positions
            if mode == "native":  # transformers' own packed-sequence mask (find_packed_sequence_indices)
                inputs.pop("attention_mask")
        model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)
        if batch["input_ids"].is_cuda:
            torch.cuda.synchronize()

    return step


def peak_bytes(step, device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda event: event.time_range.start):
        # self bytes: what the op itself allocated (+) or freed (-); frees outside ops are "[memory]" events
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    batch = packed_batch(args.device)
    cases = []
    for implementation in ("eager", "sdpa"):
        model = build_model(implementation, args.device)
        for mode in MODES:
            cases.append((implementation, mode, step_fn(model, batch, mode, implementation)))
    seconds = interleaved_medians([step for *_, step in cases], rounds=args.rounds, warmup=1)
    memory = [peak_bytes(step, args.device) for *_, step in cases]
    rows = []
    for i, (implementation, mode, _) in enumerate(cases):
        base = i - list(MODES).index(mode)  # the shared case of the same implementation
        rows.append(
            [
                implementation,
                MODES[mode],
                seconds[i] * 1e3,
                seconds[i] / seconds[base],
                memory[i] / 2**20,
                memory[i] / memory[base],
            ]
        )
    print(f"device={args.device}, torch {torch.__version__}, B={BATCH}, T={BLOCK}, rounds={args.rounds}")
    print(format_table(["attn", "attention", "step ms", "time ×", "peak MiB", "memory ×"], rows))
    print()
    padding_free_table(args)


def short_documents(count: int, generator) -> list[torch.Tensor]:
    """Sentence-like documents: 8..96 tokens, most short (a geometric-like spread)."""
    lengths = (8 + torch.distributions.Exponential(1 / 24).sample((count,)).clamp(max=88)).long()
    return [torch.randint(0, 8192, (int(n),), generator=generator) for n in lengths]


def padded_step(model, documents, device):
    """Whole documents as rows, padded to the longest of the batch (labels -100 on padding)."""
    width = max(len(d) for d in documents)
    ids = torch.zeros(len(documents), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, document in enumerate(documents):
        ids[i, : len(document)], mask[i, : len(document)] = document, 1
    labels = ids.masked_fill(mask == 0, -100)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}

    def step():
        model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)

    return step, float(1 - mask.float().mean())


def padding_free_step(model, documents, device, implementation):
    """The same documents flattened into one row, each attending to itself (4D mask built on the device)."""
    ids = torch.cat(documents)[None]  # (1, N)
    document_ids = torch.repeat_interleave(torch.arange(len(documents)), torch.tensor([len(d) for d in documents]))
    batch = {"input_ids": ids.to(device), "labels": ids.to(device), "document_ids": document_ids[None].to(device)}

    def step():
        inputs = isolate_documents(batch, causal=True, implementation=implementation, dtype=model.dtype)
        model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def padding_free_table(args) -> None:
    """packing: false against padded batches of whole documents: real tokens per second, padding computed."""
    generator = torch.Generator().manual_seed(1)
    documents = short_documents(256, generator)
    budget = 2048
    rows_free, row, used = [], [], 0  # greedy rows of at most `budget` tokens, in corpus order
    for document in documents:
        if used + len(document) > budget:
            rows_free.append(row)
            row, used = [], 0
        row.append(document)
        used += len(document)
    rows_free.append(row)
    batch_docs = 32
    cases, labels = [], []
    for implementation in ("eager", "sdpa"):
        model = build_model(implementation, args.device)
        padded = [padded_step(model, documents[i : i + batch_docs], args.device) for i in range(0, 256, batch_docs)]
        free = [padding_free_step(model, r, args.device, implementation) for r in rows_free]
        padding = sum(p for _, p in padded) / len(padded)

        def run_all(steps=tuple(s for s, _ in padded)):
            for step in steps:
                step()

        def run_free(steps=tuple(free)):
            for step in steps:
                step()

        cases += [run_all, run_free]
        labels += [
            (implementation, f"padded, {batch_docs} documents a batch", padding),
            (implementation, f"padding-free, rows of {budget}", 0.0),
        ]
    seconds = interleaved_medians(cases, rounds=args.rounds, warmup=1)
    tokens = sum(len(d) for d in documents)
    table = []
    for i, ((implementation, layout, padding), second) in enumerate(zip(labels, seconds)):
        base = seconds[i - i % 2]
        table.append([implementation, layout, padding * 100, tokens / second, base / second])
    print(f"{len(documents)} short documents, {tokens} tokens; padding-free rows: {len(rows_free)}")
    print(format_table(["attn", "layout", "padding %", "real tokens/s", "speed ×"], table))


if __name__ == "__main__":
    main()
