"""PretrainingTrainer against a plain transformers.Trainer, and the cost of resuming.

    python benchmarks/trainer.py [--steps 60] [--rounds 3] [--resume-steps 1000]

1. Step time: the same tiny Llama, packed blocks, collator and arguments, trained by `transformers.Trainer` and by
   `PretrainingTrainer` (WSD schedule, objective plan, metrics); runs alternate A, B, A, B so machine load hits both.
   The median step time over steady-state steps (the first 10 of each run are dropped) gives the overhead.
2. Resume cost: a run saves checkpoints at step 10 and at step N; resuming from each and training one more step is
   timed from `train()` to the end of that step. Restoring the data position must not replay batches, so both
   should cost about the same.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table  # noqa: E402

from hf_pretrain import PretrainingArguments, PretrainingTrainer, build_config, build_model, train_tokenizer  # noqa: E402
from hf_pretrain.collators import DataCollatorForCausalLM  # noqa: E402
from hf_pretrain.data.sources import default_corpus  # noqa: E402

BLOCK, BATCH = 128, 8


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self):
        self.start, self.ends = time.perf_counter(), []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def setup():
    tokenizer = train_tokenizer(default_corpus()["text"], vocab_size=2048)
    rng = np.random.default_rng(0)
    blocks = Dataset.from_dict({"input_ids": rng.integers(10, len(tokenizer), (4000, BLOCK)).tolist()})
    return tokenizer, blocks


def common_args(output_dir: str, max_steps: int) -> dict:
    return dict(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=BATCH, learning_rate=1e-3,
        warmup_steps=5, logging_steps=10, report_to="none", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, seed=0, dataloader_pin_memory=False, include_num_input_tokens_seen="non_padding",
    )  # fmt: skip


def run(trainer_class, tokenizer, blocks, steps: int, **extra) -> list[float]:
    torch.manual_seed(0)
    model = build_model(build_config("llama-tiny", tokenizer))
    with tempfile.TemporaryDirectory() as out:
        if trainer_class is Trainer:
            args = TrainingArguments(**common_args(out, steps), lr_scheduler_type="linear", **extra)
            trainer = Trainer(
                model=model, args=args, train_dataset=blocks, data_collator=DataCollatorForCausalLM(tokenizer)
            )
        else:
            args = PretrainingArguments(**common_args(out, steps), decay_steps=0.2, **extra)
            trainer = PretrainingTrainer(
                model=model, args=args, train_dataset=blocks, data_collator=DataCollatorForCausalLM(tokenizer),
                sequence_length=BLOCK,
            )  # fmt: skip
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return list(np.diff(clock.ends))[10:]  # steady state: drop warm-up steps


def step_overhead(tokenizer, blocks, steps: int, rounds: int) -> list[list]:
    times = {Trainer: [], PretrainingTrainer: []}
    for _ in range(rounds):
        for cls in (Trainer, PretrainingTrainer):
            times[cls] += run(cls, tokenizer, blocks, steps)
    base, ours = statistics.median(times[Trainer]), statistics.median(times[PretrainingTrainer])
    return [
        ["transformers.Trainer (baseline)", f"{base * 1e3:.2f}", "1.000", len(times[Trainer])],
        ["PretrainingTrainer", f"{ours * 1e3:.2f}", f"{ours / base:.3f}", len(times[PretrainingTrainer])],
    ]


def resume_cost(tokenizer, blocks, last: int) -> list[list]:
    rows = []
    with tempfile.TemporaryDirectory() as out:
        torch.manual_seed(0)
        model = build_model(build_config("llama-tiny", tokenizer, {"num_hidden_layers": 1, "hidden_size": 32}))
        base = common_args(out, last) | {"save_strategy": "steps", "save_steps": 10, "save_total_limit": None}
        trainer = PretrainingTrainer(model=model, args=PretrainingArguments(**base, decay_steps=0.1), train_dataset=blocks,
                                     data_collator=DataCollatorForCausalLM(tokenizer))  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        for done in (10, last):
            model = build_model(build_config("llama-tiny", tokenizer, {"num_hidden_layers": 1, "hidden_size": 32}))
            args = PretrainingArguments(**(base | {"max_steps": done + 1, "save_strategy": "no"}), decay_steps=0.1)
            trainer = PretrainingTrainer(model=model, args=args, train_dataset=blocks,
                                         data_collator=DataCollatorForCausalLM(tokenizer))  # fmt: skip
            clock = StepClock()
            trainer.add_callback(clock)
            trainer.remove_callback(PrinterCallback)
            trainer.train(resume_from_checkpoint=os.path.join(out, f"checkpoint-{done}"))
            rows.append([f"resume after {done} steps", f"{(clock.ends[0] - clock.start) * 1e3:.0f}"])
    ratio = float(rows[1][1]) / float(rows[0][1])
    rows[0].append("1.00")
    rows[1].append(f"{ratio:.2f}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resume-steps", type=int, default=1000)
    options = parser.parse_args(argv)
    torch.set_num_threads(2)
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("hf_pretrain").setLevel(logging.ERROR)  # resumed runs warn that the checkpoint's schedule wins
    transformers.utils.logging.disable_progress_bar()
    tokenizer, blocks = setup()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, llama-tiny, batch {BATCH} x {BLOCK} tokens")
    print(format_table(["trainer", "median ms/step", "ratio", "steps timed"],
                       step_overhead(tokenizer, blocks, options.steps, options.rounds)))  # fmt: skip
    print()
    print(format_table(["resume", "ms to first step", "ratio"], resume_cost(tokenizer, blocks, options.resume_steps)))


if __name__ == "__main__":
    main()
