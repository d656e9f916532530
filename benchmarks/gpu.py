"""Training throughput of the fast paths on a GPU: tokens/s, MFU and peak memory per attention kernel, compile and
document attention, as ratios to the first row of each model.

    python benchmarks/gpu.py [--steps 20] [--warmup 5] [--batch 8] [--sequence 2048]
    python benchmarks/gpu.py --cpu-smoke   # every row for 2 steps on CPU: a tiny model, sequences of 64

Models: `llama-small` trained with CLM, and `llama-210m` (the EuroBERT-style 210M encoder: the Llama backbone with
bidirectional attention and the sparse masked-LM head) trained with MLM. Rows, one switch at a time from the first:
sdpa / flash_attention_2, torch_compile off / on, documents shared / isolated. Every row trains through the
package's own path: the objective's collator, the collator wrapper that passes `document_lengths` on
(`CurriculumCollator(documents=True)`, as `training.setup.attach` installs it for `document_attention: isolated`)
and `PretrainingTrainer`, with the switches as the run sets them (`attn_implementation` of the model,
`PretrainingArguments.torch_compile` and `bf16`, checked by the recipe's `check_fast_paths`). Blocks are random token ids of packed documents whose lengths are
drawn around a quarter of the sequence (seeded), the same for every row.

tokens/s is measured over the steps after `--warmup` (compilation happens there); MFU uses the trainer's own count
(`training.throughput`) at the rows' real attention context and the GPU's dense bf16 peak; peak memory is
`torch.cuda.max_memory_allocated`. A flash row reports "skipped: needs CUDA" on CPU and "not installed" without the
flash_attn package; a row that fails reports why and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast, PrinterCallback, TrainerCallback  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table  # noqa: E402

from hf_pretrain import PretrainingArguments, PretrainingTrainer, build_config, build_model  # noqa: E402
from hf_pretrain.data.curriculum import CurriculumCollator  # noqa: E402
from hf_pretrain.objectives import CollatorContext, get_objective  # noqa: E402
from hf_pretrain.training.fast_paths import check_fast_paths  # noqa: E402
from hf_pretrain.training.throughput import (  # noqa: E402
    attention_context,
    model_flops_per_token,
    peak_flops_per_device,
)

FLASH = "flash_attention_2"
# (attention, torch_compile, documents): the first row is the baseline, the others change one or two switches.
ROWS = (
    ("sdpa", False, "shared"),
    ("sdpa", False, "isolated"),
    ("sdpa", True, "shared"),
    (FLASH, False, "shared"),
    (FLASH, False, "isolated"),
    (FLASH, True, "isolated"),
)
# (preset, objective, vocabulary): Llama 2's 32,000 for the decoder, EuroBERT's 128,256 for the encoder.
MODELS = (("llama-small", "clm", 32_000), ("llama-210m", "mlm", 128_256))
SMOKE_MODELS = (("llama-tiny", "clm", 512), ("llama-tiny", "mlm", 512))
HEADERS = ["model", "attention", "compile", "documents", "tokens/s", "MFU", "peak memory (GiB)", "ratio", "status"]


def synthetic_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `vocab_size` ids with the special tokens the collators use; no training, no text."""
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    vocab = {token: i for i, token in enumerate(specials + [f"t{i}" for i in range(vocab_size - len(specials))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>")  # fmt: skip


def packed_blocks(vocab_size: int, blocks: int, length: int, seed: int = 0) -> Dataset:
    """Random ids in packed blocks of documents, lengths drawn exponentially around length / 4 (cut at the block)."""
    rng = np.random.default_rng(seed)
    rows, pieces = rng.integers(5, vocab_size, (blocks, length)).tolist(), []
    for _ in range(blocks):
        lengths, room = [], length
        while room:
            take = int(min(room, max(1, rng.exponential(length / 4))))
            lengths.append(take)
            room -= take
        pieces.append(lengths)
    return Dataset.from_dict({"input_ids": rows, "document_lengths": pieces})


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step (after the device finished it)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def skip_reason(attention: str) -> str | None:
    if attention == FLASH and not torch.cuda.is_available():
        return "skipped: needs CUDA"
    if attention == FLASH and importlib.util.find_spec("flash_attn") is None:
        return "not installed"
    return None


def train_row(preset, objective, vocab, attention, compiled, documents, *, steps, warmup, batch, sequence, cpu):
    """Train one row for `steps` steps; its measured tokens/s (after the warm-up steps), MFU and peak memory."""
    gc.collect()  # the previous row's model and optimizer state out of the peak memory of this one
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    tokenizer = synthetic_tokenizer(vocab)
    spec = get_objective(objective)
    torch.manual_seed(0)
    model = build_model(build_config(preset, tokenizer), attn_implementation=attention, masked_decoder=spec.masked_lm)
    data = packed_blocks(len(tokenizer), steps * batch, sequence)
    with tempfile.TemporaryDirectory() as out:
        args = PretrainingArguments(
            output_dir=out, objective=objective, max_steps=steps, per_device_train_batch_size=batch,
            learning_rate=1e-4, warmup_steps=0, logging_steps=10_000, save_strategy="no", eval_strategy="no",
            report_to="none", disable_tqdm=True, seed=0, dataloader_pin_memory=False, use_cpu=cpu, bf16=not cpu,
            torch_compile=compiled,
        )  # fmt: skip
        # what the recipe's resolve step refuses, refused here too (a ValueError: the row reports it)
        check_fast_paths(args, attn_implementation=attention, model_type=model.config.model_type, prefix_mask=False,
                         padding_free=False)  # fmt: skip
        context = CollatorContext(tokenizer, args, decoder_only=True, attn_implementation=attention)  # Llama
        trainer = PretrainingTrainer(model=model, args=args, train_dataset=data, data_collator=spec.collator(context),
                                     processing_class=tokenizer, sequence_length=sequence)  # fmt: skip
        # What setup.attach does for document_attention: isolated (and, for shared, drops document_lengths).
        trainer.data_collator = CurriculumCollator(trainer.data_collator, None, documents=documents == "isolated")
        trainer.remove_callback(PrinterCallback)
        clock = StepClock()
        trainer.add_callback(clock)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    # from the end of the last warm-up step to the end of the run: packed blocks, every token is a real one
    tokens_per_second = (steps - warmup) * batch * sequence / (clock.ends[-1] - clock.ends[warmup - 1])
    isolated = data if documents == "isolated" else None
    masked = args.mlm_probability if spec.masked_lm and objective == "mlm" else None
    per_token = model_flops_per_token(model, attention_context(sequence, isolated), masked)
    peak = peak_flops_per_device(precision="bf16") if not cpu else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"tokens/s": tokens_per_second, "MFU": tokens_per_second * per_token / peak if peak else None,
            "memory": memory}  # fmt: skip


def benchmark(models, *, steps: int, warmup: int, batch: int, sequence: int, cpu: bool) -> tuple[list[list], bool]:
    """The table's rows, and whether every row that could run did."""
    table, ok = [], True
    for preset, objective, vocab in models:
        base = None
        for attention, compiled, documents in ROWS:
            label = [f"{preset} ({objective})", attention, "on" if compiled else "off", documents]
            status = skip_reason(attention)
            if status is not None:
                table.append(label + ["-", "-", "-", "-", status])
                continue
            try:
                got = train_row(preset, objective, vocab, attention, compiled, documents, steps=steps, warmup=warmup,
                                batch=batch, sequence=sequence, cpu=cpu)  # fmt: skip
            except Exception as error:  # noqa: BLE001  a row's failure is its result; the other rows still run
                ok = False
                message = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
                table.append(label + ["-", "-", "-", "-", f"failed: {type(error).__name__}: {message}"])
                continue
            base = base or got["tokens/s"]
            mfu = f"{100 * got['MFU']:.1f}%" if got["MFU"] is not None else "-"
            memory = f"{got['memory']:.2f}" if got["memory"] is not None else "-"
            table.append(label + [f"{got['tokens/s']:,.0f}", mfu, memory, f"{got['tokens/s'] / base:.2f}", "ok"])
    return table, ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="Steps not timed (compilation happens there).")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=2048)
    parser.add_argument("--cpu-smoke", action="store_true", help="Every row for 2 steps on CPU, tiny model.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    if args.cpu_smoke:
        torch.set_num_threads(1)
        models, steps, warmup, batch, sequence, cpu = SMOKE_MODELS, 2, 1, 2, 64, True
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --cpu-smoke")
    else:
        models, steps, warmup, batch, sequence, cpu = MODELS, args.steps, args.warmup, args.batch, args.sequence, False
    if not 0 < warmup < steps:
        parser.error(f"--warmup must be at least 1 and below --steps ({steps}), got {warmup}")
    device = torch.cuda.get_device_name() if not cpu else "CPU"
    table, ok = benchmark(models, steps=steps, warmup=warmup, batch=batch, sequence=sequence, cpu=cpu)
    print(f"{device}, {steps} steps of {batch} x {sequence} tokens ({warmup} not timed), bf16={not cpu}")
    print(format_table(HEADERS, table))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
