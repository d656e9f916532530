"""Which held-out text a checkpoint is scored on, and with which tokenizer.

A run's own held-out blocks (no data given): its resolved_config.yaml is read back (`load_run_arguments`) and the
evaluation blocks rebuilt by the code training used (`held_out_blocks`), with the run's seed, block size and
tokenizer. Held-out text given as data: documents (a token stream, scored in overlapping windows) or, for
`data_sources` / a prepared dataset, the blocks `held_out_blocks` builds, at the given block size or the run's.
"""

from __future__ import annotations

import copy
import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import pre_tokenizers

from hf_pretrain.checkpoint_state import checkpoint_step
from hf_pretrain.data.build import data_path, held_out_blocks
from hf_pretrain.data.sources import load_documents
from hf_pretrain.data.tokenizer import load_tokenizer
from hf_pretrain.resolve import find_resolved_config, load_run_arguments
from hf_pretrain.run_layout import TOKENIZER_SUBDIR

logger = logging.getLogger(__name__)


@dataclass
class HeldOut:
    """The held-out text a checkpoint is scored on: documents (cut into overlapping windows here) or the blocks a
    run built (`blocks`, each scored on its own), and a description of where it comes from for the log."""

    block_size: int
    documents: Sequence[str] | None = None
    blocks: list[list[int]] | None = None
    source: str = "documents given as data"
    kind: str = "documents"  # "documents", or the run's data path (classic, mixed, prepared, streamed)
    document_lengths: list[list[int]] | None = None  # per block, with document_attention: isolated


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


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id decodes to, (vocabulary,): the bytes of a byte-level BPE token (each character of
    its byte-level alphabet is one byte), 1 for a special token (EOS, the document separator, stands for a newline),
    else the bytes of `tokenizer.decode([id])`. Summed over a block, this is the byte length `tokenizer.decode` gives
    the block, except that it stays exact where a block starts or ends inside a multi-byte character."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = set(tokenizer.all_special_ids)
    size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=0) + 1)
    lengths = np.ones(size, dtype=np.int64)
    for token, index in tokenizer.get_vocab().items():
        if index in special:
            continue
        if token and set(token) <= alphabet:
            lengths[index] = len(token)
        else:
            lengths[index] = len(tokenizer.decode([index]).encode("utf-8"))
    return lengths


def tokenizer_for(path: str, revision: str | None):
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "tokenizer.json")):
        parent = os.path.dirname(path.rstrip("/"))  # a checkpoint without tokenizer files: its run's tokenizer
        for candidate in (parent, os.path.join(parent, "tokenizer")):
            if os.path.isfile(os.path.join(candidate, "tokenizer.json")):
                return load_tokenizer(candidate)
    return load_tokenizer(path, revision=revision)


def held_out_documents(data_args, seed: int, limit: int = 100_000) -> list[str]:
    """The held-out documents of `data_args` (its validation split), or all its documents when nothing is held out
    (`validation_fraction: 0` and no validation files: score a held-out file given as `data_files`)."""
    train, validation = load_documents(data_args, seed=seed)
    documents = validation if validation is not None else train
    if not hasattr(documents, "__len__"):  # streamed
        documents = documents.take(limit)
    return [row[data_args.text_column] for row in documents]


def run_arguments(name: str) -> tuple | None:
    """(model, data, training) arguments of the run `name` belongs to (a run folder or one of its checkpoints, with
    the run's resolved_config.yaml), or None for anything else (a Hub id, a bare model folder)."""
    if not os.path.isdir(name):
        return None
    try:
        find_resolved_config(name)
    except ValueError:
        return None
    return load_run_arguments(name)  # raises naming the problem when the file is there but no longer loads


def run_tokenizer(name: str, model_args, data_args):
    """The tokenizer the run of `name` trained with: saved with its model, in its tokenizer/ folder, in its newest
    checkpoint, in its prepared dataset, or the one its arguments name."""
    run_dir = os.path.dirname(find_resolved_config(name))
    checkpoints = sorted(glob.glob(os.path.join(run_dir, "checkpoint-*")), key=checkpoint_step, reverse=True)
    prepared = (
        [os.path.join(data_args.prepared_dataset_path, TOKENIZER_SUBDIR)] if data_args.prepared_dataset_path else []
    )
    for candidate in (name, run_dir, os.path.join(run_dir, TOKENIZER_SUBDIR), *checkpoints, *prepared):
        if os.path.isfile(os.path.join(candidate, "tokenizer.json")):
            return load_tokenizer(candidate)
    named = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if named:
        return load_tokenizer(named)
    raise ValueError(f"The run {run_dir!r} has no saved tokenizer (tokenizer.json): set tokenizer_name_or_path.")


def _first_blocks(blocks: list, block_size: int, max_tokens: int | None) -> list:
    """Whole blocks, until about `max_tokens` tokens (at least one)."""
    return blocks if max_tokens is None else blocks[: max(1, max_tokens // block_size)]


def run_held_out(name: str, args, tokenizer=None) -> tuple[HeldOut, object]:
    """(the held-out blocks the run of `name` built, the tokenizer they are in): rebuilt from its resolved arguments
    by `held_out_blocks`, with the run's seed, block size and tokenizer (or `tokenizer`, when one is given)."""
    model_args, data_args, training_args = load_run_arguments(name)
    config_file = find_resolved_config(name)
    tokenizer = tokenizer or run_tokenizer(name, model_args, data_args)
    kind = data_path(data_args)
    dataset = held_out_blocks(data_args, tokenizer, training_args.seed)
    if dataset is None or not len(dataset):
        raise ValueError(
            f"The run {os.path.dirname(config_file)!r} held nothing out ({kind} data, validation_fraction="
            f"{data_args.validation_fraction}, validation_files={data_args.validation_files}): give held-out text, "
            "e.g. --data_files heldout.txt --validation_fraction 0."
        )
    blocks = _first_blocks(list(dataset["input_ids"]), data_args.block_size, args.max_eval_tokens)
    pieces = _document_lengths(dataset, data_args, len(blocks))
    source = (
        f"the held-out blocks of the run ({kind} data, seed {training_args.seed}, from {config_file}): "
        f"{len(blocks)} of {len(dataset)} blocks of {data_args.block_size} tokens, {sum(map(len, blocks))} tokens, "
        f"documents {'isolated' if pieces is not None else 'sharing attention'} as in training"
    )
    return HeldOut(data_args.block_size, blocks=blocks, source=source, kind=kind, document_lengths=pieces), tokenizer


def _document_lengths(dataset, data_args, count: int) -> list[list[int]] | None:
    """The first `count` blocks' document pieces when `data_args` keeps documents apart (as the run trained)."""
    if data_args.document_attention != "isolated":
        return None
    if "document_lengths" not in dataset.column_names:
        raise ValueError("document_attention: isolated, but the held-out blocks carry no document_lengths.")
    return [list(pieces) for pieces in dataset.select(range(count))["document_lengths"]]


def data_given(data_args) -> bool:
    """Whether held-out text was given as data (else each run's own held-out blocks are scored)."""
    names = ("data_files", "dataset_name", "validation_files", "data_sources", "prepared_dataset_path")
    return any(getattr(data_args, name) for name in names)


def given_held_out(name: str, args, data_args, documents: list[str] | None, tokenizer) -> tuple[HeldOut, object]:
    """(held-out text given as data, the tokenizer to score it with) for `name`: at `args.block_size`, else the block
    size of the run `name` belongs to, else `data_args.block_size`. Documents (files or a dataset) are scored as a
    stream; data_sources or a prepared dataset as the blocks `held_out_blocks` builds from it, split with
    `args.seed`."""
    resolved = None if args.block_size is not None else run_arguments(name)
    block_size = args.block_size or (resolved[1].block_size if resolved is not None else data_args.block_size)
    origin = "given" if args.block_size is not None else ("the run's" if resolved is not None else "default")
    if documents is not None:
        source = f"{len(documents)} held-out documents given as data, windows of {block_size} tokens ({origin})"
        return HeldOut(block_size, documents=documents, source=source), tokenizer
    data_args = copy.copy(data_args)
    data_args.block_size = block_size
    if tokenizer is None:
        tokenizer = run_tokenizer(name, *resolved[:2]) if resolved is not None else tokenizer_for(name, None)
    kind = data_path(data_args)
    dataset = held_out_blocks(data_args, tokenizer, args.seed)
    if dataset is None or not len(dataset):
        raise ValueError(
            f"The {kind} data given holds nothing out (validation_fraction={data_args.validation_fraction}): "
            "set validation_fraction or validation_files."
        )
    blocks = _first_blocks(list(dataset["input_ids"]), block_size, args.max_eval_tokens)
    pieces = _document_lengths(dataset, data_args, len(blocks))
    source = f"{len(blocks)} held-out blocks of {block_size} tokens ({origin}) of the {kind} data given"
    return HeldOut(block_size, blocks=blocks, source=source, kind=kind, document_lengths=pieces), tokenizer
