"""The flow of one pretraining run, from parsed arguments to a saved, evaluated model.

    arguments → checks and resolve (preflight.py) → data → model → resolved_config.yaml → PretrainingTrainer → save

Everything that can be checked without the data (unknown keys, block size against the model's positions, missing
files, the model against the objective, existing checkpoints that would be overwritten) is checked by the
pre-flight checks and the resolve step (`preflight.checked_run`), before any data is read or any model is built; a
bad input is a `RunRefused` (one line, exit status 2, nothing written). After it nothing changes the arguments: the
run ends by checking that they still serialise to what resolved_config.yaml says.
"""

from __future__ import annotations

import logging
import os

import datasets
import transformers
from transformers.integrations import is_deepspeed_zero3_enabled

from hf_pretrain.arguments import DataArguments, ModelArguments, PretrainingArguments
from hf_pretrain.data.build import build_data
from hf_pretrain.data.tokenizer import check_special_tokens
from hf_pretrain.data.training_data import blocks_per_step, total_steps
from hf_pretrain.document_attention import ISOLATED
from hf_pretrain.eurobert_export import save_eurobert
from hf_pretrain.hub.publisher import take_over_hub_push
from hf_pretrain.hub.revisions import hub_revision_callbacks
from hf_pretrain.hub.run import HUB_STATUS_FILE, HubPublishingIncomplete, publish_final_model
from hf_pretrain.lora_export import save_lora_result
from hf_pretrain.model_families import DECODER
from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM
from hf_pretrain.models import add_lora, build_config, build_model, count_parameters, load_model
from hf_pretrain.objectives import CollatorContext
from hf_pretrain.preflight import checked_run, refusals
from hf_pretrain.resolve import ResolvedRun, resolved_text, write_resolved
from hf_pretrain.training import setup
from hf_pretrain.training.attention import probe_attention, set_direction
from hf_pretrain.training.distributed import describe_batch
from hf_pretrain.training.plots import RunPlotsCallback
from hf_pretrain.training.trainer import PretrainingTrainer

logger = logging.getLogger("hf_pretrain")


def log_compute_plan(model, train_blocks, data_args: DataArguments, training_args: PretrainingArguments) -> None:
    """Tokens per parameter of the planned run, with a warning when it is far from compute-optimal."""
    from hf_pretrain.planning import run_summary

    tokens = total_steps(training_args, train_blocks) * blocks_per_step(training_args) * data_args.block_size
    message, warning = run_summary(count_parameters(model), tokens)
    logger.info(message)
    if warning:
        logger.warning("Far from compute-optimal: %s", warning)


def prepare_model(model_args: ModelArguments, tokenizer, run: ResolvedRun):
    """The model of the run, in the attention of its first phase whatever its source's config says, checked."""
    masked = run.spec.masked_lm
    if model_args.model_name_or_path:  # config_overrides here are config switches, e.g. sparse_prediction: false
        model = load_model(
            model_args.model_name_or_path,
            run.attn_implementation,
            masked_decoder=masked,
            as_decoder=run.load_as_decoder,
            **model_args.config_overrides,
        )
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    else:
        config = build_config(model_args.model_preset, tokenizer, model_args.config_overrides)
        model = build_model(config, attn_implementation=run.attn_implementation, masked_decoder=masked)
    actual = getattr(model.config, "_attn_implementation", run.attn_implementation)
    if actual != run.attn_implementation:
        raise ValueError(
            f"attn_implementation={run.attn_implementation!r} was asked for, but {type(model).__name__} runs "
            f"{actual!r}: set attn_implementation to {actual!r} or to one this model supports."
        )
    first = run.plan.at(0).attention if run.plan is not None else run.spec.phases[0].attention
    set_direction(model, first)  # e.g. a masked checkpoint continued with CLM becomes causal again
    # Measured, not assumed; the trainer probes again at its first step and after every switch. Under ZeRO-3 the
    # weights are partitioned until DeepSpeed's engine wraps the model: only the trainer's probe can run then.
    if not is_deepspeed_zero3_enabled():
        logger.info("Attention probe (%s): %s", first, probe_attention(model, first, run.attn_implementation))
    if model_args.lora_rank:
        model = add_lora(model, model_args.lora_rank, model_args.lora_alpha)
    return model


def rewrite_as_eurobert(output_dir: str, tokenizer) -> None:
    """Replace the masked Llama saved in `output_dir` by the same network in the native EuroBERT format."""
    for name in os.listdir(output_dir):
        if name.endswith(".py"):  # the remote-code modeling file a EuroBERT checkpoint does without
            os.remove(os.path.join(output_dir, name))
    masked = LlamaForMaskedLM.from_pretrained(output_dir)
    save_eurobert(masked, output_dir, tokenizer)
    logger.info("Saved %s in the native EuroBERT format (EuroBertForMaskedLM, no remote code).", output_dir)


def _setup_logging(training_args: PretrainingArguments) -> None:
    """Our messages at INFO on the main process only; transformers and datasets follow `log_level`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    if training_args.log_level != "passive":
        for library in (datasets.utils.logging, transformers.utils.logging):
            library.set_verbosity(training_args.get_process_log_level())


def check_documents_kept(data, run: ResolvedRun) -> None:
    """An isolated run's blocks carry document_lengths, training and held-out (a probe of the data path: without
    them the collators could not keep a single document apart, and the run would silently share attention)."""
    if run.document_attention != ISOLATED:
        return
    for split, dataset in (("training", data.train), ("held-out", data.evaluation)):
        columns = getattr(dataset, "column_names", None)  # a stream's rows always carry them (streaming.py)
        if columns is not None and "document_lengths" not in columns:
            raise RuntimeError(
                f"document_attention: isolated, but the {split} blocks of the {run.data_path} data carry no "
                "document_lengths: the data path dropped them (set document_attention: shared to train anyway)."
            )


def describe_resolved_run(model_args, data_args, training_args) -> str:
    """What `--dry_run` prints: the content resolved_config.yaml would have, then the run's compute plan
    (parameters, tokens, FLOPs, GPU-hours) as YAML comments. No data is read and no weights are allocated."""
    from hf_pretrain.planning.dry_run import dry_run_plan

    run = checked_run(model_args, data_args, training_args)  # the checks of a real run: a dry run is its pre-flight
    resolved = resolved_text(model_args, data_args, training_args, run)
    return f"{resolved}\n{dry_run_plan(model_args, data_args, training_args, run)}"


def run_pretraining(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments):
    """Train, save and evaluate; returns the final metrics (train and eval)."""
    _setup_logging(training_args)
    run = checked_run(model_args, data_args, training_args)  # a bad input: RunRefused, one line, nothing written
    publisher = take_over_hub_push(training_args)  # push_to_hub: pushes in the background, never stopping training
    resolved = resolved_text(model_args, data_args, training_args, run)
    logger.info("Resolved config:\n%s", resolved)

    with refusals():  # what only the data can show (no document, nothing held out, ...) is a bad input too
        data = build_data(model_args, data_args, training_args)
        tokenizer = data.tokenizer
        check_special_tokens(tokenizer, run.spec)
        check_documents_kept(data, run)
        if data.evaluation is None and run.evaluation:  # e.g. a Hub dataset that has no validation split after all
            raise ValueError(
                f"eval_strategy={training_args.eval_strategy!r}, but the {run.data_path} data holds nothing out: set "
                "validation_fraction > 0, give validation_files, or set eval_strategy: no."
            )
        if run.total_steps is None:  # a run by epochs: its length, hence its plan and schedule, follow from the data
            run = run.with_total_steps(total_steps(training_args, data.train), training_args)
            resolved = resolved_text(model_args, data_args, training_args, run)
        curriculum = setup.build_curriculum(data, data_args, training_args)

    transformers.set_seed(training_args.seed)
    model = prepare_model(model_args, tokenizer, run)
    n_params = count_parameters(model, exclude_embeddings=True)
    logger.info("Model: %s, %.2fM non-embedding parameters.", type(model).__name__, n_params / 1e6)
    logger.info(
        "Batch: %s",
        describe_batch(
            run.world_size,
            training_args.per_device_train_batch_size,
            training_args.gradient_accumulation_steps,
            data_args.block_size,
        ),
    )
    if hasattr(data.train, "__len__"):
        logger.info(
            "Data: %d training blocks of %d tokens (%s).", len(data.train), data_args.block_size, run.data_path
        )
    log_compute_plan(model, data.train, data_args, training_args)

    context = CollatorContext(tokenizer, training_args, run.model_kind == DECODER, run.attn_implementation)
    trainer = PretrainingTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.evaluation,  # scored at eval_strategy, and once at the end
        data_collator=run.spec.collator(context),
        processing_class=tokenizer,
        sequence_length=data_args.block_size,
        plan=run.plan,
        schedule=run.schedule,
        callbacks=hub_revision_callbacks(publisher, training_args),  # each checkpoint to its own branch
    )
    # output_dir/plots/ at each save and at the end, with the resolved WSD phases and objective switches marked
    switches = run.plan.phases[1:] if run.plan is not None else ()
    trainer.add_callback(RunPlotsCallback(schedule=run.schedule, switches=switches))
    # curriculum and document_lengths through the collator wrapper, data callbacks
    setup.attach(
        trainer,
        data,
        curriculum,
        data_args.block_size,
        documents=run.document_attention == ISOLATED,
        padding_free=not data_args.packing,
    )
    # Written when training starts, not before: a run refused by a check leaves an earlier run's file as it was.
    if training_args.process_index == 0:
        write_resolved(resolved, training_args.output_dir)
    setup.restore(data, run.resume_from)  # a stream continues where the checkpoint left it
    train_result = trainer.train(resume_from_checkpoint=run.resume_from)
    if model_args.lora_rank:  # the merged model in output_dir, the adapter alone in output_dir/adapter/
        if training_args.should_save:
            base = model_args.model_name_or_path  # a cooldown branch's checkpoint is already here
            save_lora_result(
                trainer.accelerator.unwrap_model(trainer.model), training_args.output_dir, tokenizer, base
            )
        trainer.accelerator.wait_for_everyone()
    else:
        trainer.save_model()  # model (safetensors), config, generation config and tokenizer in output_dir
        if run.save_format == "eurobert":  # rewritten from the saved (gathered) weights: works under ZeRO-3 / FSDP
            if training_args.should_save:
                rewrite_as_eurobert(training_args.output_dir, tokenizer)
            trainer.accelerator.wait_for_everyone()
    metrics = dict(train_result.metrics)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    if trainer.eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    trainer.save_state()
    # The final model and its card, after the pending checkpoint pushes; waits at most hub_wait_timeout in all.
    published = publish_final_model(publisher, trainer) if publisher is not None else True
    check_unchanged(resolved, model_args, data_args, training_args, run)
    if not published:  # everything is trained and saved: only the exit status (3) and hub_status.json tell
        status = os.path.join(training_args.output_dir, HUB_STATUS_FILE)
        raise HubPublishingIncomplete(f"the run is saved, but not everything reached the Hub: see {status}", metrics)
    return metrics


def check_unchanged(resolved: str, model_args, data_args, training_args, run: ResolvedRun) -> None:
    """The arguments at the end of the run are the ones resolved_config.yaml describes (a probe of the rule that
    nothing after the resolve step changes them)."""
    now = resolved_text(model_args, data_args, training_args, run)
    if now != resolved:
        changed = sorted(set(now.splitlines()) ^ set(resolved.splitlines()))
        raise RuntimeError(f"The run's arguments changed after they were resolved: {changed[:6]}")
