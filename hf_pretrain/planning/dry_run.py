"""The compute plan a dry run prints after the resolved config: parameters, tokens, FLOPs and GPU-hours of the run.

Everything comes from the resolved arguments, without reading data or allocating weights:

* **parameters** are counted on a model built on PyTorch's `meta` device (shapes only, no memory, well under a
  second even for 1B parameters), from the run's own config, so every architecture counts exactly as it trains;
* the **vocabulary** is the tokenizer's when the run has one (`tokenizer_name_or_path`, the checkpoint's, a
  prepared dataset's or one trained earlier in output_dir), else `tokenizer_vocab_size`, stated as assumed: a
  tokenizer trained on the corpus has at most that many tokens;
* **tokens** are steps × tokens per step (`global_batch_tokens`, as resolved for the launched world size);
* **training FLOPs** twice: Chinchilla's 6·N·D with N all parameters (as `hf_pretrain.planning` counts), and the
  PaLM count the trainer's MFU uses (`throughput.flops_per_token`: 6·N' + 12·L·d·T per token, N' the matmul
  parameters: no input embedding, the output head included);
* **GPU-hours** at a stated MFU on a stated GPU (H100, 989 TFLOP/s dense bf16, unless `peak_flops_per_device` is
  set), from the PaLM count since that is what a measured MFU divides; wall time is GPU-hours over the world size
  the batch was resolved for.

The lines are YAML comments, so the dry run's output still loads as a config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PretrainedConfig

from hf_pretrain.planning import CHINCHILLA_TOKENS_PER_PARAMETER, training_flops
from hf_pretrain.resolve import source_config
from hf_pretrain.run_layout import TOKENIZER_SUBDIR
from hf_pretrain.training.throughput import flop_counted_parameters, flops_per_token, peak_flops_per_device

if TYPE_CHECKING:
    from hf_pretrain.resolve import ResolvedRun

DEFAULT_MFU = 0.4
DEFAULT_GPU = "H100"


@dataclass(frozen=True)
class ParameterCounts:
    """A model's parameters by role (each shared tensor counted once)."""

    total: int
    embedding: int  # every nn.Embedding: tokens, and positions / token types where the architecture has them
    head: int  # the output head's weight (counted in `embedding` instead when tied to the input embedding)
    head_tied: bool
    matmul: int  # what takes part in matmuls: all but the input embedding, the head included (tied or not)

    @property
    def non_embedding(self) -> int:
        """The transformer body: no embedding table, no vocabulary head (Kaplan et al.'s N)."""
        return self.total - self.embedding - (0 if self.head_tied else self.head)


@dataclass(frozen=True)
class Vocabulary:
    size: int
    source: str  # where the size comes from, in words


@dataclass(frozen=True)
class BatchShape:
    world_size: int
    per_device: int
    accumulation: int
    block_size: int

    @property
    def tokens_per_step(self) -> int:
        return self.world_size * self.per_device * self.accumulation * self.block_size


@dataclass(frozen=True)
class DryRunPlan:
    """The figures of a planned run; `describe` renders them."""

    parameters: ParameterCounts
    vocabulary: Vocabulary
    batch: BatchShape
    steps: int | None  # None: a run by epochs, whose length is known only once the data is read
    flops_per_token: float  # PaLM count: 6·N' + 12·L·d·T
    mfu: float
    peak_flops: float
    gpu: str  # the name of the peak's source, for the text
    phases: tuple[tuple[int, str], ...] | None = None
    schedule: str | None = None  # the learning-rate schedule in words

    @property
    def tokens(self) -> int | None:
        return None if self.steps is None else self.steps * self.batch.tokens_per_step

    @property
    def flops_6nd(self) -> float | None:
        return None if self.tokens is None else training_flops(self.parameters.total, self.tokens)

    @property
    def flops(self) -> float | None:
        """Training FLOPs with the attention term: what MFU is measured against."""
        return None if self.tokens is None else self.flops_per_token * self.tokens

    @property
    def gpu_hours(self) -> float | None:
        return None if self.flops is None else self.flops / (self.peak_flops * self.mfu) / 3600

    @property
    def wall_hours(self) -> float | None:
        return None if self.gpu_hours is None else self.gpu_hours / self.batch.world_size

    def describe(self) -> str:
        p, b = self.parameters, self.batch
        head = "tied to the input embedding" if p.head_tied else f"{p.head:,} output head (untied)"
        rows = [
            (
                "parameters",
                f"{p.total:,} total ({_short(p.total)}): {p.non_embedding:,} non-embedding, {p.embedding:,} "
                f"embedding, {head}",
            ),
            ("vocabulary", f"{self.vocabulary.size:,} ({self.vocabulary.source})"),
            (
                "batch",
                f"{b.tokens_per_step:,} tokens per step = world size {b.world_size} x {b.per_device} per device x "
                f"{b.accumulation} accumulation x {b.block_size:,} tokens",
            ),
        ]
        if self.steps is None:
            rows.append(("steps", "known once the data is read (a run by epochs): set max_steps for a full plan"))
        else:
            rows.append(("steps", f"{self.steps:,}" + (f" ({self.schedule})" if self.schedule else "")))
            for start, end, name in _phase_spans(self.phases, self.steps):
                rows.append(
                    (
                        f"  {name}",
                        f"steps {start:,}-{end - 1:,}: {end - start:,} steps, "
                        f"{(end - start) * b.tokens_per_step:,} tokens",
                    )
                )
            ratio = self.tokens / p.total
            rows += [
                (
                    "tokens",
                    f"{self.tokens:,} ({self.tokens:.4g}) = {self.steps:,} steps x {b.tokens_per_step:,}; "
                    f"{ratio:,.1f} tokens per parameter (compute-optimal ≈ {CHINCHILLA_TOKENS_PER_PARAMETER:g})",
                ),
                ("training FLOPs", f"{self.flops_6nd:.4g} (6·N·D, N = all {_short(p.total)} parameters)"),
                (
                    "",
                    f"{self.flops:.4g} (6·N'·D + 12·L·d·T·D: N' = {_short(p.matmul)} matmul parameters, attention "
                    f"at T = {b.block_size:,}; what MFU is measured against)",
                ),
                (
                    "GPU-hours",
                    f"{self.gpu_hours:,.1f} at {self.mfu:.0%} MFU on {self.gpu} ({self.peak_flops / 1e12:,.0f} "
                    f"TFLOP/s dense bf16): {self.wall_hours:,.1f} h ({self.wall_hours / 24:,.1f} days) on the "
                    f"{b.world_size} GPU(s) this batch was resolved for",
                ),
            ]
        width = max(len(name) for name, _ in rows)
        lines = ["# Compute plan (hf_pretrain.planning.dry_run: from the config; no data read, no weights allocated)"]
        lines += [f"#   {name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join(lines)


def count_parameters_on_meta(config: PretrainedConfig, masked_decoder: bool = False) -> ParameterCounts:
    """Parameters of the model `config` builds (masked-LM head when `masked_decoder`), on the meta device.

    `hf_pretrain.models.build_model` chooses the class, as for training; the meta device gives every tensor its
    shape and no storage, so a 1B model is counted in a fraction of a second.
    """
    from hf_pretrain.model_families import family_of
    from hf_pretrain.models import build_model

    family_of(config)  # decided (and probed, on real tensors) outside the meta device, then cached
    with torch.device("meta"):
        model = build_model(config, attn_implementation="eager", masked_decoder=masked_decoder)
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    output = model.get_output_embeddings()
    head = output.weight.numel() if output is not None else 0
    input_weight = model.get_input_embeddings().weight
    tied = output is not None and output.weight is input_weight
    return ParameterCounts(total, embedding, head, tied, flop_counted_parameters(model))


def planned_vocabulary(model_args, data_args, output_dir: str | None, source_vocab: int | None) -> Vocabulary:
    """The vocabulary the run's model will have, from the tokenizer it will load, without training one.

    `source_vocab` is a checkpoint's `vocab_size` (None for a preset): a larger tokenizer resizes the embeddings,
    a smaller one leaves them as they are (`pipeline.prepare_model`).
    """
    trained = _subdir(output_dir)
    candidates = [
        (model_args.tokenizer_name_or_path, "tokenizer_name_or_path"),
        (_subdir(data_args.prepared_dataset_path), "the prepared dataset's tokenizer"),
        (model_args.model_name_or_path, "the checkpoint's tokenizer"),
        (trained if trained and os.path.isdir(trained) else None, "the tokenizer trained earlier in output_dir"),
    ]
    unloaded = []
    for name, where in candidates:
        if not name:
            continue
        size = _tokenizer_size(name)
        if size is None:
            unloaded.append(f"{where} {name!r} did not load here")
            continue
        if source_vocab is not None and source_vocab >= size:
            return Vocabulary(source_vocab, f"the checkpoint's vocab_size; {where} has {size:,} tokens")
        return Vocabulary(size, f"{where} {name!r}")
    note = f"; {', '.join(unloaded)}" if unloaded else ""
    if source_vocab is not None:
        return Vocabulary(source_vocab, f"the checkpoint's vocab_size{note}")
    return Vocabulary(
        model_args.tokenizer_vocab_size,
        "assumed: tokenizer_vocab_size, the most a tokenizer trained on the corpus can have; set "
        f"tokenizer_name_or_path to count with a real one{note}",
    )


def with_vocabulary(config: PretrainedConfig, vocab_size: int) -> PretrainedConfig:
    """`config` resized to `vocab_size`. Special-token ids past the new vocabulary move to its last id: a preset's
    are its architecture's defaults (ModernBERT's pad id is 50,283), which the run replaces with its tokenizer's,
    and an embedding whose padding index lies past its end cannot be built. No id changes a parameter count."""
    config.vocab_size = vocab_size
    for name in [key for key in config.to_dict() if key.endswith("_token_id")]:
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= vocab_size:
            setattr(config, name, vocab_size - 1)
    return config


def plan_run(
    model_args,
    data_args,
    training_args,
    run: ResolvedRun,
    mfu: float = DEFAULT_MFU,
    gpu: str = DEFAULT_GPU,
) -> DryRunPlan:
    """The plan of a resolved run (see the module docstring); reads at most config and tokenizer files."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}.")
    if training_args.peak_flops_per_device:
        peak, gpu_name = float(training_args.peak_flops_per_device), "a device of peak_flops_per_device"
    else:
        peak, gpu_name = peak_flops_per_device(gpu), gpu
        if peak is None:
            raise ValueError(f"gpu={gpu!r} has no known peak; set peak_flops_per_device (FLOP/s of one device).")
    config = source_config(model_args)  # what resolve_run checked, checkpoint or preset with overrides
    source_vocab = getattr(config, "vocab_size", None) if model_args.model_name_or_path else None
    vocabulary = planned_vocabulary(model_args, data_args, training_args.output_dir, source_vocab)
    with_vocabulary(config, vocabulary.size)
    counts = count_parameters_on_meta(config, masked_decoder=run.spec.masked_lm)
    batch = BatchShape(
        run.world_size,
        training_args.per_device_train_batch_size,
        run.gradient_accumulation_steps,
        data_args.block_size,
    )
    return DryRunPlan(
        parameters=counts,
        vocabulary=vocabulary,
        batch=batch,
        steps=run.total_steps,
        flops_per_token=flops_per_token(config, counts.matmul, data_args.block_size),
        mfu=mfu,
        peak_flops=peak,
        gpu=gpu_name,
        phases=run.phases if run.phases is not None and len(run.phases) > 1 else None,
        schedule=_describe_schedule(run.schedule),
    )


def dry_run_plan(model_args, data_args, training_args, run: ResolvedRun, mfu: float = DEFAULT_MFU) -> str:
    """The compute plan `--dry_run` prints after the resolved config (YAML comments)."""
    return plan_run(model_args, data_args, training_args, run, mfu=mfu).describe()


def _describe_schedule(schedule) -> str | None:
    if schedule is None:
        return None
    return (
        f"WSD: {schedule.warmup_steps:,} warmup, {schedule.stable_steps:,} stable, {schedule.decay_steps:,} "
        f"{schedule.decay_type} decay"
    )


def _phase_spans(phases, steps: int) -> list[tuple[int, int, str]]:
    if not phases:
        return []
    starts = [start for start, _ in phases] + [steps]
    return [(starts[i], starts[i + 1], name) for i, (_, name) in enumerate(phases)]


def _subdir(folder: str | None) -> str | None:
    return os.path.join(folder, TOKENIZER_SUBDIR) if folder else None


def _tokenizer_size(name: str) -> int | None:
    """len() of the tokenizer at `name`, or None when it cannot be loaded (a Hub id offline, a folder without one)."""
    from hf_pretrain.data.tokenizer import load_tokenizer

    try:
        return len(load_tokenizer(name))
    except (OSError, ValueError, TypeError):
        return None


def _short(count: float) -> str:
    for factor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= factor:
            return f"{count / factor:.4g}{suffix}"
    return f"{count:g}"
