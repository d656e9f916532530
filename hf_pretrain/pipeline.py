"""The flow of one pretraining run, from resolved arguments to a saved, evaluated model.

    arguments → checks → documents → tokenizer → packed blocks → model → PretrainingTrainer → save, evaluate

Everything that can be checked without the data (unknown keys, block size against the model's positions, missing
files, existing checkpoints that would be overwritten) is checked before any data is read or any model is built.
"""

from __future__ import annotations

import logging
import os

import datasets
import transformers
from transformers import AutoConfig, PretrainedConfig
from transformers.trainer_utils import get_last_checkpoint
from transformers.training_args import ParallelMode

from hf_pretrain.arguments import DataArguments, ModelArguments, PretrainingArguments
from hf_pretrain.callbacks.hub_revisions import hub_revision_callbacks
from hf_pretrain.cli import format_config
from hf_pretrain.data.packing import pack, tokenize_documents
from hf_pretrain.data.sources import load_documents
from hf_pretrain.data.tokenizer import check_special_tokens, load_tokenizer, train_tokenizer
from hf_pretrain.data.training_data import TrainingData, blocks_per_step, total_steps
from hf_pretrain.data.training_data import attach as attach_training_data
from hf_pretrain.data.training_data import configure as configure_training_data
from hf_pretrain.data.training_data import restore as restore_training_data
from hf_pretrain.hub import take_over_hub_push
from hf_pretrain.hub_run import publish_final_model
from hf_pretrain.launch import check_deepspeed_config, describe_batch, resolve_global_batch
from hf_pretrain.models import (
    MODEL_PRESETS,
    add_lora,
    build_config,
    build_model,
    count_parameters,
    is_encoder_decoder,
    load_model,
    max_positions,
)
from hf_pretrain.objectives import build_collator, check_model_fits_objective
from hf_pretrain.schedules import wsd_schedule
from hf_pretrain.trainer import PretrainingTrainer

logger = logging.getLogger("hf_pretrain")

RESOLVED_CONFIG_FILE = "resolved_config.yaml"
TOKENIZER_SUBDIR = "tokenizer"


def _declared_config(model_args: ModelArguments) -> PretrainedConfig:
    """The model's config, from the checkpoint or the preset, without building the model or a tokenizer."""
    if model_args.model_name_or_path:
        return AutoConfig.from_pretrained(model_args.model_name_or_path)
    settings = {**MODEL_PRESETS[model_args.model_preset], **model_args.config_overrides}
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def resolve_checkpoint(training_args: PretrainingArguments) -> str | None:
    """The checkpoint to resume from: a path, or `true`/`last` for the newest one in output_dir.

    A fresh run into an output_dir that already holds checkpoints stops here instead of overwriting them.
    """
    requested = training_args.resume_from_checkpoint
    last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    if requested in (None, "", "false", "False"):
        if last is not None:
            raise ValueError(
                f"output_dir={training_args.output_dir!r} already holds checkpoints ({os.path.basename(last)}). "
                "Pass --resume_from_checkpoint true to resume, or choose another output_dir."
            )
        return None
    if str(requested).lower() in ("true", "last"):
        if last is None:
            raise ValueError(f"resume_from_checkpoint={requested!r}, but output_dir has no checkpoint-* folder.")
        return last
    if not os.path.isdir(requested):
        raise ValueError(f"resume_from_checkpoint: no such checkpoint folder {requested!r}.")
    return requested


def check_before_work(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments):
    """Cheap checks that need no data and no model: they fail in seconds, not after tokenizing a corpus."""
    if training_args.cooldown_from and not model_args.model_name_or_path:
        model_args.model_name_or_path = training_args.cooldown_from  # the branch starts from the checkpoint's weights
    config = _declared_config(model_args)
    limit = max_positions(config)
    if limit is not None and data_args.block_size > limit:
        raise ValueError(
            f"block_size={data_args.block_size} exceeds the model's max_position_embeddings={limit}: lower "
            "block_size, or raise max_position_embeddings through config_overrides (new models only)."
        )
    objective = training_args.objective
    check_model_fits_objective(objective, config, model_args.attn_implementation)
    if (
        objective in ("span_corruption", "ul2")
        and not is_encoder_decoder(config)
        and not training_args.span_decoder_only
    ):
        raise ValueError(
            f"objective={objective!r} on a decoder-only model needs span_decoder_only: true (inputs then "
            "targets in one sequence, bidirectional over the inputs), or an encoder-decoder model_preset."
        )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise ValueError(
            f"{launched} processes were launched but they would train independently (parallel mode "
            f"{training_args.parallel_mode.value}); on CPUs use configs/accelerate/cpu_2proc.yaml or set use_cpu: true."
        )
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("streaming data has no length: set max_steps.")
    if data_args.streaming and training_args.dataloader_num_workers > 0:
        raise ValueError(
            "streamed blocks are produced where their position is recorded: set dataloader_num_workers: 0."
        )
    # `--deepspeed` on the command line, or the JSON that `accelerate launch` (DEEPSPEED config) passes on.
    check_deepspeed_config(training_args.deepspeed or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"))
    target_tokens, target_sequences = training_args.global_batch_tokens, training_args.global_batch_size
    if target_tokens is not None or target_sequences is not None:
        training_args.gradient_accumulation_steps = resolve_global_batch(
            training_args.world_size,
            training_args.per_device_train_batch_size,
            data_args.block_size,
            tokens=target_tokens,
            sequences=target_sequences,
        )
    if training_args.max_steps > 0 and training_args.lr_scheduler_type == "warmup_stable_decay":
        _ = wsd_schedule(  # raises when warmup + decay exceed the run, naming both
            training_args.max_steps, training_args.warmup_steps, training_args.decay_steps, training_args.decay_type
        )
    return resolve_checkpoint(training_args)


def prepare_tokenizer(model_args: ModelArguments, training_args: PretrainingArguments, documents, text_column: str):
    """Load the tokenizer, or train one on the corpus. Saved under output_dir, so a resumed run reuses it exactly."""
    saved = os.path.join(training_args.output_dir, TOKENIZER_SUBDIR)
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name:
        return load_tokenizer(name)
    with training_args.main_process_first(desc="tokenizer"):  # rank 0 trains and saves; the others load it
        if os.path.isfile(os.path.join(saved, "tokenizer.json")):
            logger.info("Reusing the tokenizer trained earlier in %s", saved)
            return load_tokenizer(saved)
        limit = min(model_args.tokenizer_training_documents, len(documents)) if hasattr(documents, "__len__") else None
        sample = (
            documents.select(range(limit))
            if limit is not None
            else documents.take(model_args.tokenizer_training_documents)
        )
        tokenizer = train_tokenizer((row[text_column] for row in sample), vocab_size=model_args.tokenizer_vocab_size)
        if training_args.process_index == 0:
            tokenizer.save_pretrained(saved)
        logger.info("Trained a byte-level BPE tokenizer with %d tokens.", len(tokenizer))
        return tokenizer


def prepare_blocks(data_args: DataArguments, training_args: PretrainingArguments, tokenizer, train_docs, eval_docs):
    with training_args.main_process_first(desc="tokenize and pack"):  # rank 0 fills the datasets cache first
        train = pack(
            tokenize_documents(train_docs, tokenizer, data_args.text_column, data_args.preprocessing_num_workers),
            data_args.block_size,
        )
        evaluation = None
        if eval_docs is not None:
            evaluation = pack(
                tokenize_documents(eval_docs, tokenizer, data_args.text_column, data_args.preprocessing_num_workers),
                data_args.block_size,
            )
    return train, evaluation


def prepare_data(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments):
    """The tokenizer and the training / held-out blocks: prepared, mixed from sources, streamed, or classic."""
    from hf_pretrain.data import training_data as source_data

    if data_args.prepared_dataset_path:  # its own tokenizer; a given one must have the same vocabulary
        given = model_args.tokenizer_name_or_path or model_args.model_name_or_path
        return source_data.load_prepared_data(data_args, load_tokenizer(given) if given else None)
    if not source_data.uses_block_sources(data_args):
        train_docs, eval_docs = load_documents(data_args, seed=training_args.seed)
        tokenizer = prepare_tokenizer(model_args, training_args, train_docs, data_args.text_column)
        train, evaluation = prepare_blocks(data_args, training_args, tokenizer, train_docs, eval_docs)
        return TrainingData(train, evaluation, tokenizer)
    if data_args.streaming:
        named = model_args.tokenizer_name_or_path or model_args.model_name_or_path
        sample = None if named else source_data.tokenizer_sample(data_args, model_args.tokenizer_training_documents)
        tokenizer = prepare_tokenizer(model_args, training_args, sample, "text")
        return source_data.streamed_data(data_args, tokenizer)
    train_docs, held_out, specs = source_data.load_source_documents(data_args, training_args.seed)
    everything = datasets.concatenate_datasets(train_docs).shuffle(seed=training_args.seed)  # all sources train it
    tokenizer = prepare_tokenizer(model_args, training_args, everything, "text")
    with training_args.main_process_first(desc="tokenize and pack"):
        return source_data.mixed_data(data_args, tokenizer, train_docs, held_out, specs, training_args.seed)


def log_compute_plan(model, train_blocks, data_args: DataArguments, training_args: PretrainingArguments) -> None:
    """Tokens per parameter of the planned run, with a warning when it is far from compute-optimal."""
    from hf_pretrain.planning import run_summary

    tokens = total_steps(training_args, train_blocks) * blocks_per_step(training_args) * data_args.block_size
    message, warning = run_summary(count_parameters(model), tokens)
    logger.info(message)
    if warning:
        logger.warning("Far from compute-optimal: %s", warning)


def needs_masked_decoder(objective: str) -> bool:
    return objective in ("mlm", "clm_then_mlm")


def prepare_model(model_args: ModelArguments, tokenizer, objective: str = "clm"):
    masked = needs_masked_decoder(objective)
    if model_args.model_name_or_path:
        model = load_model(model_args.model_name_or_path, model_args.attn_implementation, masked_decoder=masked)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    else:
        config: PretrainedConfig = build_config(model_args.model_preset, tokenizer, model_args.config_overrides)
        model = build_model(config, attn_implementation=model_args.attn_implementation, masked_decoder=masked)
    if model_args.lora_rank:
        model = add_lora(model, model_args.lora_rank, model_args.lora_alpha)
    return model


def _setup_logging(training_args: PretrainingArguments) -> None:
    """Our messages at INFO on the main process only; transformers and datasets follow `log_level`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    if training_args.log_level != "passive":
        for library in (datasets.utils.logging, transformers.utils.logging):
            library.set_verbosity(training_args.get_process_log_level())


def run_pretraining(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments):
    """Train, save and evaluate; returns the final metrics (train and eval)."""
    _setup_logging(training_args)
    resume_from = check_before_work(model_args, data_args, training_args)
    resolved = format_config((model_args, data_args, training_args))
    logger.info("Resolved config:\n%s", resolved)
    if training_args.process_index == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, RESOLVED_CONFIG_FILE), "w") as handle:
            handle.write(resolved)

    data = prepare_data(model_args, data_args, training_args)
    tokenizer, train_blocks, eval_blocks = data.tokenizer, data.train, data.evaluation
    check_special_tokens(tokenizer, training_args.objective)
    curriculum = configure_training_data(data, data_args, training_args)  # read order, curriculum, stream resume
    train_blocks = data.train

    transformers.set_seed(training_args.seed)
    model = prepare_model(model_args, tokenizer, training_args.objective)
    n_params = count_parameters(model, exclude_embeddings=True)
    logger.info("Model: %s, %.2fM non-embedding parameters.", type(model).__name__, n_params / 1e6)
    logger.info(
        "Batch: %s",
        describe_batch(
            training_args.world_size,
            training_args.per_device_train_batch_size,
            training_args.gradient_accumulation_steps,
            data_args.block_size,
        ),
    )
    if hasattr(train_blocks, "__len__"):
        logger.info("Data: %d training blocks of %d tokens.", len(train_blocks), data_args.block_size)
    log_compute_plan(model, train_blocks, data_args, training_args)

    if eval_blocks is None and training_args.eval_strategy != "no":
        logger.warning("No held-out data: evaluation is disabled.")
        training_args.eval_strategy = "no"
    publisher = take_over_hub_push(training_args)  # push_to_hub: pushes in the background, never stopping training
    trainer = PretrainingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=build_collator(training_args, tokenizer, decoder_only=not model.config.is_encoder_decoder),
        processing_class=tokenizer,
        sequence_length=data_args.block_size,
        callbacks=hub_revision_callbacks(publisher, training_args),  # each checkpoint to its own branch
    )
    attach_training_data(trainer, data, curriculum, data_args.block_size)  # curriculum collator, data callbacks
    restore_training_data(data, resume_from)  # a stream continues where the checkpoint left it
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model()  # model (safetensors), config, generation config and tokenizer in output_dir
    metrics = dict(train_result.metrics)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    if eval_blocks is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    trainer.save_state()
    if publisher is not None:  # the final model and its card, after the pending checkpoint pushes; reports failures
        publish_final_model(publisher, trainer)
    return metrics
