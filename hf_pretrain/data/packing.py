"""Tokenize documents and pack them into fixed-length blocks, each document framed by its tokenizer's special tokens
(an EOS after every document at least).

Unlike the `group_texts` of transformers' examples, which drops a remainder in every 1,000-row map batch, the
whole token stream is concatenated (an Arrow `list_flatten`, no Python loop) and cut once: only the final partial
block is dropped. The streamed variant carries the remainder from one document to the next for the same result.

Blocks can also keep their document boundaries: `document_lengths` lists the lengths of the pieces of documents
in each block (EOS included, summing to `block_size`), which is what a padding-free collator needs to restart
positions and attention at every document instead of letting documents attend to each other.
"""

from __future__ import annotations

import logging
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, IterableDataset
from datasets.table import InMemoryTable

logger = logging.getLogger(__name__)

TOKENIZE_BATCH_SIZE = 4096  # documents per encode_batch call: fewer thread-pool round trips


def document_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens around each document in a packed stream: (prefix ids, suffix ids).

    The tokenizer's own template for one sequence decides (what `tokenizer(text)` adds): `[CLS] … [SEP]` for
    BERT's WordPiece, `<s> … </s>` for RoBERTa, `<|begin_of_text|> …` for Llama 3, nothing for GPT-2 or a
    tokenizer trained here. The suffix always ends with a document separator: the template's own when it ends in
    eos or [SEP], else the eos token (or [SEP]) is appended, so documents never run into each other.
    """
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if separator is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has neither an eos_token nor a sep_token; packing needs one to separate "
            "documents: add one with tokenizer.add_special_tokens({'eos_token': ...})."
        )
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True)["input_ids"]
    at = next((i for i in range(len(framed) - len(plain) + 1) if framed[i : i + len(plain)] == plain), None)
    prefix, suffix = ([], []) if at is None else (framed[:at], framed[at + len(plain) :])
    if not suffix or suffix[-1] not in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        suffix = [*suffix, separator]
    return list(prefix), list(suffix)


def encode_documents(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `texts`, each in its `document_frame` (at least an EOS after it), as one flat int32 array (N,)
    and the framed lengths (D,).

    Fast tokenizers go straight to the Rust `encode_batch_fast` (parallel over the batch, no character offsets):
    the `tokenizer(...)` call builds a `BatchEncoding` of Python lists on top of `encode_batch`, which costs about
    as much as the encoding itself.
    """
    prefix, suffix = document_frame(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers < 0.20: no _fast
        ids = [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
    else:
        ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    # Lay each document out as prefix + tokens + suffix in one preallocated array: index arithmetic, no loop.
    framed_lengths = lengths + len(prefix) + len(suffix)  # (D,)
    starts = np.cumsum(framed_lengths) - framed_lengths  # (D,) first position of each framed document
    out = np.empty(int(framed_lengths.sum()), dtype=np.int32)
    document = np.repeat(np.arange(len(lengths)), lengths)  # (N,) document of each token
    within = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (N,) offset in its document
    out[starts[document] + len(prefix) + within] = flat
    for i, token in enumerate(prefix):
        out[starts + i] = token
    for i, token in enumerate(suffix):
        out[starts + len(prefix) + lengths + i] = token
    return out, framed_lengths


def _token_lists(flat: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int32()))


def tokenize_documents(
    documents: Dataset | IterableDataset, tokenizer, text_column: str = "text", num_proc: int | None = None
) -> Dataset | IterableDataset:
    """Each document becomes its token ids in its `document_frame` (EOS, or the tokenizer's own template)."""
    document_frame(tokenizer)  # fails now, naming the missing separator, rather than inside a map worker

    if isinstance(documents, IterableDataset):

        def tokenize_lists(batch):
            flat, lengths = encode_documents(tokenizer, batch[text_column])
            return {"input_ids": np.split(flat, np.cumsum(lengths)[:-1])}

        return documents.map(tokenize_lists, batched=True, remove_columns=documents.column_names)

    texts = documents.data.column(text_column) if text_column in documents.column_names else None
    if texts is not None and texts.null_count:
        raise ValueError(
            f"{texts.null_count} documents have no text (null) in column {text_column!r}; drop them first."
        )

    def tokenize(table: pa.Table) -> pa.Table:  # Arrow in, Arrow out: no per-token Python objects
        flat, lengths = encode_documents(tokenizer, table.column(text_column).to_pylist())
        return pa.table({"input_ids": _token_lists(flat, lengths)})

    tokenized = documents.with_format("arrow").map(
        tokenize,
        batched=True,
        batch_size=TOKENIZE_BATCH_SIZE,
        remove_columns=documents.column_names,
        num_proc=num_proc,
        desc="Tokenizing",
    )
    return tokenized.with_format(None)


def block_document_lengths(document_lengths: np.ndarray, block_size: int, num_blocks: int) -> pa.ListArray:
    """The lengths of the document pieces in each of the first `num_blocks` blocks of the concatenated stream.

    A piece ends at a document end or at a block end, whichever comes first; each block's pieces sum to
    `block_size`. Vectorized: one sorted union of the two sets of cut points.
    """
    total = num_blocks * block_size
    ends = np.cumsum(document_lengths)
    cuts = np.union1d(ends[ends < total], np.arange(0, total + 1, block_size, dtype=np.int64))  # sorted, from 0
    pieces = np.diff(cuts)  # (P,)
    first_piece = np.searchsorted(cuts[:-1] // block_size, np.arange(num_blocks + 1))  # (num_blocks + 1,)
    return pa.ListArray.from_arrays(pa.array(first_piece, type=pa.int32()), pa.array(pieces, type=pa.int32()))


def pack_blocks(tokenized: Dataset, block_size: int, document_lengths: bool = False) -> Dataset:
    """Concatenate every document's tokens and cut the stream into (num_blocks, block_size) rows.

    With `document_lengths=True` each block also gets the lengths of its document pieces (see the module
    docstring).
    """
    if tokenized._indices is not None:  # a select/shuffle view: materialise so the Arrow table is the view
        tokenized = tokenized.flatten_indices()
    column = tokenized.data.column("input_ids")
    tokens = pc.list_flatten(column)  # (N,) chunked, zero-copy
    num_blocks = len(tokens) // block_size
    if num_blocks == 0:
        raise ValueError(
            f"The corpus has {len(tokens)} tokens, fewer than one block of block_size={block_size}: "
            "lower block_size or add data."
        )
    stream = pa.concat_arrays(tokens.slice(0, num_blocks * block_size).chunks).cast(pa.int32())
    columns = {"input_ids": pa.FixedSizeListArray.from_arrays(stream, block_size)}  # (num_blocks, block_size)
    if document_lengths:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        columns["document_lengths"] = block_document_lengths(lengths, block_size, num_blocks)
    dropped = len(tokens) - num_blocks * block_size
    logger.info(
        "Packed %d tokens into %d blocks of %d; %d tail tokens dropped.", len(tokens), num_blocks, block_size, dropped
    )
    return Dataset(InMemoryTable(pa.table(columns)))


def _stream_blocks(tokenized: IterableDataset, block_size: int):
    buffer: list[int] = []
    for example in tokenized:
        buffer.extend(example["input_ids"])
        full = len(buffer) // block_size * block_size
        for start in range(0, full, block_size):
            yield {"input_ids": buffer[start : start + block_size]}
        del buffer[:full]


def pack_stream(tokenized: IterableDataset, block_size: int) -> IterableDataset:
    """The streamed counterpart of `pack_blocks`: same blocks, constant memory."""
    return IterableDataset.from_generator(
        _stream_blocks, gen_kwargs={"tokenized": tokenized, "block_size": block_size}
    )


def pack(tokenized: Dataset | IterableDataset, block_size: int) -> Dataset | IterableDataset:
    if isinstance(tokenized, IterableDataset):
        return pack_stream(tokenized, block_size)
    return pack_blocks(tokenized, block_size)
