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

Every run is built from the dataclasses (`ModelArguments`, `DataArguments`, `PretrainingArguments`) with the
ablation's shared settings (`AblationArguments`, in `ablation_config`: budget, WSD schedule, AdamW weight decay and
β2, gradient clipping) and trained by `run_pretraining`, so its `resolved_config.yaml` records them.

With `early_fraction`, the `clm` and `mlm` checkpoints at that fraction of training are fine-tuned too (the study's
data-efficiency comparison). Finished runs are reused when the ablation is run again into the same output_dir.
"""

from __future__ import annotations

import json
import logging
import os
import re

import transformers

from hf_pretrain.arguments import DataArguments, ModelArguments, PretrainingArguments
from hf_pretrain.checkpoint_state import training_progress
from hf_pretrain.data.sources import default_corpus
from hf_pretrain.data.tokenizer import load_tokenizer, train_tokenizer
from hf_pretrain.evaluation.ablation_config import DEFAULT_GRID, GRID_KINDS, AblationArguments, GridEntry
from hf_pretrain.evaluation.ablation_report import write_results
from hf_pretrain.evaluation.finetune import FinetuneArguments, run_finetuning
from hf_pretrain.evaluation.intrinsic import IntrinsicArguments, evaluate_checkpoints
from hf_pretrain.evaluation.tasks import synthetic_task
from hf_pretrain.models import build_config, build_model
from hf_pretrain.pipeline import run_pretraining

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_GRID", "GRID_KINDS", "AblationArguments", "GridEntry", "pretrain_entry", "run_ablation"]

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
    steps, warmup = args.max_steps, args.warmup_steps
    objective = {"objective": "clm" if entry.kind == "clm" else "mlm"}  # a CPT branch: MLM from its source run
    if entry.kind != "clm":
        objective["mlm_probability"] = entry.value if entry.kind == "mlm" else args.mlm_probability
    if entry.kind == "clm_then_mlm":
        objective.update(objective="clm_then_mlm", switch_fraction=entry.value)
    elif entry.kind.startswith("cpt"):  # MLM from the source run's checkpoint, for the rest of the budget
        objective["cooldown_from"] = args.branch_checkpoint(entry)
        steps = args.max_steps - args.checkpoint_step(1 - entry.value)
        if warmup < 1:  # a fraction of the whole run's steps, as in the runs it is compared with
            warmup = max(1, round(warmup * args.max_steps))
    resume = os.path.isdir(run_dir) and any(name.startswith("checkpoint-") for name in os.listdir(run_dir))
    model_args = ModelArguments(
        model_preset=args.model_preset,
        config_overrides=dict(args.config_overrides),
        tokenizer_name_or_path=tokenizer_dir,
    )
    data_args = DataArguments(data_files=[train_path], validation_fraction=0.0, block_size=args.block_size)
    training_args = PretrainingArguments(
        output_dir=run_dir, eval_strategy="no", per_device_train_batch_size=args.batch_size, max_steps=steps,
        learning_rate=args.learning_rate, warmup_steps=warmup, decay_steps=args.decay_steps,
        weight_decay=args.weight_decay, adam_beta2=args.adam_beta2, max_grad_norm=args.max_grad_norm,
        seed=args.seed, save_steps=args.save_every, save_only_model=True, logging_steps=max(1, steps // 20),
        disable_tqdm=True,
        resume_from_checkpoint="true" if resume else None,  # an interrupted ablation: go on from the newest checkpoint
        **objective,
    )  # fmt: skip
    run_pretraining(model_args, data_args, training_args)
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
