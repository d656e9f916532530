"""Tokenize documents and pack them into fixed-length blocks, an EOS after every document.

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


def encode_with_eos(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `texts`, each followed by EOS, as one flat int32 array (N,) and the lengths (D,).

    Fast tokenizers go straight to the Rust `encode_batch_fast` (parallel over the batch, no character offsets):
    the `tokenizer(...)` call builds a `BatchEncoding` of Python lists on top of `encode_batch`, which costs about
    as much as the encoding itself.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos_token; packing needs it to separate documents.")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers < 0.20: no _fast
        ids = [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
    else:
        ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    flat = np.insert(flat, np.cumsum(lengths), eos)  # the EOS after each document, one vectorized insert
    return flat, lengths + 1


def _token_lists(flat: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int32()))


def tokenize_documents(
    documents: Dataset | IterableDataset, tokenizer, text_column: str = "text", num_proc: int | None = None
) -> Dataset | IterableDataset:
    """Each document becomes its token ids followed by EOS (the document separator of packed blocks)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos_token; packing needs it to separate documents.")

    if isinstance(documents, IterableDataset):

        def tokenize_lists(batch):
            flat, lengths = encode_with_eos(tokenizer, batch[text_column])
            return {"input_ids": np.split(flat, np.cumsum(lengths)[:-1])}

        return documents.map(tokenize_lists, batched=True, remove_columns=documents.column_names)

    texts = documents.data.column(text_column) if text_column in documents.column_names else None
    if texts is not None and texts.null_count:
        raise ValueError(
            f"{texts.null_count} documents have no text (null) in column {text_column!r}; drop them first."
        )

    def tokenize(table: pa.Table) -> pa.Table:  # Arrow in, Arrow out: no per-token Python objects
        flat, lengths = encode_with_eos(tokenizer, table.column(text_column).to_pylist())
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
