"""Intrinsic evaluation of checkpoints on held-out text: CLM perplexity and bits per byte, MLM loss and accuracy.

What a checkpoint is scored on follows how it was trained (`is_masked_lm`): a causal checkpoint gets the causal-LM
loss, perplexity and bits per byte; a masked one (MLM, or CLM→MLM after the switch) the masked-LM loss and accuracy
at `mlm_probability`. A bidirectional model has no next-token distribution, and a causal one no masked-token one.

What is scored, and how:

- A run's own held-out text (no data given): its `resolved_config.yaml` is read back (`load_run_arguments`) and the
  evaluation blocks it built are rebuilt by the same code as in training (`held_out_blocks`: classic documents,
  `data_sources` mixtures, `prepared_dataset_path`, streamed runs with `validation_files`), with the run's seed,
  block size and tokenizer. Each block is scored on its own, as the Trainer's evaluation does: CLM predicts token t
  from the tokens before it inside the block (block_size - 1 predictions a block), the loss is the mean over the
  predicted tokens, so `clm_loss` is the run's own final `eval_loss` of a CLM run. Bits per byte divide the total
  loss by the UTF-8 bytes of the predicted tokens, counted token by token (`token_byte_lengths`: a byte-level BPE
  token is exactly its bytes, a special token such as the EOS separator counts one byte, standing for a newline):
  the bytes `tokenizer.decode` gives, without its U+FFFD where a block cuts a multi-byte character. A run with
  `document_attention: isolated` is scored as it trained: every document of a block alone (its first token is
  context only, no token sees another document), so `clm_loss` is still its final `eval_loss`.
- Held-out documents given on the command line (`data_files`, `dataset_name` or `validation_files`): one token
  stream (EOS after each document, and one EOS before the first, as the context of the first token), cut into
  windows of `block_size` + 1 tokens that overlap by one, so every token is predicted exactly once. Bits per byte
  divide the total loss by the UTF-8 bytes of those documents plus one per document for its EOS. The block size is
  `IntrinsicArguments.block_size` when given, else the run's (when the checkpoint belongs to a run), else
  `DataArguments.block_size`. (Mixed or prepared data given on the command line is scored as blocks, as above.)
- MLM: the same blocks (or the stream cut into blocks of `block_size`), masked by `DataCollatorForMaskedLM` with a
  fixed seed. Masks are keyed by the tokens, so every checkpoint that shares a tokenizer is scored on the same
  masked positions.

Checkpoints: a checkpoint folder, a run folder (each `checkpoint-*` in step order, then the final model), or a Hub
id with a list of revisions. Tokens seen come from each checkpoint's `trainer_state.json`.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from hf_pretrain.arguments import DataArguments
from hf_pretrain.checkpoint_state import checkpoint_step, training_progress
from hf_pretrain.collators import IGNORE_INDEX, DataCollatorForCausalLM, DataCollatorForMaskedLM
from hf_pretrain.data.tokenizer import load_tokenizer
from hf_pretrain.evaluation.encoders import is_masked_lm, quiet_loading
from hf_pretrain.evaluation.heldout import (
    HeldOut,
    data_given,
    given_held_out,
    held_out_documents,
    run_arguments,
    run_held_out,
    token_byte_lengths,
    token_stream,
    tokenizer_for,
)
from hf_pretrain.evaluation.metrics import bits_per_byte, perplexity
from hf_pretrain.evaluation.reporting import plot_curves, write_rows
from hf_pretrain.training.document_mask import isolate_for_model

logger = logging.getLogger(__name__)

METRICS = ("perplexity", "bits_per_byte", "clm_loss", "mlm_loss", "mlm_accuracy")


@dataclass
class IntrinsicArguments:
    """Which checkpoints to score, and how. The held-out text comes from `DataArguments` (the recipe's second
    dataclass, `EvaluationDataArguments`), or from the run's own `resolved_config.yaml` when no data is given."""

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
    block_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per window of held-out documents given as data. Unset: the run's block size (from its "
            "resolved_config.yaml), else 512. A run's own held-out blocks are always scored at the run's block size."
        },
    )
    mlm_probability: float = field(default=0.3, metadata={"help": "Masking rate of the MLM evaluation."})
    batch_size: int = field(default=16, metadata={"help": "Windows per forward pass."})
    max_eval_tokens: int | None = field(
        default=None,
        metadata={"help": "Score whole held-out documents (a run's own: whole blocks) until about this many tokens."},
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the MLM masks and of the split of data given (a run's own split: the run's seed)."},
    )
    output_dir: str = field(default="outputs/evaluate", metadata={"help": "Where intrinsic.csv/.json/.png go."})

    def __post_init__(self):
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")
        if self.block_size is not None and self.block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {self.block_size}.")
        if self.max_eval_tokens is not None and self.max_eval_tokens < 1:
            raise ValueError(f"max_eval_tokens must be positive, got {self.max_eval_tokens}.")
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path: give at least one checkpoint, run folder or Hub id.")
        if self.revisions and len(self.model_name_or_path) != 1:
            raise ValueError("revisions apply to a single Hub id: give exactly one model_name_or_path.")


@dataclass
class EvaluationDataArguments(DataArguments):
    """`DataArguments` for evaluation: the block size is `IntrinsicArguments.block_size` (so that the recipe can tell
    a block size given on the command line from the default, which becomes the run's), not a field of its own."""

    block_size: int = field(default=512, init=False, metadata={"help": "Set by IntrinsicArguments.block_size."})


def find_checkpoints(path: str) -> list[str]:
    """A run folder's checkpoints in step order, then its final model (instead of a checkpoint of the same step); a
    checkpoint folder alone; a Hub id as is."""
    if not os.path.isdir(path):
        return [path]
    checkpoints = sorted(glob.glob(os.path.join(path, "checkpoint-*")), key=checkpoint_step)
    if os.path.isfile(os.path.join(path, "config.json")):
        final_step = training_progress(path)[0]
        # The last checkpoint usually holds the final weights too: score them once, as the final model.
        checkpoints = [c for c in checkpoints if checkpoint_step(c) != final_step] + [path]
    if not checkpoints:
        raise ValueError(f"model_name_or_path: {path!r} holds neither a model (config.json) nor checkpoint-* folders.")
    return checkpoints


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


def _predicted_tokens(blocks, document_lengths) -> list[np.ndarray]:
    """The tokens causal LM predicts in each block: all but the first (of every document, when isolated)."""
    if document_lengths is None:
        return [np.asarray(block[1:], dtype=np.int64) for block in blocks]
    out = []
    for block, pieces in zip(blocks, document_lengths):
        first = np.zeros(len(block), dtype=bool)
        first[np.cumsum(pieces) - np.asarray(pieces)] = True  # (T,) each document's first token: context only
        out.append(np.asarray(block, dtype=np.int64)[~first])
    return out


@torch.no_grad()
def score_causal_blocks(
    model, blocks: Sequence[Sequence[int]], batch_size: int, pad_id: int, document_lengths=None, tokenizer=None
) -> tuple[float, int]:
    """(summed NLL in nats, tokens predicted) of blocks scored each on its own, as the Trainer's evaluation does:
    token t of a block is predicted from tokens < t of the same block (the first token of a block is context only).
    With `document_lengths` (the blocks' document pieces, document_attention: isolated) each document is scored
    alone: a document's first token is context only, and no token sees another document."""
    if document_lengths is not None:
        return _score_causal_documents(model, blocks, document_lengths, batch_size, tokenizer)
    total, count = 0.0, 0
    device = getattr(model, "device", "cpu")
    for ids, mask in _batches([list(block) for block in blocks], batch_size, pad_id):
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T - 1, V)
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
        total += F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum").item()
        count += int((labels != IGNORE_INDEX).sum())
    return total, count


def _score_causal_documents(model, blocks, document_lengths, batch_size: int, tokenizer) -> tuple[float, int]:
    collator = DataCollatorForCausalLM(tokenizer, attention_on_device=True)  # labels -100 at document starts
    total, count = 0.0, 0
    device = getattr(model, "device", "cpu")
    for start in range(0, len(blocks), batch_size):
        features = [
            {"input_ids": list(block), "document_lengths": list(pieces)}
            for block, pieces in zip(blocks[start : start + batch_size], document_lengths[start : start + batch_size])
        ]
        batch = {key: value.to(device) for key, value in collator(features).items()}
        labels = batch.pop("labels")
        logits = model(**isolate_for_model(batch, model, causal=True)).logits[:, :-1]  # (B, T - 1, V)
        targets = labels[:, 1:]
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        count += int((targets != IGNORE_INDEX).sum())
    return total, count


@torch.no_grad()
def score_masked_blocks(
    model,
    blocks: Sequence[Sequence[int]],
    tokenizer,
    batch_size: int,
    mlm_probability: float,
    seed: int,
    document_lengths=None,
) -> tuple[float, int, int]:
    """(summed NLL, masked tokens, correctly predicted masked tokens) over `blocks`, masked with keyed masks; with
    `document_lengths` every document attends only to itself (document_attention: isolated)."""
    isolated = document_lengths is not None
    masker = DataCollatorForMaskedLM(
        tokenizer, mlm_probability=mlm_probability, seed=seed, attention_on_device=isolated
    )
    total, count, correct = 0.0, 0, 0
    for start in range(0, len(blocks), batch_size):
        features = [{"input_ids": list(block)} for block in blocks[start : start + batch_size]]
        if isolated:
            for feature, pieces in zip(features, document_lengths[start : start + batch_size]):
                feature["document_lengths"] = list(pieces)
        batch = masker(features)
        batch = {key: value.to(getattr(model, "device", "cpu")) for key, value in batch.items()}
        labels = batch.pop("labels")
        if isolated:
            batch = isolate_for_model(batch, model, causal=False)
        logits = model(**batch).logits  # (B, T, V): no labels given, so dense
        selected = labels != IGNORE_INDEX
        logits, targets = logits[selected].float(), labels[selected]
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        count += int(targets.numel())
        correct += int((logits.argmax(-1) == targets).sum())
    return total, count, correct


def score_masked(
    model, stream: list[int], tokenizer, block_size: int, batch_size: int, mlm_probability: float, seed: int
) -> tuple[float, int, int]:
    """(summed NLL, masked tokens, correctly predicted masked tokens) over blocks of `stream`."""
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    return score_masked_blocks(model, blocks, tokenizer, batch_size, mlm_probability, seed)


def _model_and_progress(path: str, revision: str | None):
    config = AutoConfig.from_pretrained(path, revision=revision)
    masked = is_masked_lm(config)
    auto_class = AutoModelForMaskedLM if masked else AutoModelForCausalLM
    with quiet_loading():
        model = auto_class.from_pretrained(path, revision=revision).eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    step, tokens = training_progress(path) if revision is None else _hub_progress(path, revision)
    return model, masked, step, tokens


def score_held_out(
    path: str, held_out: HeldOut, args: IntrinsicArguments, revision: str | None = None, tokenizer=None
) -> dict:
    """One row of metrics for one checkpoint on `held_out` (see the module doc for what is scored)."""
    if tokenizer is None:
        tokenizer = tokenizer_for(path, revision)
    model, masked, step, tokens = _model_and_progress(path, revision)
    row = {"checkpoint": path, "revision": revision, "step": step, "tokens_seen": tokens,
           "objective": "mlm" if masked else "clm", "heldout": held_out.kind, "block_size": held_out.block_size}  # fmt: skip
    if held_out.blocks is not None:
        blocks = held_out.blocks
        predicted = np.concatenate(_predicted_tokens(blocks, held_out.document_lengths))
        row.update(eval_documents=None, eval_blocks=len(blocks), eval_tokens=sum(map(len, blocks)),
                   eval_bytes=int(token_byte_lengths(tokenizer)[predicted].sum()))  # fmt: skip
    else:
        stream, used, num_bytes = token_stream(held_out.documents, tokenizer, args.max_eval_tokens)
        blocks = [stream[i : i + held_out.block_size] for i in range(0, len(stream), held_out.block_size)]
        row.update(eval_documents=used, eval_blocks=None, eval_tokens=len(stream) - 1, eval_bytes=num_bytes)
    if masked:
        nll, count, correct = score_masked_blocks(
            model, blocks, tokenizer, args.batch_size, args.mlm_probability, args.seed, held_out.document_lengths
        )
        row.update(
            mlm_loss=nll / max(count, 1), mlm_accuracy=correct / max(count, 1), mlm_probability=args.mlm_probability,
            mlm_masked_tokens=count,
        )  # fmt: skip
        return row
    if held_out.blocks is not None:
        nll, count = score_causal_blocks(
            model, blocks, args.batch_size, tokenizer.pad_token_id, held_out.document_lengths, tokenizer
        )
    else:
        nll, count = score_causal(model, stream, held_out.block_size, args.batch_size, tokenizer.pad_token_id)
    row.update(
        clm_loss=nll / count, perplexity=perplexity(nll, count), bits_per_byte=bits_per_byte(nll, row["eval_bytes"]),
        eval_predicted_tokens=count,
    )  # fmt: skip
    return row


def evaluate_checkpoint(
    path: str,
    documents: Sequence[str],
    args: IntrinsicArguments,
    block_size: int,
    revision: str | None = None,
    tokenizer=None,
) -> dict:
    """One row of metrics for one checkpoint on held-out documents, in windows of `block_size` tokens."""
    return score_held_out(path, HeldOut(block_size, documents=documents), args, revision, tokenizer)


def _hub_progress(repo: str, revision: str) -> tuple[int | None, int | None]:
    """(step, tokens seen) of a Hub revision that carries its trainer_state.json, else (None, None)."""
    from huggingface_hub import hf_hub_download

    try:
        return training_progress(os.path.dirname(hf_hub_download(repo, "trainer_state.json", revision=revision)))
    except Exception:  # a revision without the file (or offline): no x position, not an error
        return None, None


def _evaluate_run(name: str, held_out: HeldOut, args: IntrinsicArguments, tokenizer) -> list[dict]:
    """Rows for every checkpoint of `name` (a run folder, a checkpoint, or a Hub id with `args.revisions`)."""
    targets = [(name, r) for r in args.revisions] if args.revisions else [(c, None) for c in find_checkpoints(name)]
    rows = []
    for path, revision in targets:
        row = score_held_out(path, held_out, args, revision, tokenizer)
        rows.append({"run": os.path.basename(name.rstrip("/")) or name, **row})
        logger.info(
            "%s: %s", path if revision is None else f"{path}@{revision}", {k: row.get(k) for k in METRICS if k in row}
        )
    return rows


def evaluate_checkpoints(args: IntrinsicArguments, documents: Sequence[str], block_size: int) -> list[dict]:
    """Rows for every checkpoint that `args` names on the same held-out documents, windows of `block_size` tokens,
    with a `run` column (the folder or Hub id given)."""
    tokenizer = load_tokenizer(args.tokenizer_name_or_path) if args.tokenizer_name_or_path else None
    held_out = HeldOut(block_size, documents=list(documents))
    return [row for name in args.model_name_or_path for row in _evaluate_run(name, held_out, args, tokenizer)]


def run_intrinsic(args: IntrinsicArguments, data_args) -> tuple[list[dict], list[str]]:
    """Score every checkpoint and write `intrinsic.csv`, `intrinsic.json` and `intrinsic.png` (each metric against
    tokens seen, one line per run) under `args.output_dir`; returns the rows and the written paths.

    With no data given (no data_files, dataset_name, validation_files, data_sources or prepared_dataset_path), each
    run is scored on the blocks it held out, rebuilt from its `resolved_config.yaml` (see the module doc); a
    checkpoint that belongs to no run is an error then. With data given, every checkpoint is scored on it, at
    `args.block_size` or else its run's block size."""
    tokenizer = load_tokenizer(args.tokenizer_name_or_path) if args.tokenizer_name_or_path else None
    given = data_given(data_args)
    as_documents = given and not (data_args.data_sources or data_args.prepared_dataset_path)  # files or a dataset
    documents = held_out_documents(data_args, args.seed) if as_documents else None
    rows = []
    for name in args.model_name_or_path:
        if given:
            held_out, run_tok = given_held_out(name, args, data_args, documents, tokenizer)
        elif run_arguments(name) is None:
            raise ValueError(
                f"model_name_or_path: {name!r} is not a run folder (no resolved_config.yaml here or in its parent), "
                "so it has no held-out split of its own: give held-out text, e.g. --data_files heldout.txt "
                "--validation_fraction 0."
            )
        else:
            held_out, run_tok = run_held_out(name, args, tokenizer)
        logger.info("Scoring %s on %s.", name, held_out.source)
        rows += _evaluate_run(name, held_out, args, run_tok)
    paths = write_rows(rows, os.path.join(args.output_dir, "intrinsic"))
    x = next((key for key in ("tokens_seen", "step") if all(row.get(key) is not None for row in rows)), None)
    if x is None:  # Hub revisions without a trainer state: in the order given
        for position, row in enumerate(rows):
            row["order"] = position
        x = "order"
    plot = plot_curves(rows, x, METRICS, "run", os.path.join(args.output_dir, "intrinsic.png"), "held-out evaluation")
    return rows, paths + ([plot] if plot else [])
