"""The fine-tuning protocol of arXiv 2507.00994: every checkpoint × task × learning rate × seed, best rate on validation.

For each (checkpoint, task): fine-tune once per learning rate of the grid and per seed (AdamW, 10% warmup then
linear decay, up to `max_steps` or `num_train_epochs`, whichever ends first), score the validation and test splits,
pick the learning rate with the best mean validation score, and report the test scores of its seeds as a mean with
a Student-t confidence interval (95% by default). Two stability figures come with it: the spread of the test score
over seeds at the best rate (`test_std`) and how much the mean over the grid's rates loses against the best rate on
validation (`lr_sensitivity`; 0 = the rate does not matter).

The loop is a plain PyTorch loop, not `transformers.Trainer`: the protocol runs hundreds of short fine-tunings
(4 tasks × 6 rates × 5 seeds per checkpoint), where the Trainer's per-run setup would cost more than the training.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers
from transformers import get_linear_schedule_with_warmup

from hf_pretrain.cli import parse_mapping
from hf_pretrain.collators.contrastive import DataCollatorForContrastive
from hf_pretrain.data.tokenizer import load_tokenizer
from hf_pretrain.evaluation.encoders import ATTENTION_MODES, load_task_model
from hf_pretrain.evaluation.features import collate, evaluate_task, featurize
from hf_pretrain.evaluation.metrics import mean_confidence_interval
from hf_pretrain.evaluation.reporting import markdown_table, mean_with_interval, write_rows
from hf_pretrain.evaluation.tasks import TASK_TYPES, Task, load_task

logger = logging.getLogger(__name__)

STUDY_LEARNING_RATES = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4]


@dataclass
class FinetuneArguments:
    """Which checkpoints, which tasks, and the protocol: learning-rate grid, seeds, steps, batch."""

    model_name_or_path: list[str] = field(
        default_factory=list, metadata={"help": "Checkpoints to evaluate (local folders or Hub ids), one or more."}
    )
    revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the checkpoints."}
    )
    tasks: list[str] = field(
        default_factory=lambda: list(TASK_TYPES),
        metadata={
            "help": "Task specs: TYPE (built-in tiny task), TYPE:PATH (local csv/json/jsonl file or folder) or "
            "TYPE:NAME[:CONFIG] (Hub dataset); TYPE is sc, tc, qa or ir. See hf_pretrain.evaluation.tasks."
        },
    )
    column_map: dict | str | None = field(
        default=None, metadata={"help": "Rename task columns to the schema, e.g. {'sentence': 'text'}."}
    )
    learning_rates: list[float] = field(
        default_factory=lambda: list(STUDY_LEARNING_RATES), metadata={"help": "The learning-rate grid."}
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "Fine-tuning seeds."})
    max_steps: int = field(default=1000, metadata={"help": "At most this many optimizer steps per fine-tuning."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "At most this many epochs per fine-tuning."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Linear warmup over this fraction of the steps."})
    batch_size: int = field(
        default=16, metadata={"help": "Training batch size (IR: pairs, so batch_size - 1 negatives)."}
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    max_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Use at most this many training examples."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: none)."})
    attention: str = field(
        default="auto",
        metadata={
            "help": f"One of {ATTENTION_MODES}: 'auto' runs masked-LM checkpoints bidirectional, causal ones causal."
        },
    )
    temperature: float = field(default=0.05, metadata={"help": "IR: InfoNCE temperature."})
    lora_rank: int | None = field(
        default=None, metadata={"help": "Fine-tune a LoRA adapter of this rank (peft); unset: all weights."}
    )
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (alpha / rank)."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals over seeds."})
    output_dir: str = field(default="outputs/finetune_eval", metadata={"help": "Where runs.csv and summary.* go."})

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path: give at least one checkpoint to fine-tune.")
        self.column_map = parse_mapping(self.column_map, "column_map")
        for spec in self.tasks:
            if spec.partition(":")[0] not in TASK_TYPES:
                raise ValueError(f"tasks: {spec!r} must start with a task type, one of {TASK_TYPES}.")
        if not self.learning_rates or any(lr <= 0 for lr in self.learning_rates):
            raise ValueError(f"learning_rates must be positive and non-empty, got {self.learning_rates}.")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed.")
        for name in ("max_steps", "batch_size", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.num_train_epochs <= 0:
            raise ValueError(f"num_train_epochs must be positive, got {self.num_train_epochs}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}.")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}.")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be positive, got {self.lora_rank}.")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ValueError(f"max_train_examples must be positive, got {self.max_train_examples}.")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_model(
    model,
    kind: str,
    features: Sequence[dict],
    tokenizer,
    args: FinetuneArguments,
    learning_rate: float,
    seed: int,
    device,
) -> tuple[int, float]:
    """Fine-tune `model` in place; returns (steps, mean loss of the last 10 steps), the loss NaN when it diverged."""
    steps_per_epoch = math.ceil(len(features) / args.batch_size)
    total = max(1, min(args.max_steps, math.ceil(args.num_train_epochs * steps_per_epoch)))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(args.warmup_ratio * total), total)
    if kind == "ir":  # pairs → query/positive batches with in-batch negatives (and duplicate texts masked)
        pairs = DataCollatorForContrastive(tokenizer, max_length=args.max_length)
        make_batch: Callable = pairs
    else:
        make_batch = lambda chunk: collate(chunk, tokenizer.pad_token_id)  # noqa: E731
    order = torch.Generator().manual_seed(seed)
    model.train()
    losses, step = [], 0
    while step < total:
        for indices in torch.randperm(len(features), generator=order).split(args.batch_size):
            batch = {k: v.to(device) for k, v in make_batch([features[i] for i in indices]).items()}
            loss = model(**batch).loss
            loss.backward()
            if args.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(parameters, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step == total:
                break
    return step, float(np.mean(losses[-10:]))


def finetune_once(
    checkpoint: str,
    task: Task,
    data: dict,
    tokenizer,
    args: FinetuneArguments,
    learning_rate: float,
    seed: int,
    device,
) -> dict:
    """One fine-tuning run and its validation and test scores, as a flat record."""
    started = time.perf_counter()
    transformers.set_seed(seed)  # the head's initialisation and any dropout
    model = load_task_model(
        task.kind, checkpoint, num_labels=max(len(task.labels), 2), attention=args.attention, revision=args.revision,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, temperature=args.temperature,
    ).to(device)  # fmt: skip
    steps, loss = train_model(model, task.kind, data["train"], tokenizer, args, learning_rate, seed, device)
    record = {
        "checkpoint": checkpoint,
        "task": task.name,
        "type": task.kind,
        "learning_rate": learning_rate,
        "seed": seed,
        "steps": steps,
        "train_loss": loss,
    }
    for split in ("validation", "test"):
        scores = evaluate_task(
            model, task, split, data[split], tokenizer, args.eval_batch_size, args.max_length, device
        )
        record.update({f"{split}_{name}": value for name, value in scores.items()})
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def summarize(runs: Sequence[dict], task: Task, confidence: float = 0.95) -> dict:
    """The protocol's verdict for one (checkpoint, task): best rate on validation, test mean and interval there."""
    metric = task.metric
    by_rate: dict[float, list[dict]] = {}
    for run in runs:
        by_rate.setdefault(run["learning_rate"], []).append(run)
    validation = {rate: float(np.mean([r[f"validation_{metric}"] for r in group])) for rate, group in by_rate.items()}
    # A diverged run scores NaN; nanmax-style selection keeps the grid usable when one rate blows up.
    best = max(validation, key=lambda rate: -math.inf if math.isnan(validation[rate]) else validation[rate])
    test = [r[f"test_{metric}"] for r in by_rate[best]]
    mean, low, high = mean_confidence_interval(test, confidence)
    finite = [v for v in validation.values() if not math.isnan(v)]
    return {
        "checkpoint": runs[0]["checkpoint"], "task": task.name, "type": task.kind, "metric": metric,
        "best_learning_rate": best, "validation_mean": validation[best], "mean": mean, "ci_low": low, "ci_high": high,
        "test_std": float(np.std(test, ddof=1)) if len(test) > 1 else math.nan,
        "lr_sensitivity": validation[best] - float(np.mean(finite)) if finite else math.nan, "seeds": len(test),
    }  # fmt: skip


def prepare_task_data(task: Task, tokenizer, args: FinetuneArguments) -> dict[str, list[dict]]:
    data = {split: featurize(task, split, tokenizer, args.max_length) for split in ("train", "validation", "test")}
    if args.max_train_examples is not None:
        data["train"] = data["train"][: args.max_train_examples]
    if not data["train"]:
        raise ValueError(f"task {task.name!r} has no usable training example after tokenization.")
    return data


def run_finetuning(
    args: FinetuneArguments, tasks: Sequence[Task] | None = None, labels: Sequence[str] | None = None
) -> tuple[list[dict], list[dict]]:
    """Run the protocol for every checkpoint and task; returns (every run, one summary row per checkpoint × task).

    `tasks` overrides `args.tasks` with ready `Task` objects; `labels` names the checkpoints in the results
    (default: their paths).
    """
    tasks = list(tasks) if tasks is not None else [load_task(spec, args.column_map) for spec in args.tasks]
    labels = list(labels) if labels is not None else list(args.model_name_or_path)
    device = _device()
    runs, summary = [], []
    for checkpoint, label in zip(args.model_name_or_path, labels):
        tokenizer = load_tokenizer(checkpoint, revision=args.revision)
        for task in tasks:
            data = prepare_task_data(task, tokenizer, args)
            task_runs = []
            for learning_rate in args.learning_rates:
                for seed in args.seeds:
                    record = finetune_once(checkpoint, task, data, tokenizer, args, learning_rate, seed, device)
                    record["checkpoint"] = label
                    task_runs.append(record)
                    logger.info("%s %s lr=%g seed=%d: validation %s=%.4f (%.1fs)", label, task.name, learning_rate, seed,
                                task.metric, record[f"validation_{task.metric}"], record["seconds"])  # fmt: skip
            runs += task_runs
            summary.append(summarize(task_runs, task, args.confidence))
    return runs, summary


def write_finetuning_results(runs: Sequence[dict], summary: Sequence[dict], output_dir: str) -> list[str]:
    """`runs.csv/.json` (every run), `summary.csv/.json` and `summary.md` (mean ± CI half-width per checkpoint × task)."""
    paths = write_rows(runs, os.path.join(output_dir, "runs")) + write_rows(
        summary, os.path.join(output_dir, "summary")
    )
    table = markdown_table(
        summary,
        ["checkpoint", "task", "metric", "test mean ± 95% CI", "best lr", "test_std", "lr_sensitivity"],
        {
            "test mean ± 95% CI": lambda r: mean_with_interval(r["mean"], r["ci_low"], r["ci_high"]),
            "best lr": lambda r: f"{r['best_learning_rate']:g}",
        },
    )
    with open(os.path.join(output_dir, "summary.md"), "w") as handle:
        handle.write(table + "\n")
    return [*paths, os.path.join(output_dir, "summary.md")]
