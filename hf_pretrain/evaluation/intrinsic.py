"""Intrinsic evaluation of checkpoints on held-out text: CLM perplexity and bits per byte, MLM loss and accuracy.

What a checkpoint is scored on follows how it was trained (`is_masked_lm`): a causal checkpoint gets the causal-LM
loss, perplexity and bits per byte; a masked one (MLM, or CLM→MLM after the switch) the masked-LM loss and accuracy
at `mlm_probability`. A bidirectional model has no next-token distribution, and a causal one no masked-token one.

- CLM: the held-out documents become one token stream (EOS after each document, and one EOS before the first, as
  the context of the first token), cut into windows of `block_size` + 1 tokens that overlap by one, so every token
  is predicted exactly once. Bits per byte divide the total loss by the UTF-8 bytes of those documents plus one per
  document for its EOS (the separator stands for a newline): a number that does not depend on the tokenizer.
- MLM: the same stream in blocks of `block_size`, masked by `DataCollatorForMaskedLM` with a fixed seed. Masks are
  keyed by the tokens, so every checkpoint that shares a tokenizer is scored on the same masked positions.

Checkpoints: a checkpoint folder, a run folder (each `checkpoint-*` in step order, then the final model), or a Hub
id with a list of revisions. Tokens seen come from each checkpoint's `trainer_state.json`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from hf_pretrain.arguments import DataArguments
from hf_pretrain.collators import DataCollatorForMaskedLM
from hf_pretrain.data.sources import load_documents
from hf_pretrain.data.tokenizer import load_tokenizer
from hf_pretrain.evaluation.encoders import is_masked_lm, quiet_loading
from hf_pretrain.evaluation.metrics import bits_per_byte, perplexity
from hf_pretrain.evaluation.reporting import plot_curves, write_rows

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
METRICS = ("perplexity", "bits_per_byte", "clm_loss", "mlm_loss", "mlm_accuracy")


@dataclass
class IntrinsicArguments:
    """Which checkpoints to score, and how. The held-out text comes from `DataArguments` (the recipe's second
    dataclass), or from the run's own `resolved_config.yaml` when no data is given."""

    model_name_or_path: list[str] = field(
        default_factory=list,
        metadata={"help": "Checkpoint folders, run folders (every checkpoint-* and the final model) or Hub ids."},
    )
    revisions: list[str] = field(
        default_factory=list, metadata={"help": "Hub revisions to score, for a single Hub id in model_name_or_path."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer for every checkpoint. Unset: each checkpoint's own (or its run's)."}
    )
    mlm_probability: float = field(default=0.3, metadata={"help": "Masking rate of the MLM evaluation."})
    batch_size: int = field(default=16, metadata={"help": "Windows per forward pass."})
    max_eval_tokens: int | None = field(
        default=None, metadata={"help": "Score whole held-out documents until about this many tokens."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the held-out split (as in pretraining) and of the MLM masks."}
    )
    output_dir: str = field(default="outputs/evaluate", metadata={"help": "Where intrinsic.csv/.json/.png go."})

    def __post_init__(self):
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")
        if self.max_eval_tokens is not None and self.max_eval_tokens < 1:
            raise ValueError(f"max_eval_tokens must be positive, got {self.max_eval_tokens}.")
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path: give at least one checkpoint, run folder or Hub id.")
        if self.revisions and len(self.model_name_or_path) != 1:
            raise ValueError("revisions apply to a single Hub id: give exactly one model_name_or_path.")


def _step_of(path: str) -> int:
    match = re.search(r"checkpoint-(\d+)$", path.rstrip("/"))
    return int(match.group(1)) if match else -1


def find_checkpoints(path: str) -> list[str]:
    """A run folder's checkpoints in step order, then its final model (instead of a checkpoint of the same step); a
    checkpoint folder alone; a Hub id as is."""
    if not os.path.isdir(path):
        return [path]
    checkpoints = sorted(glob.glob(os.path.join(path, "checkpoint-*")), key=_step_of)
    if os.path.isfile(os.path.join(path, "config.json")):
        final_step = training_progress(path)[0]
        # The last checkpoint usually holds the final weights too: score them once, as the final model.
        checkpoints = [c for c in checkpoints if _step_of(c) != final_step] + [path]
    if not checkpoints:
        raise ValueError(f"model_name_or_path: {path!r} holds neither a model (config.json) nor checkpoint-* folders.")
    return checkpoints


def training_progress(path: str) -> tuple[int | None, int | None]:
    """(global step, tokens seen) from a local checkpoint's trainer_state.json, or (None, None)."""
    state_file = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state_file):
        return None, None
    with open(state_file) as handle:
        state = json.load(handle)
    return state.get("global_step"), state.get("num_input_tokens_seen")


def run_data_arguments(path: str) -> dict | None:
    """The data settings and seed a run was trained with (its resolved_config.yaml), to score its own held-out split."""
    for folder in (path, os.path.dirname(path.rstrip("/"))):
        config_file = os.path.join(folder, "resolved_config.yaml")
        if os.path.isfile(config_file):
            with open(config_file) as handle:
                return yaml.safe_load(handle)
    return None


def token_stream(documents: Sequence[str], tokenizer, max_tokens: int | None = None) -> tuple[list[int], int, int]:
    """(stream, number of documents, bytes): EOS, then each document's tokens and an EOS, whole documents only."""
    eos = tokenizer.eos_token_id
    stream, used, num_bytes = [eos], 0, 0
    encoded = tokenizer(list(documents), add_special_tokens=False, verbose=False)["input_ids"]
    for text, ids in zip(documents, encoded):
        if max_tokens is not None and used and len(stream) + len(ids) > max_tokens:
            break
        stream += [*ids, eos]
        used += 1
        num_bytes += len(text.encode("utf-8")) + 1  # + the separator
    return stream, used, num_bytes


def _batches(rows: list[list[int]], batch_size: int, pad_id: int):
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(chunk):  # a loop over windows, not tokens
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        yield ids, mask


@torch.no_grad()
def score_causal(model, stream: list[int], block_size: int, batch_size: int, pad_id: int) -> tuple[float, int]:
    """(summed NLL in nats, tokens predicted) of `stream[1:]` given its prefix, window by window."""
    windows = [stream[i : i + block_size + 1] for i in range(0, len(stream) - 1, block_size)]
    total, count = 0.0, 0
    device = getattr(model, "device", "cpu")
    for ids, mask in _batches(windows, batch_size, pad_id):
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits  # (B, T, V)
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
        total += F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum").item()
        count += int((labels != IGNORE_INDEX).sum())
    return total, count


@torch.no_grad()
def score_masked(
    model, stream: list[int], tokenizer, block_size: int, batch_size: int, mlm_probability: float, seed: int
) -> tuple[float, int, int]:
    """(summed NLL, masked tokens, correctly predicted masked tokens) over blocks of `stream`."""
    masker = DataCollatorForMaskedLM(tokenizer, mlm_probability=mlm_probability, seed=seed)
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    total, count, correct = 0.0, 0, 0
    for start in range(0, len(blocks), batch_size):
        batch = masker([{"input_ids": block} for block in blocks[start : start + batch_size]])
        batch = {key: value.to(getattr(model, "device", "cpu")) for key, value in batch.items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits  # (B, T, V): no labels given, so dense
        selected = labels != IGNORE_INDEX
        logits, targets = logits[selected].float(), labels[selected]
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        count += int(targets.numel())
        correct += int((logits.argmax(-1) == targets).sum())
    return total, count, correct


def evaluate_checkpoint(
    path: str,
    documents: Sequence[str],
    args: IntrinsicArguments,
    block_size: int,
    revision: str | None = None,
    tokenizer=None,
) -> dict:
    """One row of metrics for one checkpoint (see the module doc for what is scored)."""
    config = AutoConfig.from_pretrained(path, revision=revision)
    masked = is_masked_lm(config)
    if tokenizer is None:
        tokenizer = _tokenizer_for(path, revision)
    auto_class = AutoModelForMaskedLM if masked else AutoModelForCausalLM
    with quiet_loading():
        model = auto_class.from_pretrained(path, revision=revision).eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    stream, used, num_bytes = token_stream(documents, tokenizer, args.max_eval_tokens)
    step, tokens = training_progress(path) if revision is None else _hub_progress(path, revision)
    row = {"checkpoint": path, "revision": revision, "step": step, "tokens_seen": tokens,
           "objective": "mlm" if masked else "clm", "eval_documents": used, "eval_tokens": len(stream) - 1, "eval_bytes": num_bytes}  # fmt: skip
    if masked:
        nll, count, correct = score_masked(
            model, stream, tokenizer, block_size, args.batch_size, args.mlm_probability, args.seed
        )
        row.update(
            mlm_loss=nll / max(count, 1), mlm_accuracy=correct / max(count, 1), mlm_probability=args.mlm_probability
        )
    else:
        nll, count = score_causal(model, stream, block_size, args.batch_size, tokenizer.pad_token_id)
        row.update(
            clm_loss=nll / count, perplexity=perplexity(nll, count), bits_per_byte=bits_per_byte(nll, num_bytes)
        )
    return row


def _hub_progress(repo: str, revision: str) -> tuple[int | None, int | None]:
    """(step, tokens seen) of a Hub revision that carries its trainer_state.json, else (None, None)."""
    from huggingface_hub import hf_hub_download

    try:
        return training_progress(os.path.dirname(hf_hub_download(repo, "trainer_state.json", revision=revision)))
    except Exception:  # a revision without the file (or offline): no x position, not an error
        return None, None


def _tokenizer_for(path: str, revision: str | None):
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "tokenizer.json")):
        parent = os.path.dirname(path.rstrip("/"))  # a checkpoint without tokenizer files: its run's tokenizer
        for candidate in (parent, os.path.join(parent, "tokenizer")):
            if os.path.isfile(os.path.join(candidate, "tokenizer.json")):
                return load_tokenizer(candidate)
    return load_tokenizer(path, revision=revision)


def evaluate_checkpoints(args: IntrinsicArguments, documents: Sequence[str], block_size: int) -> list[dict]:
    """Rows for every checkpoint that `args` names, windows of `block_size` tokens, with a `run` column (the folder
    or Hub id given)."""
    tokenizer = load_tokenizer(args.tokenizer_name_or_path) if args.tokenizer_name_or_path else None
    rows = []
    for name in args.model_name_or_path:
        targets = (
            [(name, r) for r in args.revisions] if args.revisions else [(c, None) for c in find_checkpoints(name)]
        )
        for path, revision in targets:
            row = evaluate_checkpoint(path, documents, args, block_size, revision, tokenizer)
            rows.append({"run": os.path.basename(name.rstrip("/")) or name, **row})
            logger.info(
                "%s: %s",
                path if revision is None else f"{path}@{revision}",
                {k: row.get(k) for k in METRICS if k in row},
            )
    return rows


def held_out_documents(data_args, seed: int, limit: int = 100_000) -> list[str]:
    """The held-out documents of `data_args` (its validation split), or all its documents when nothing is held out
    (`validation_fraction: 0` and no validation files: score a held-out file given as `data_files`)."""
    train, validation = load_documents(data_args, seed=seed)
    documents = validation if validation is not None else train
    if not hasattr(documents, "__len__"):  # streamed
        documents = documents.take(limit)
    return [row[data_args.text_column] for row in documents]


def run_intrinsic(args: IntrinsicArguments, data_args) -> tuple[list[dict], list[str]]:
    """Score every checkpoint and write `intrinsic.csv`, `intrinsic.json` and `intrinsic.png` (each metric against
    tokens seen, one line per run) under `args.output_dir`; returns the rows and the written paths.

    With no data given (no data_files, dataset_name or validation_files), the held-out split of the first run's
    `resolved_config.yaml` is used, with the run's seed: the documents that run held out from its training."""
    seed = args.seed
    if not (data_args.data_files or data_args.dataset_name or data_args.validation_files):
        resolved = (
            run_data_arguments(args.model_name_or_path[0]) if os.path.isdir(args.model_name_or_path[0]) else None
        )
        if resolved is not None:
            known = {f.name for f in dataclasses.fields(DataArguments)}
            data_args = DataArguments(**{k: v for k, v in resolved.items() if k in known})
            seed = resolved.get("seed", seed)
            logger.info("Scoring the held-out split of %s (seed %d).", args.model_name_or_path[0], seed)
    rows = evaluate_checkpoints(args, held_out_documents(data_args, seed), data_args.block_size)
    paths = write_rows(rows, os.path.join(args.output_dir, "intrinsic"))
    x = next((key for key in ("tokens_seen", "step") if all(row.get(key) is not None for row in rows)), None)
    if x is None:  # Hub revisions without a trainer state: in the order given
        for position, row in enumerate(rows):
            row["order"] = position
        x = "order"
    plot = plot_curves(rows, x, METRICS, "run", os.path.join(args.output_dir, "intrinsic.png"), "held-out evaluation")
    return rows, paths + ([plot] if plot else [])
