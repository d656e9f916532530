"""An objective ablation in miniature (arXiv 2507.00994): a grid of tiny models at equal compute, each pretrained,
scored on held-out text and fine-tuned on four tasks, in one call.

The corpus is split once: the last `heldout_fraction` of its text (at a paragraph boundary) is held out for the
intrinsic metrics and for the fine-tuning tasks, which are generated from it (`synthetic_task`: SC, TC, QA, IR), so
no model has seen the task text. One tokenizer is trained on the rest and shared, so losses and masks compare.

Grid entries (equal compute: the same preset, steps, batch, block size and learning rate for every model):

- `scratch`: the same model, randomly initialised and not trained (what pretraining adds over fine-tuning alone);
- `clm`; `mlm` or `mlm:RATE` (the masking rate; default `mlm_probability`);
- `clm_then_mlm:SWITCH`: CLM for SWITCH of the steps, then MLM (one run, one optimizer);
- `cpt_from_clm:FRACTION` and `cpt_from_mlm:FRACTION`: continued pretraining with MLM for FRACTION of the steps,
  a cooldown branch (warmup, then decay) from the `clm` (or `mlm` at `mlm_probability`) run's checkpoint at
  1 - FRACTION of its steps: the study's CPT, CLM-initialised or MLM-initialised, at the same total budget.

With `early_fraction`, the `clm` and `mlm` checkpoints at that fraction of training are fine-tuned too (the study's
data-efficiency comparison). Finished runs are reused when the ablation is run again into the same output_dir.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field

import transformers

from hf_pretrain.arguments import DataArguments, ModelArguments, PretrainingArguments, parse_mapping
from hf_pretrain.cli import parse_config
from hf_pretrain.data.sources import default_corpus
from hf_pretrain.data.tokenizer import load_tokenizer, train_tokenizer
from hf_pretrain.evaluation.ablation_report import write_results
from hf_pretrain.evaluation.finetune import FinetuneArguments, run_finetuning
from hf_pretrain.evaluation.intrinsic import IntrinsicArguments, evaluate_checkpoints, training_progress
from hf_pretrain.evaluation.tasks import TASK_TYPES, synthetic_task
from hf_pretrain.models import MODEL_PRESETS, build_config, build_model
from hf_pretrain.pipeline import run_pretraining

logger = logging.getLogger(__name__)

GRID_KINDS = ("scratch", "clm", "mlm", "clm_then_mlm", "cpt_from_clm", "cpt_from_mlm")
DEFAULT_GRID = ["scratch", "clm", "mlm:0.15", "mlm:0.3", "clm_then_mlm:0.25", "clm_then_mlm:0.5", "cpt_from_clm:0.5",
                "cpt_from_mlm:0.5"]  # fmt: skip


@dataclass(frozen=True)
class GridEntry:
    """One model of the grid: `kind` and its number (masking rate, switch fraction or CPT fraction)."""

    label: str
    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str, mlm_probability: float) -> GridEntry:
        kind, _, number = text.partition(":")
        if kind not in GRID_KINDS:
            raise ValueError(f"grid: {text!r} must start with one of {GRID_KINDS}.")
        if kind in ("scratch", "clm"):
            if number:
                raise ValueError(f"grid: {text!r}: {kind} takes no number.")
            return cls(text, kind)
        if not number and kind != "mlm":
            raise ValueError(f"grid: {text!r} needs a fraction, e.g. {kind}:0.25.")
        try:
            value = float(number) if number else mlm_probability
        except ValueError:
            raise ValueError(f"grid: {text!r}: {number!r} is not a number.") from None
        if not 0.0 < value < 1.0:
            raise ValueError(f"grid: {text!r}: the number must be in (0, 1).")
        return cls(text, kind, value)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.label)

    def describe(self) -> str:
        if self.kind == "scratch":
            return "no pretraining"
        if self.kind == "clm":
            return "CLM"
        if self.kind == "mlm":
            return f"MLM {self.value:.0%}"
        if self.kind == "clm_then_mlm":
            return f"CLM {self.value:.0%} → MLM {1 - self.value:.0%}"
        return f"{self.kind[-3:].upper()} {1 - self.value:.0%} → MLM CPT {self.value:.0%}"


@dataclass
class AblationArguments:
    """The grid, the shared pretraining budget, and the fine-tuning protocol of the ablation."""

    data_files: list[str] = field(
        default_factory=list, metadata={"help": "Corpus text files (.txt). Unset: the built-in default corpus."}
    )
    max_characters: int | None = field(default=None, metadata={"help": "Use at most this many characters of it."})
    heldout_fraction: float = field(default=0.1, metadata={"help": "Tail of the text held out for evaluation."})
    grid: list[str] = field(default_factory=lambda: list(DEFAULT_GRID), metadata={"help": "Models (module doc)."})
    model_preset: str = field(default="llama-tiny", metadata={"help": f"One of {sorted(MODEL_PRESETS)}."})
    config_overrides: dict | str | None = field(default=None, metadata={"help": "Config fields over the preset."})
    tokenizer_vocab_size: int = field(default=2048, metadata={"help": "Vocabulary of the shared tokenizer."})
    block_size: int = field(default=128, metadata={"help": "Pretraining sequence length."})
    batch_size: int = field(default=16, metadata={"help": "Pretraining sequences per step."})
    max_steps: int = field(default=600, metadata={"help": "Pretraining steps of every model (CPT: in total)."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak pretraining learning rate."})
    warmup_steps: float = field(default=0.1, metadata={"help": "WSD warmup (fraction or steps)."})
    decay_steps: float = field(default=0.2, metadata={"help": "WSD decay (fraction or steps)."})
    mlm_probability: float = field(default=0.3, metadata={"help": "Masking rate of CLM→MLM, CPT and the MLM metric."})
    save_fraction: float = field(default=0.25, metadata={"help": "Save a checkpoint every this fraction of steps."})
    early_fraction: float | None = field(
        default=0.25, metadata={"help": "Also fine-tune clm and mlm at this fraction of training (unset: don't)."}
    )
    tasks: list[str] = field(default_factory=lambda: list(TASK_TYPES), metadata={"help": "Task types to run."})
    task_sizes: list[int] = field(default_factory=lambda: [800, 200, 200], metadata={"help": "Train/val/test sizes."})
    learning_rates: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3], metadata={"help": "LR grid."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Fine-tuning seeds."})
    finetune_max_steps: int = field(default=1000, metadata={"help": "Fine-tuning: at most this many steps."})
    finetune_epochs: float = field(default=4.0, metadata={"help": "Fine-tuning: at most this many epochs."})
    finetune_batch_size: int = field(default=16, metadata={"help": "Fine-tuning batch size."})
    seed: int = field(default=0, metadata={"help": "Pretraining seed (also of the tasks and the MLM masks)."})
    output_dir: str = field(default="outputs/ablation", metadata={"help": "Where runs, tables and plots go."})

    def __post_init__(self):
        self.config_overrides = parse_mapping(self.config_overrides, "config_overrides")
        for path in self.data_files:
            if not os.path.isfile(path):
                raise ValueError(f"data_files: no such file {path!r}.")
        if self.model_preset not in MODEL_PRESETS:
            raise ValueError(f"model_preset={self.model_preset!r} is unknown; choose one of {sorted(MODEL_PRESETS)}.")
        if not 0.0 < self.heldout_fraction < 0.5:
            raise ValueError(f"heldout_fraction must be in (0, 0.5), got {self.heldout_fraction}.")
        entries = self.entries()
        if len({e.label for e in entries}) < len(entries):
            raise ValueError(f"grid: duplicate entries in {self.grid}.")
        for entry in entries:
            source = self.cpt_source(entry)
            if source is not None and source not in entries:
                raise ValueError(f"grid: {entry.label} branches from the {source.label!r} run; add it to the grid.")
        if any(t not in TASK_TYPES for t in self.tasks):
            raise ValueError(f"tasks must be among {TASK_TYPES}, got {self.tasks}.")
        if len(self.task_sizes) != 3 or min(self.task_sizes) < 1:
            raise ValueError(
                f"task_sizes must be three positive counts (train, validation, test), got {self.task_sizes}."
            )
        for name in ("save_fraction", "early_fraction"):
            value = getattr(self, name)
            if value is not None and not (0.0 < value < 1.0 and self.checkpoint_step(value) % self.save_every == 0):
                raise ValueError(
                    f"{name}={value} must be in (0, 1) and land on a saved step (every {self.save_every})."
                )
        for entry in entries:
            if entry.kind.startswith("cpt") and self.checkpoint_step(1 - entry.value) % self.save_every:
                raise ValueError(
                    f"grid: {entry.label} branches at a step without a checkpoint; align with save_fraction."
                )

    def entries(self) -> list[GridEntry]:
        return [GridEntry.parse(text, self.mlm_probability) for text in self.grid]

    def cpt_source(self, entry: GridEntry) -> GridEntry | None:
        if entry.kind == "cpt_from_clm":
            return GridEntry("clm", "clm")
        if entry.kind == "cpt_from_mlm":
            return next((e for e in self.entries() if e.kind == "mlm" and e.value == self.mlm_probability),
                        GridEntry(f"mlm:{self.mlm_probability:g}", "mlm", self.mlm_probability))  # fmt: skip
        return None

    def checkpoint_step(self, fraction: float) -> int:
        return round(fraction * self.max_steps)

    def run_dir(self, entry: GridEntry) -> str:
        return os.path.join(self.output_dir, "runs", entry.slug)

    def branch_checkpoint(self, entry: GridEntry) -> str:
        """The checkpoint a CPT entry branches from: its source run at 1 - FRACTION of the steps."""
        return os.path.join(
            self.run_dir(self.cpt_source(entry)), f"checkpoint-{self.checkpoint_step(1 - entry.value)}"
        )

    @property
    def save_every(self) -> int:
        return max(1, self.checkpoint_step(self.save_fraction))


# ---- the run -----------------------------------------------------------------------------------------------------


def split_corpus(args: AblationArguments) -> tuple[str, str, str]:
    """Write `data/train.txt` (the head of the text); return its path, its text and the held-out tail's text."""
    if args.data_files:
        texts = []
        for path in args.data_files:
            with open(path, encoding="utf-8") as handle:
                texts.append(handle.read())
        text = "\n\n".join(texts)
    else:
        text = "\n\n".join(default_corpus()["text"])
    text = text[: args.max_characters] if args.max_characters else text
    cut = int(len(text) * (1 - args.heldout_fraction))
    boundary = text.find("\n\n", cut)
    boundary = cut if boundary < 0 else boundary
    train_path = os.path.join(args.output_dir, "data", "train.txt")
    os.makedirs(os.path.dirname(train_path), exist_ok=True)
    with open(train_path, "w", encoding="utf-8") as handle:
        handle.write(text[:boundary])
    return train_path, text[:boundary], text[boundary:].strip()


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def _finished(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "trainer_state.json")) and os.path.isfile(
        os.path.join(run_dir, "config.json")
    )


def save_untrained(args: AblationArguments, tokenizer_dir: str, run_dir: str) -> str:
    """The grid's model before any training, saved like a finished run (no tokens seen)."""
    tokenizer = load_tokenizer(tokenizer_dir)
    transformers.set_seed(args.seed)  # seeded as the pretraining runs are before they build their model
    build_model(build_config(args.model_preset, tokenizer, args.config_overrides)).save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    with open(os.path.join(run_dir, "trainer_state.json"), "w") as handle:
        json.dump({"global_step": 0, "num_input_tokens_seen": 0}, handle)
    return run_dir


def pretrain_entry(entry: GridEntry, args: AblationArguments, train_path: str, tokenizer_dir: str) -> str:
    """Pretrain one model of the grid (or reuse it when finished); returns its output folder."""
    run_dir = args.run_dir(entry)
    if _finished(run_dir):
        logger.info("Reusing the finished run %s.", run_dir)
        return run_dir
    if entry.kind == "scratch":
        return save_untrained(args, tokenizer_dir, run_dir)
    steps, warmup, decay = args.max_steps, args.warmup_steps, args.decay_steps
    rate = ["--mlm_probability", str(entry.value if entry.kind == "mlm" else args.mlm_probability)]
    if entry.kind == "clm":
        objective = ["--objective", "clm"]
    elif entry.kind == "mlm":
        objective = ["--objective", "mlm", *rate]
    elif entry.kind == "clm_then_mlm":
        objective = ["--objective", "clm_then_mlm", "--switch_fraction", str(entry.value), *rate]
    else:  # a CPT branch: MLM from the source run's checkpoint, for the rest of the budget
        objective = ["--objective", "mlm", *rate, "--cooldown_from", args.branch_checkpoint(entry)]
        steps = args.max_steps - args.checkpoint_step(1 - entry.value)
        if warmup < 1:  # a fraction of the whole run's steps, as in the runs it is compared with
            warmup = max(1, round(warmup * args.max_steps))
    argv = [
        "--data_files", train_path, "--validation_fraction", "0", "--eval_strategy", "no",
        "--tokenizer_name_or_path", tokenizer_dir, "--model_preset", args.model_preset,
        "--config_overrides", json.dumps(args.config_overrides), "--block_size", str(args.block_size),
        "--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(steps),
        "--learning_rate", str(args.learning_rate), "--warmup_steps", str(warmup), "--decay_steps", str(decay),
        "--weight_decay", "0.1", "--adam_beta2", "0.95", "--max_grad_norm", "1.0", "--seed", str(args.seed),
        "--save_steps", str(args.save_every), "--save_only_model", "true", "--logging_steps", str(max(1, steps // 20)),
        "--disable_tqdm", "true", "--output_dir", run_dir, *objective,
    ]  # fmt: skip
    if os.path.isdir(run_dir) and any(name.startswith("checkpoint-") for name in os.listdir(run_dir)):
        argv += ["--resume_from_checkpoint", "true"]  # an interrupted ablation: go on from the newest checkpoint
    run_pretraining(*parse_config((ModelArguments, DataArguments, PretrainingArguments), argv))
    return run_dir


def run_ablation(args: AblationArguments) -> dict:
    """Pretrain, score and fine-tune every model of the grid; write the tables and plots. Returns their paths."""
    entries = args.entries()
    train_path, train_text, heldout = split_corpus(args)
    tokenizer_dir = os.path.join(args.output_dir, "tokenizer")
    if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        train_tokenizer(paragraphs(train_text), args.tokenizer_vocab_size).save_pretrained(tokenizer_dir)
    run_dirs = {}
    for entry in sorted(entries, key=lambda e: e.kind.startswith("cpt")):  # CPT branches need their source runs
        run_dirs[entry.label] = pretrain_entry(entry, args, train_path, tokenizer_dir)

    # Intrinsic metrics of every checkpoint; a CPT branch counts the tokens of the run it branched from.
    intrinsic_args = IntrinsicArguments(
        model_name_or_path=list(run_dirs.values()), tokenizer_name_or_path=tokenizer_dir,
        mlm_probability=args.mlm_probability, seed=args.seed, output_dir=args.output_dir,
    )  # fmt: skip
    intrinsic = evaluate_checkpoints(intrinsic_args, paragraphs(heldout), args.block_size)
    slug_to_entry = {e.slug: e for e in entries}
    for row in intrinsic:
        entry = slug_to_entry[row["run"]]
        row["run"] = entry.label
        if entry.kind.startswith("cpt") and row["tokens_seen"] is not None:
            row["tokens_seen"] += training_progress(args.branch_checkpoint(entry))[1] or 0

    # Fine-tuning: the final models, and the early checkpoints of clm and mlm (data efficiency).
    checkpoints = {e.label: run_dirs[e.label] for e in entries}
    if args.early_fraction:
        step = args.checkpoint_step(args.early_fraction)
        for entry in entries:
            if entry.kind == "clm" or (entry.kind == "mlm" and entry.value == args.mlm_probability):
                checkpoints[f"{entry.label}@{args.early_fraction:.0%}"] = os.path.join(
                    run_dirs[entry.label], f"checkpoint-{step}"
                )
    tasks = [synthetic_task(kind, heldout, tuple(args.task_sizes), seed=args.seed, name=kind) for kind in args.tasks]
    finetune_args = FinetuneArguments(
        model_name_or_path=list(checkpoints.values()), learning_rates=args.learning_rates, seeds=args.seeds,
        max_steps=args.finetune_max_steps, num_train_epochs=args.finetune_epochs, batch_size=args.finetune_batch_size,
        max_length=96, output_dir=args.output_dir,
    )  # fmt: skip
    runs, summary = run_finetuning(finetune_args, tasks, labels=list(checkpoints))
    return write_results(args, entries, checkpoints, intrinsic, runs, summary)
