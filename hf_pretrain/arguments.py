"""Typed configuration: what model, what data, how to train. One YAML file or command line fills all three.

Every check that can fail runs in `__post_init__`, before any data is read or any model is built, and its message
names the field to fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from hf_pretrain.cli import parse_mapping
from hf_pretrain.data.curriculum import check_curriculum
from hf_pretrain.data.mixing import normalize_weights
from hf_pretrain.data.quality import NORMALIZATIONS
from hf_pretrain.data.sources import TEXT_SAMPLING, parse_sources
from hf_pretrain.hub.publisher import DEFAULT_REVISION_TEMPLATE, RetryPolicy, check_revision_template
from hf_pretrain.models import MODEL_PRESETS
from hf_pretrain.objectives import RUN_OBJECTIVES, get_objective
from hf_pretrain.training.distributed import check_deepspeed_config

DECAY_TYPES = ("linear", "cosine", "1-sqrt")
DOCUMENT_ATTENTION = ("isolated", "shared")
ALLOW_DEGENERATE = "allow_degenerate"  # the field that lets legal-but-useless values through, named in the errors


def check_counts(args) -> None:
    """Sizes transformers accepts and then fails on after the tokenizer was trained (ZeroDivisionError, an empty
    DataLoader) or silently reads as something else (a negative max_steps: train by epochs)."""
    for name in ("gradient_accumulation_steps", "per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(args, name)}.")
    if args.max_steps == 0 or args.max_steps < -1:
        what = "trains nothing" if args.max_steps == 0 else "is negative"
        raise ValueError(
            f"max_steps={args.max_steps} {what}: give the number of optimizer steps, or leave it unset (-1) to "
            "train for num_train_epochs."
        )
    if args.learning_rate < 0:
        raise ValueError(f"learning_rate must be positive, got {args.learning_rate}.")


def check_not_degenerate(args) -> None:
    """Values that are legal but train nothing: refused unless `allow_degenerate: true` says they are meant."""
    if getattr(args, ALLOW_DEGENERATE):
        return
    hint = f"set {ALLOW_DEGENERATE}: true if that is what you want."
    if args.learning_rate == 0:
        raise ValueError(f"learning_rate=0 never changes the weights: give a positive learning_rate, or {hint}")
    phases = get_objective(args.objective).phases
    if args.mlm_probability == 0 and any(phase.metric == "mlm_accuracy" for phase in phases):
        raise ValueError(
            f"mlm_probability=0 with objective {args.objective!r} masks no token, so its masked-LM steps train on "
            f"nothing: give a positive mlm_probability (e.g. 0.15), or {hint}"
        )


def check_padding_free(data_args) -> None:
    """`packing: false` (padding-free batches of whole documents): what it needs, each message naming the field."""
    if data_args.max_tokens_per_batch is None:
        raise ValueError("packing: false needs max_tokens_per_batch, the tokens of one padding-free batch.")
    if data_args.max_tokens_per_batch < data_args.block_size:
        raise ValueError(
            f"max_tokens_per_batch={data_args.max_tokens_per_batch} is below block_size={data_args.block_size}: "
            "a batch must hold the longest document piece."
        )
    if data_args.document_attention != "isolated":
        raise ValueError("packing: false keeps documents apart by construction: set document_attention: isolated.")
    for name in ("prepared_dataset_path", "curriculum_lengths", "streaming"):
        if getattr(data_args, name):
            raise ValueError(
                f"packing: false builds its batches from documents, which {name} does not give: unset {name}, or "
                "set packing: true."
            )


def _has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


@dataclass
class ModelArguments:
    """Which model to pretrain: a named preset plus overrides, or a checkpoint to continue pretraining."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint (Hub id or local folder) to continue pretraining from. Unset: build from config."
        },
    )
    model_preset: str = field(
        default="llama-tiny",
        metadata={"help": f"Architecture preset when building from config. One of {sorted(MODEL_PRESETS)}."},
    )
    config_overrides: dict | str | None = field(
        default=None,
        metadata={
            "help": "Config fields applied on top of the preset, e.g. {'hidden_size': 256, 'num_hidden_layers': 8}."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer to load (Hub id or folder). Unset: the checkpoint's tokenizer when continuing, "
            "else a byte-level BPE trained on the training corpus."
        },
    )
    tokenizer_vocab_size: int = field(
        default=8192,
        metadata={"help": "Vocabulary size of a tokenizer trained from the corpus (special tokens included)."},
    )
    tokenizer_training_documents: int = field(
        default=100_000, metadata={"help": "At most this many training documents are used to train the tokenizer."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: 'sdpa', 'eager', 'flash_attention_2', ... Unset: sdpa where the architecture "
            "has it, else eager (resolved once, written to resolved_config.yaml)."
        },
    )
    lora_rank: int | None = field(
        default=None, metadata={"help": "Continue pretraining with a LoRA adapter of this rank (peft); unset: full."}
    )
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (alpha / rank)."})

    def __post_init__(self):
        if self.model_name_or_path is None and self.model_preset not in MODEL_PRESETS:
            raise ValueError(f"model_preset={self.model_preset!r} is unknown; choose one of {sorted(MODEL_PRESETS)}.")
        self.config_overrides = parse_mapping(self.config_overrides, "config_overrides")
        if self.tokenizer_vocab_size < 512:
            raise ValueError(f"tokenizer_vocab_size must be at least 512, got {self.tokenizer_vocab_size}.")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be positive, got {self.lora_rank}.")
        if self.tokenizer_training_documents < 1:
            raise ValueError("tokenizer_training_documents must be positive.")


@dataclass
class DataArguments:
    """Where the text comes from and how it is cut into training blocks."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset name (or a local dataset folder) for `datasets.load_dataset`."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    data_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Local training files (.txt, .jsonl/.json, .parquet), all of one format."},
    )
    validation_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Local held-out files. Unset: hold out validation_fraction of documents."},
    )
    text_column: str = field(default="text", metadata={"help": "The column that holds the documents' text."})
    text_sample_by: str = field(
        default="paragraph",
        metadata={"help": f"How .txt files are split into documents: one of {TEXT_SAMPLING}."},
    )
    streaming: bool = field(
        default=False, metadata={"help": "Stream the Hub dataset instead of downloading it whole (needs max_steps)."}
    )
    stream_shuffle_documents: int = field(
        default=1024,
        metadata={
            "help": "streaming: documents of each source are read in windows of this many and each window is "
            "shuffled (seeded by seed, part of the exact resume); memory holds one window of documents. 0: read order."
        },
    )
    stream_shuffle_blocks: int = field(
        default=512,
        metadata={
            "help": "streaming: packed blocks of each source are given out in windows of this many, each shuffled "
            "(memory: this many blocks per source; a resume re-packs one window). 0: packing order."
        },
    )
    normalization: str = field(
        default="NFC",
        metadata={
            "help": f"Unicode normalisation of every document on every data path, one of {NORMALIZATIONS} (with "
            "Unix newlines and trimmed whitespace); prepared data keeps the form it was prepared with."
        },
    )
    validation_fraction: float = field(
        default=0.05,
        metadata={"help": "Fraction of documents held out for evaluation when no validation set is given."},
    )
    block_size: int = field(default=512, metadata={"help": "Tokens per training block (sequence length)."})
    document_attention: str = field(
        default="isolated",
        metadata={
            "help": f"One of {DOCUMENT_ATTENTION}. 'isolated': each document of a packed block attends only to "
            "itself (positions restart per document, no token is predicted across a boundary); 'shared': the "
            "documents of a block attend to each other (cheaper to set up, the usual packing of older recipes)."
        },
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "true: documents are concatenated and cut into blocks of block_size. false: padding-free "
            "batches of whole documents (longer ones split at block_size), one row of at most "
            "max_tokens_per_batch tokens per batch; needs per_device_train_batch_size: 1."
        },
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={"help": "packing: false: tokens per padding-free batch (at least block_size)."},
    )
    max_documents: int | None = field(
        default=None, metadata={"help": "Use at most this many training documents (quick experiments)."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (`datasets.map(num_proc=...)`)."}
    )
    data_sources: list | str | None = field(
        default=None,
        metadata={
            "help": "Weighted sources mixed at the token level, a YAML list (JSON on the command line) of {name, "
            "weight, data_files | dataset_name (+ dataset_config_name, split) | default_corpus: true, text_column, "
            "text_sample_by, quality (prose | technical | none), quality_filters, filter_settings}; tokens seen per "
            "source are logged. With streaming: true, streamed and resumable."
        },
    )
    prepared_dataset_path: str | None = field(
        default=None,
        metadata={"help": "Train on the output of recipes/prepare_data.py (blocks, tokenizer and mixture)."},
    )
    curriculum_lengths: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Sequence-length curriculum: shorter lengths for the start of training, increasing, each "
            "dividing block_size (e.g. [128, 256] with block_size 512); tokens per batch stay constant."
        },
    )
    curriculum_ends: list[float] = field(
        default_factory=list,
        metadata={
            "help": "Where each curriculum length stops, in curriculum_unit: a count (>= 1) or a fraction of the run "
            "(< 1), all of one kind, increasing."
        },
    )
    curriculum_unit: str = field(default="steps", metadata={"help": "Unit of curriculum_ends: 'steps' or 'tokens'."})

    def __post_init__(self):
        if self.dataset_name and self.data_files:
            raise ValueError("Give either dataset_name or data_files, not both.")
        sources = parse_sources(self.data_sources)  # raises naming the source and key
        if sources:
            normalize_weights([s.weight for s in sources], [s.name for s in sources])
        given = [
            name
            for name in ("dataset_name", "data_files", "data_sources", "prepared_dataset_path")
            if getattr(self, name)
        ]
        if len(given) > 1 and given != ["dataset_name", "data_files"]:
            raise ValueError(
                f"Give one of dataset_name, data_files, data_sources or prepared_dataset_path, not {given}."
            )
        if self.prepared_dataset_path and not os.path.isfile(os.path.join(self.prepared_dataset_path, "stats.json")):
            raise ValueError(
                f"prepared_dataset_path={self.prepared_dataset_path!r} is not a prepared dataset (no stats.json): "
                "make it with recipes/prepare_data.py."
            )
        check_curriculum(self.curriculum_lengths, self.curriculum_ends, self.curriculum_unit, self.block_size)
        for name in ("data_files", "validation_files"):
            for path in getattr(self, name):
                if not os.path.isfile(path):
                    raise ValueError(f"{name}: no such file {path!r}.")
        if self.validation_files and not (self.data_files or self.dataset_name or self.data_sources):
            raise ValueError("validation_files needs training data too: set data_files, dataset_name or data_sources.")
        if self.text_sample_by not in TEXT_SAMPLING:
            raise ValueError(f"text_sample_by must be one of {TEXT_SAMPLING}, got {self.text_sample_by!r}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {self.block_size}.")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"max_documents must be positive, got {self.max_documents}.")
        if self.document_attention not in DOCUMENT_ATTENTION:
            raise ValueError(
                f"document_attention must be one of {DOCUMENT_ATTENTION}, got {self.document_attention!r}."
            )
        if self.packing and self.max_tokens_per_batch is not None:
            raise ValueError("max_tokens_per_batch applies to padding-free batches: set packing: false, or unset it.")
        if not self.packing:
            check_padding_free(self)
        if self.streaming and not (self.dataset_name or self.data_sources):
            raise ValueError("streaming applies to dataset_name or data_sources; data_files are read directly.")
        for name in ("stream_shuffle_documents", "stream_shuffle_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no shuffling) or a window size, got {getattr(self, name)}.")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}.")


@dataclass
class PretrainingArguments(TrainingArguments):
    """`TrainingArguments` with pretraining defaults and the objective.

    Defaults that differ from transformers': tokens seen are counted (non-padding), logs go nowhere unless asked
    (`report_to`), evaluation and saving run every `eval_steps` / `save_steps`.
    """

    objective: str = field(
        default="clm",
        metadata={
            "help": f"Pretraining objective, one of {RUN_OBJECTIVES}. clm_then_mlm trains causal LM, then switches the "
            "same decoder to bidirectional masked LM at switch_fraction of the steps."
        },
    )
    switch_fraction: float = field(
        default=0.25, metadata={"help": "clm_then_mlm: fraction of the steps done with CLM before the switch to MLM."}
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Masked LM: fraction of tokens selected."})
    mask_replace_prob: float = field(default=0.8, metadata={"help": "Masked LM: selected tokens replaced by mask."})
    random_replace_prob: float = field(default=0.1, metadata={"help": "Masked LM: selected tokens made random."})
    whole_word_mask: bool = field(default=False, metadata={"help": "Masked LM: select whole words."})
    noise_density: float = field(default=0.15, metadata={"help": "Span corruption: fraction of tokens noised."})
    mean_noise_span_length: float = field(default=3.0, metadata={"help": "Span corruption: mean span length."})
    span_decoder_only: bool = field(
        default=False,
        metadata={"help": "Run span corruption / UL2 on a decoder-only model (inputs then targets, prefix mask)."},
    )
    # Schedule: Warmup-Stable-Decay. Warmup is transformers' `warmup_steps` (steps, or a fraction when < 1).
    lr_scheduler_type: str = field(
        default="warmup_stable_decay",
        metadata={
            "help": "'warmup_stable_decay' (WSD, from decay_steps/decay_type/min_lr_ratio) or any transformers type."
        },
    )
    decay_steps: float = field(
        default=0.1, metadata={"help": "WSD decay length: steps (>= 1) or a fraction of the run (< 1)."}
    )
    decay_type: str = field(default="linear", metadata={"help": f"WSD decay shape, one of {DECAY_TYPES}."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "WSD: the learning rate ends at this x learning_rate."})
    cooldown_from: str | None = field(
        default=None,
        metadata={
            "help": "Cooldown branch: a stable-phase checkpoint folder. Its weights are loaded and the run only decays "
            "the learning rate, from its peak to min_lr_ratio over max_steps (optionally with another objective)."
        },
    )
    global_batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Target tokens per optimizer step over all processes (as papers quote it); sets "
            "gradient_accumulation_steps from world size, per-device batch and block_size, or errors if unreachable."
        },
    )
    global_batch_size: int | None = field(
        default=None, metadata={"help": "Target sequences per optimizer step over all processes (instead of tokens)."}
    )
    peak_flops_per_device: float | None = field(
        default=None,
        metadata={"help": "Peak FLOP/s of one device for MFU; unset: looked up from the GPU name (bf16 dense)."},
    )
    # Publishing (with push_to_hub; hf_pretrain/hub.py): pushes run in the background and never stop training.
    push_checkpoint_revisions: bool = field(
        default=True,
        metadata={"help": "With push_to_hub: push every saved checkpoint to its own branch of hub_model_id."},
    )
    hub_revision_template: str = field(
        default=DEFAULT_REVISION_TEMPLATE,
        metadata={
            "help": "Branch name of a checkpoint, from {step}, {tokens} (tokens seen) and {tokens_h} (tokens seen, "
            "as in 2.1B); {step} is required. E.g. 'step{step}' (Pythia) or 'stage1-step{step}-tokens{tokens_h}'."
        },
    )
    model_card_license: str = field(
        default="other", metadata={"help": "License id in the model card's metadata: apache-2.0, mit, other, ..."}
    )
    hub_push_attempts: int = field(
        default=5,
        metadata={"help": "Attempts per push (network errors, 429 and 5xx are retried) before it is reported failed."},
    )
    hub_retry_delay: float = field(
        default=5.0, metadata={"help": "Seconds before retrying a failed push; doubles each time up to the max."}
    )
    hub_retry_max_delay: float = field(default=60.0, metadata={"help": "Longest wait between two push attempts."})
    hub_request_timeout: float = field(
        default=60.0,
        metadata={"help": "Seconds a Hub request may go without progress (connect, read, write) before it is retried"},
    )
    hub_wait_timeout: float = field(
        default=600.0,
        metadata={
            "help": "After training, wait at most this many seconds in all for pending pushes, then report them "
            "(hub_status.json; exit status 3 if any is not on the Hub). Must hold the retries' waits of one push."
        },
    )
    output_dir: str | None = field(default="outputs/run", metadata={"help": "Where checkpoints and the model go."})
    # Typed `str` (the parent says `str | bool`, which the argument parser reads as bool and then rejects this default).
    include_num_input_tokens_seen: str = field(
        default="non_padding", metadata={"help": "Count input tokens seen: 'no', 'all' or 'non_padding'."}
    )
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Trackers to report to ('tensorboard', 'wandb', ...), 'none' for none."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every this many steps (or fraction of steps)."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: 'no', 'steps' or 'epoch'."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every this many steps."})
    save_steps: float = field(default=100, metadata={"help": "Save a checkpoint every this many steps."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "DDP: search for unused parameters every step (off: every parameter gets a gradient)."},
    )
    allow_degenerate: bool = field(
        default=False,
        metadata={
            "help": "Accept values that are legal but train nothing, refused otherwise: learning_rate 0, "
            "mlm_probability 0 with a masked-LM objective, a batch whose masking selects no token."
        },
    )

    def __post_init__(self):
        if self.objective not in RUN_OBJECTIVES:
            raise ValueError(f"objective must be one of {RUN_OBJECTIVES}, got {self.objective!r}.")
        if not 0.0 < self.switch_fraction < 1.0:
            raise ValueError(f"switch_fraction must be in (0, 1), got {self.switch_fraction}.")
        for name in ("mlm_probability", "mask_replace_prob", "random_replace_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ValueError("mask_replace_prob + random_replace_prob must not exceed 1.")
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"noise_density must be in (0, 1), got {self.noise_density}.")
        if self.mean_noise_span_length < 1.0:
            raise ValueError(f"mean_noise_span_length must be at least 1, got {self.mean_noise_span_length}.")
        if self.decay_type not in DECAY_TYPES:
            raise ValueError(f"decay_type must be one of {DECAY_TYPES}, got {self.decay_type!r}.")
        if self.decay_steps < 0 or (self.decay_steps >= 1 and self.decay_steps != int(self.decay_steps)):
            raise ValueError(
                f"decay_steps must be a whole number of steps (>= 1) or a fraction (< 1), got {self.decay_steps}."
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}.")
        kwargs = parse_mapping(self.lr_scheduler_kwargs, "lr_scheduler_kwargs")
        if self.lr_scheduler_type == "warmup_stable_decay" and kwargs:
            raise ValueError(
                f"lr_scheduler_kwargs={kwargs} with warmup_stable_decay: give the decay with decay_steps, decay_type "
                "and min_lr_ratio (steps or a fraction, stored with checkpoints) instead."
            )
        if self.global_batch_tokens is not None and self.global_batch_size is not None:
            raise ValueError("Give global_batch_tokens or global_batch_size, not both.")
        if self.cooldown_from is not None:
            if not os.path.isdir(self.cooldown_from):
                raise ValueError(f"cooldown_from: no such checkpoint folder {self.cooldown_from!r}.")
            if self.max_steps <= 0:
                raise ValueError("cooldown_from needs max_steps: the number of decay steps of the cooldown branch.")
        check_revision_template(self.hub_revision_template, "hub_revision_template")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id: the repository to publish to, e.g. 'my-org/llama-mini'.")
        if self.hub_push_attempts < 1:
            raise ValueError(f"hub_push_attempts must be at least 1, got {self.hub_push_attempts}.")
        if not 0 <= self.hub_retry_delay <= self.hub_retry_max_delay:
            raise ValueError(
                f"hub_retry_delay must be in [0, hub_retry_max_delay={self.hub_retry_max_delay}], "
                f"got {self.hub_retry_delay}."
            )
        if self.hub_wait_timeout < 0:
            raise ValueError(f"hub_wait_timeout must be non-negative, got {self.hub_wait_timeout}.")
        if self.hub_request_timeout <= 0:
            raise ValueError(f"hub_request_timeout must be positive (seconds), got {self.hub_request_timeout}.")
        retry_waits = RetryPolicy(self.hub_push_attempts, self.hub_retry_delay, self.hub_retry_max_delay).total_delay()
        if retry_waits > self.hub_wait_timeout:
            raise ValueError(
                f"hub_push_attempts={self.hub_push_attempts}, hub_retry_delay={self.hub_retry_delay} and "
                f"hub_retry_max_delay={self.hub_retry_max_delay} wait {retry_waits:g}s between a push's attempts, "
                f"more than hub_wait_timeout={self.hub_wait_timeout:g}: lower them or raise hub_wait_timeout."
            )
        check_counts(self)
        check_not_degenerate(self)
        # transformers reads the JSON in super().__post_init__, and its error names neither the field nor the file
        if isinstance(self.deepspeed, str):
            try:
                check_deepspeed_config(self.deepspeed)
            except ValueError as error:
                message = str(error)
                raise ValueError(
                    message if "deepspeed:" in message else f"deepspeed={self.deepspeed!r}: {message}"
                ) from None
        if not _has_accelerator():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; on CPU it only warns every epoch
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a backend makes Accelerate assume a process group
                # Processes on CPUs talk over gloo; left unset, DeepSpeed's CPU path mis-sizes the world.
                self.ddp_backend = self.ddp_backend or "gloo"
            # `accelerate launch` with a multi-process config does not tell the workers to use the CPU (only its
            # single-process launcher exports ACCELERATE_USE_CPU), and without it two processes train side by
            # side, each alone. DeepSpeed's CPU accelerator has its own path and must not be redirected.
            deepspeed = self.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
            if not deepspeed:
                self.use_cpu = True
        super().__post_init__()
