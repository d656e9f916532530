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


def step_fn(model, batch, isolate: bool, implementation: str):
    def step():
        inputs = dict(batch)
        if isolate:
            inputs = isolate_documents(inputs, causal=True, implementation=implementation, dtype=model.dtype)
        else:
            inputs["position_ids"] = document_position_ids(inputs.pop("document_ids"))  # same positions, shared
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
        for isolate in (False, True):
            cases.append((implementation, isolate, step_fn(model, batch, isolate, implementation)))
    seconds = interleaved_medians([step for *_, step in cases], rounds=args.rounds, warmup=1)
    memory = [peak_bytes(step, args.device) for *_, step in cases]
    rows = []
    for i, (implementation, isolate, _) in enumerate(cases):
        base = i - 1 if isolate else i  # the shared case of the same implementation
        rows.append(
            [
                implementation,
                "isolated (4D mask)" if isolate else "shared (padding mask)",
                seconds[i] * 1e3,
                seconds[i] / seconds[base],
                memory[i] / 2**20,
                memory[i] / memory[base],
            ]
        )
    print(f"device={args.device}, torch {torch.__version__}, B={BATCH}, T={BLOCK}, rounds={args.rounds}")
    print(format_table(["attn", "attention", "step ms", "time ×", "peak MiB", "memory ×"], rows))


if __name__ == "__main__":
    main()
