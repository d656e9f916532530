"""The settings of the objective ablation: its grid entries and `AblationArguments` (the grid, the shared
pretraining budget and optimizer, and the fine-tuning protocol), checked before anything runs.

Shared by the ablation (`hf_pretrain.evaluation.ablation`, which runs it) and its report
(`hf_pretrain.evaluation.ablation_report`, which writes it up); neither of those is imported here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from hf_pretrain.cli import parse_mapping
from hf_pretrain.evaluation.tasks import TASK_TYPES
from hf_pretrain.models import MODEL_PRESETS

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
    grid: list[str] = field(
        default_factory=lambda: list(DEFAULT_GRID), metadata={"help": "Models (see hf_pretrain.evaluation.ablation)."}
    )
    model_preset: str = field(default="llama-tiny", metadata={"help": f"One of {sorted(MODEL_PRESETS)}."})
    config_overrides: dict | str | None = field(default=None, metadata={"help": "Config fields over the preset."})
    tokenizer_vocab_size: int = field(default=2048, metadata={"help": "Vocabulary of the shared tokenizer."})
    block_size: int = field(default=128, metadata={"help": "Pretraining sequence length."})
    batch_size: int = field(default=16, metadata={"help": "Pretraining sequences per step."})
    max_steps: int = field(default=600, metadata={"help": "Pretraining steps of every model (CPT: in total)."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak pretraining learning rate."})
    warmup_steps: float = field(default=0.1, metadata={"help": "WSD warmup (fraction or steps)."})
    decay_steps: float = field(default=0.2, metadata={"help": "WSD decay (fraction or steps)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay of every pretraining run."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 of every pretraining run, in [0, 1)."})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Gradient clipping norm of every pretraining run (0: no clipping)."}
    )
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
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}.")
        if not 0.0 <= self.adam_beta2 < 1.0:
            raise ValueError(f"adam_beta2 must be in [0, 1), got {self.adam_beta2}.")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be non-negative (0: no clipping), got {self.max_grad_norm}.")
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
