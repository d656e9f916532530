"""One resolve step: from the parsed dataclasses to every setting of a run, decided once, before any work.

    parse (cli.py, arguments.py) → resolve_run → resolved_config.yaml → data, model, Trainer (which only read)

`resolve_run` is the only place that derives settings: world size and gradient accumulation, the objective's
phases and the WSD schedule (from the arguments, or from the checkpoint a run resumes), the attention
implementation and the 4D-mask format the collators must emit, the attention direction of every phase, the model's
source and what its saved config says it is, the data path and how the held-out split is made, the sampling order,
`remove_unused_columns` and whether evaluation runs. It writes the few arguments it derives (accumulation, sampling
order, ...) into the dataclasses and nothing changes them afterwards: `run_pretraining` checks at the end that the
arguments still serialise to what `resolved_config.yaml` says. The file holds the three dataclasses (loadable again
by `parse_config`) and a `resolved_run:` section with the derived settings, which evaluation, the model card and
`push_checkpoints.py` read back (`load_run_arguments`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass

import yaml
from transformers import AutoConfig, HfArgumentParser
from transformers.training_args import ParallelMode

from hf_pretrain.arguments import DataArguments, ModelArguments, PretrainingArguments
from hf_pretrain.checkpoint_state import phases_from_checkpoint, read_json, schedule_from_checkpoint
from hf_pretrain.cli import RESOLVED_SECTION, format_config
from hf_pretrain.data.build import data_path
from hf_pretrain.document_attention import ISOLATED, resolve_document_attention
from hf_pretrain.eurobert_export import eurobert_compatible
from hf_pretrain.model_families import DECODER, decoder_equivalent, family_of, resolve_attention
from hf_pretrain.models import max_positions
from hf_pretrain.objectives import (
    MASK_FORMATS,
    ObjectivePlan,
    ObjectiveSpec,
    check_model_fits_objective,
    get_objective,
)
from hf_pretrain.presets import preset_settings
from hf_pretrain.run_layout import RESOLVED_CONFIG_FILE
from hf_pretrain.schedules import WSDSchedule, cooldown_schedule, resolve_steps, wsd_schedule
from hf_pretrain.training.checkpoints import (
    INCOMPLETE_DIR,
    checkpoint_problem,
    find_checkpoints,
    interrupted_before_any_checkpoint,
)
from hf_pretrain.training.distributed import check_deepspeed_config, resolve_global_batch
from hf_pretrain.training.fast_paths import check_fast_paths
from hf_pretrain.training.fsdp import check_fsdp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedRun:
    """The derived settings of a run (the arguments themselves are resolved in place, then frozen by convention)."""

    objective: str
    model_source: str  # "preset", "checkpoint" or "cooldown"
    model_path: str | None
    model_type: str
    model_kind: str  # DECODER, ENCODER or ENCODER_DECODER (hf_pretrain.model_families)
    source_is_causal: bool | None  # what the source's config.json says (None: it does not say)
    attn_implementation: str
    mask_format: str | None  # "bool" (sdpa) or "additive" (eager) when the collator sends a 4D mask, else None
    data_path: str  # classic, mixed, prepared or streamed
    held_out: str  # how the held-out split is made, in words
    evaluation: bool  # periodic evaluation (eval_strategy); held-out data is also scored once at the end
    world_size: int
    gradient_accumulation_steps: int
    tokens_per_step: int
    train_sampling_strategy: str
    remove_unused_columns: bool
    resume_from: str | None
    total_steps: int | None  # None: known once the data is built (a run by epochs)
    phases: tuple[tuple[int, str], ...] | None = None  # (first step, phase) of the objective plan
    attention: tuple[tuple[int, str], ...] | None = None  # (first step, attention) of each phase
    schedule: WSDSchedule | None = None  # None: the run uses another transformers scheduler
    document_attention: str = "shared"  # "isolated": the documents of a packed block attend only to themselves
    save_format: str = "transformers"  # "eurobert": the masked result is written as a native EuroBERT checkpoint
    load_as_decoder: bool = False  # an encoder checkpoint (EuroBERT) continues as the decoder it is (Llama)

    @property
    def spec(self) -> ObjectiveSpec:
        return get_objective(self.objective)

    @property
    def plan(self) -> ObjectivePlan | None:
        return ObjectivePlan(self.phases) if self.phases is not None else None

    def with_total_steps(self, total_steps: int, training_args: PretrainingArguments) -> ResolvedRun:
        """The plan and schedule of a run whose length is known only from its data (num_train_epochs)."""
        if self.total_steps is not None:
            raise ValueError(f"The run's length is already resolved ({self.total_steps} steps).")
        return _with_plan(self, total_steps, training_args)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["schedule"] = self.schedule.to_dict() if self.schedule is not None else None
        for key in ("phases", "attention"):
            out[key] = [list(item) for item in out[key]] if out[key] is not None else None
        return out


def source_config(model_args: ModelArguments):
    """The model's config, from the checkpoint or the preset, without building the model or a tokenizer."""
    if model_args.model_name_or_path:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, **model_args.config_overrides)
    settings = preset_settings(model_args.model_preset, model_args.config_overrides)
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def resolve_checkpoint(training_args: PretrainingArguments) -> str | None:
    """The checkpoint to resume from: a path, or `true`/`last` for the newest *complete* one in output_dir.

    A fresh run into an output_dir that already holds complete checkpoints stops here instead of overwriting them.
    Half-written or corrupt `checkpoint-N` folders (a job killed while saving) are reported by name and skipped, and
    never block a start: the run moves them to incomplete_checkpoints/ when it starts (PretrainingTrainer.train),
    not here, since a dry run resolves too and writes nothing.
    """
    requested = training_args.resume_from_checkpoint
    complete, broken = find_checkpoints(training_args.output_dir)
    last = complete[-1] if complete else None
    if training_args.process_index == 0:
        for folder, problem in broken:
            logger.warning("Skipping %s: %s (moved to %s/ when the run starts).", folder, problem, INCOMPLETE_DIR)
    if requested in (None, "", "false", "False"):
        if last is not None:
            raise ValueError(
                f"output_dir={training_args.output_dir!r} already holds checkpoints ({os.path.basename(last)}). "
                "Pass --resume_from_checkpoint true to resume, or choose another output_dir."
            )
        return None
    if str(requested).lower() in ("true", "last"):
        if last is None and (broken or interrupted_before_any_checkpoint(training_args.output_dir)):
            # killed before or during its first save: nothing to resume, nothing to lose (a requeued job just runs)
            logger.warning(
                "resume_from_checkpoint=%r: no complete checkpoint yet, the run starts at step 0.", requested
            )
            return None
        if last is None:
            raise ValueError(f"resume_from_checkpoint={requested!r}, but output_dir has no checkpoint-* folder.")
        if training_args.process_index == 0:
            logger.info("Resuming from %s, the newest complete checkpoint.", last)
        return last
    if not os.path.isdir(requested):
        raise ValueError(f"resume_from_checkpoint: no such checkpoint folder {requested!r}.")
    problem = checkpoint_problem(requested)
    if problem is not None:
        raise ValueError(
            f"resume_from_checkpoint={requested!r} is not a complete checkpoint: {problem}; name another "
            "checkpoint-N folder, or pass true for the newest complete one."
        )
    return requested


def planned_schedule(args: PretrainingArguments, total_steps: int) -> WSDSchedule:
    """The WSD schedule the arguments ask for: warmup, stable, decay; a cooldown branch has no stable phase."""
    if args.cooldown_from:  # its optimizer state is fresh: an optional short warmup, then the decay
        warmup = resolve_steps(args.warmup_steps, total_steps, "warmup_steps")
        return cooldown_schedule(total_steps - warmup, args.decay_type, args.min_lr_ratio, warmup_steps=warmup)
    warmup = resolve_steps(args.warmup_steps, total_steps, "warmup_steps")
    decay = resolve_steps(args.decay_steps, total_steps, "decay_steps")
    if warmup + decay > total_steps:  # said with the fields to change (wsd_schedule's own message names neither)
        raise ValueError(
            f"warmup_steps={args.warmup_steps:g} ({warmup} steps) + decay_steps={args.decay_steps:g} ({decay} steps) "
            f"= {warmup + decay} steps exceeds total_steps={total_steps} (max_steps): shorten them (a value < 1 is "
            "a fraction of the run) or raise max_steps."
        )
    return wsd_schedule(
        total_steps, args.warmup_steps, args.decay_steps, decay_type=args.decay_type, min_lr_ratio=args.min_lr_ratio
    )


def run_plan(args, total_steps: int, checkpoint: str | None = None) -> tuple[ObjectivePlan, WSDSchedule | None]:
    """The objective plan and WSD schedule of a run; a resumed run keeps the checkpoint's (changed arguments
    cannot move a switch or the decay)."""
    plan = ObjectivePlan.for_run(args.objective, total_steps, args.switch_fraction)
    schedule = planned_schedule(args, total_steps) if args.lr_scheduler_type == "warmup_stable_decay" else None
    if checkpoint is not None:
        if stored := phases_from_checkpoint(checkpoint):
            resumed = ObjectivePlan.from_dict({"phases": stored})
            if resumed != plan:
                logger.warning("Resuming with the checkpoint's objective plan %s (arguments say %s).", resumed, plan)
            plan = resumed
        stored_schedule = schedule_from_checkpoint(checkpoint)
        if schedule is not None and stored_schedule is not None:
            if stored_schedule != schedule:
                logger.warning(
                    "Resuming with the checkpoint's schedule %s (arguments say %s).", stored_schedule, schedule
                )
            schedule = stored_schedule
    return plan, schedule


def _with_plan(run: ResolvedRun, total_steps: int, training_args) -> ResolvedRun:
    plan, schedule = run_plan(training_args, total_steps, run.resume_from)
    attention = tuple((start, plan.at(start).attention) for start, _ in plan.phases)
    return dataclasses.replace(
        run, total_steps=total_steps, phases=plan.phases, attention=attention, schedule=schedule
    )


def save_format(spec: ObjectiveSpec, config, model_args: ModelArguments) -> str:
    """How the final model is written: "eurobert" when the run ends bidirectional on a masked Llama that EuroBERT
    expresses exactly (it then loads with transformers alone, no remote code), else "transformers" (the model's own
    class: a native encoder, a causal LM, or a masked decoder with its modeling file)."""
    ends_masked = spec.phases[-1].attention == "bidirectional" and family_of(config).kind == DECODER
    if not ends_masked or model_args.lora_rank:  # a LoRA result is the merged model of its base's class
        return "transformers"
    masked = copy.deepcopy(config)
    masked.is_causal, masked.architectures = False, None  # what the trained model's config will say
    reason = eurobert_compatible(masked)
    if reason is not None:
        logger.info("The masked model is saved in its own format, not EuroBERT's: %s.", reason)
    return "eurobert" if reason is None else "transformers"


def _held_out(data_args: DataArguments, path: str) -> str | None:
    """How the held-out split is made, or None when the run holds nothing out."""
    if data_args.validation_files:
        return f"validation_files {data_args.validation_files}"
    if path == "prepared":
        stats = read_json(os.path.join(data_args.prepared_dataset_path, "stats.json"))
        return "the prepared validation split" if stats.get("totals", {}).get("validation_blocks", 0) else None
    if path == "streamed":
        return None  # a stream has no end to hold documents out from: give validation_files
    if data_args.validation_fraction > 0:
        where = "of each source" if path == "mixed" else "of the documents"
        return f"{data_args.validation_fraction:g} {where}, split by document with the run's seed"
    if path == "classic" and data_args.dataset_name:
        return f"the 'validation' split of {data_args.dataset_name!r}, if it has one"
    return None


def check_padding_free_batches(training_args: PretrainingArguments) -> None:
    """`packing: false`: one padding-free row of whole documents is one batch, on every process."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(training_args, name) != 1:
            raise ValueError(
                f"packing: false makes each batch one padding-free row of up to max_tokens_per_batch tokens: set "
                f"{name}: 1 (and max_tokens_per_batch to the tokens per batch), got {getattr(training_args, name)}."
            )


def resolve_run(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments):
    """Decide every setting of the run before any data is read or any model is built; see the module docstring."""
    if training_args.cooldown_from and not model_args.model_name_or_path:
        model_args.model_name_or_path = training_args.cooldown_from  # the branch starts from the checkpoint's weights
    source = "cooldown" if training_args.cooldown_from else "checkpoint" if model_args.model_name_or_path else "preset"
    config = source_config(model_args)
    limit = max_positions(config)
    if limit is not None and data_args.block_size > limit:
        raise ValueError(
            f"block_size={data_args.block_size} exceeds the model's max_position_embeddings={limit}: lower "
            "block_size, or raise max_position_embeddings through config_overrides (new models only)."
        )
    spec = get_objective(training_args.objective)
    as_decoder = family_of(config).kind not in spec.model_kinds and decoder_equivalent(config) is not None
    if as_decoder:  # e.g. CLM on a EuroBERT checkpoint: its weights are a Llama decoder's
        logger.info("%s continues as the %s decoder it is.", model_args.model_name_or_path, config.model_type)
        config = decoder_equivalent(config)
    attn = model_args.attn_implementation = resolve_attention(
        config, model_args.attn_implementation, training_args.device.type
    )
    # bf16, flash attention, torch_compile, fused AdamW, Liger: each switch checked against the run before any work
    check_fast_paths(
        training_args,
        attn_implementation=attn,
        model_type=config.model_type,
        prefix_mask=spec.uses_4d_mask(family_of(config).kind == DECODER),
        padding_free=not data_args.packing,
    )
    check_model_fits_objective(spec, config, attn, training_args)
    check_fsdp(training_args, config, masked_decoder=spec.masked_lm)  # FSDP on a GPU, shard layers it has
    kind = family_of(config).kind
    documents = resolve_document_attention(data_args.document_attention, config, spec, attn)
    padding_free = not data_args.packing
    if padding_free:
        check_padding_free_batches(training_args)
    # Tokens one micro-batch holds: a block per sequence, or at most max_tokens_per_batch in a padding-free row.
    micro_batch_tokens = data_args.max_tokens_per_batch if padding_free else data_args.block_size

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise ValueError(
            f"{launched} processes were launched but they would train independently (parallel mode "
            f"{training_args.parallel_mode.value}); on CPUs use configs/accelerate/cpu_2proc.yaml or set use_cpu: true."
        )
    path = data_path(data_args)
    if path == "streamed":
        if training_args.max_steps <= 0:
            raise ValueError("streaming data has no length: set max_steps.")
        if training_args.dataloader_num_workers > 0:
            raise ValueError(
                "streamed blocks are produced where their position is recorded: set dataloader_num_workers: 0."
            )
    # `--deepspeed` on the command line, or the JSON that `accelerate launch` (DEEPSPEED config) passes on.
    check_deepspeed_config(training_args.deepspeed or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"))
    if training_args.global_batch_tokens is not None or training_args.global_batch_size is not None:
        training_args.gradient_accumulation_steps = resolve_global_batch(
            training_args.world_size,
            training_args.per_device_train_batch_size,
            micro_batch_tokens,
            tokens=training_args.global_batch_tokens,
            sequences=training_args.global_batch_size,
        )
    held_out = _held_out(data_args, path)
    if held_out is None and training_args.eval_strategy != "no":
        logger.warning("No held-out data (%s data): evaluation is disabled.", path)
        training_args.eval_strategy = "no"
    if path != "classic" and training_args.train_sampling_strategy != "sequential":
        # Prepared, mixed and streamed blocks are stored in training order (shuffled and mixed by weight): read
        # them in that order, which makes per-source token counts and the curriculum exact functions of the step.
        logger.info("The training blocks are stored in training order: reading them sequentially.")
        training_args.train_sampling_strategy = "sequential"
    if data_args.curriculum_lengths or documents == ISOLATED:
        # block_index and document_lengths reach the collator wrapper, which drops what the model does not take
        training_args.remove_unused_columns = False
    if path == "streamed":
        training_args.ignore_data_skip = True  # the stream resumes at its stored position; nothing to skip
    resume_from = resolve_checkpoint(training_args)

    run = ResolvedRun(
        objective=spec.name,
        model_source=source,
        model_path=model_args.model_name_or_path,
        model_type=getattr(config, "model_type", "?"),
        model_kind=kind,
        source_is_causal=getattr(config, "is_causal", None) if source != "preset" else None,
        attn_implementation=attn,
        mask_format=MASK_FORMATS.get(attn) if spec.uses_4d_mask(kind == DECODER) else None,
        data_path=path,
        held_out=held_out or "nothing",
        evaluation=training_args.eval_strategy != "no",
        world_size=training_args.world_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        tokens_per_step=training_args.world_size
        * training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * micro_batch_tokens,
        train_sampling_strategy=training_args.train_sampling_strategy,
        remove_unused_columns=training_args.remove_unused_columns,
        resume_from=resume_from,
        total_steps=None,
        document_attention=documents,
        save_format=save_format(spec, config, model_args),
        load_as_decoder=as_decoder,
    )
    if training_args.max_steps > 0:
        run = _with_plan(run, training_args.max_steps, training_args)
    if run.source_is_causal is False and any(attention == "causal" for _, attention in run.attention or ()):
        logger.warning(
            "%s says is_causal: false (a bidirectional model); the causal phases of this run make it causal again.",
            run.model_path,
        )
    return run


def resolved_text(model_args, data_args, training_args, run: ResolvedRun) -> str:
    """The content of resolved_config.yaml: the arguments (loadable by parse_config) and the derived settings."""
    derived = yaml.safe_dump({RESOLVED_SECTION: run.to_dict()}, sort_keys=False, default_flow_style=None)
    return (
        f"{format_config((model_args, data_args, training_args))}\n"
        f"# Derived by hf_pretrain.resolve (read back by evaluation and publishing; ignored as input)\n{derived}"
    )


def write_resolved(text: str, output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESOLVED_CONFIG_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def find_resolved_config(path: str) -> str:
    """resolved_config.yaml of a run folder, or of the run a checkpoint folder belongs to."""
    for folder in (path, os.path.dirname(os.path.normpath(path))):
        candidate = os.path.join(folder, RESOLVED_CONFIG_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise ValueError(f"{path!r} has no {RESOLVED_CONFIG_FILE} (nor its parent): it is not the output of a run.")


def load_resolved(path: str) -> tuple[dict, dict]:
    """(arguments, derived settings) as plain dicts from a run's resolved_config.yaml."""
    with open(find_resolved_config(path), encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle) or {}
    derived = loaded.pop(RESOLVED_SECTION, None) or {}
    return loaded, derived


def load_run_arguments(path: str) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    """The dataclasses of the run at `path` (a run folder or one of its checkpoints), exactly as it resolved them."""
    arguments, _ = load_resolved(path)
    arguments = {key: value for key, value in arguments.items() if not str(value).startswith("<redacted")}
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainingArguments))
    return parser.parse_dict(arguments, allow_extra_keys=True)
