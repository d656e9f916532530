"""Tokenize documents and pack them into fixed-length blocks, each document framed by its tokenizer's special tokens
(an EOS after every document at least).

Unlike the `group_texts` of transformers' examples, which drops a remainder in every 1,000-row map batch, the
whole token stream is concatenated (an Arrow `list_flatten`, no Python loop) and cut once: only the final partial
block is dropped. The streamed variant carries the remainder from one document to the next for the same result.

Blocks can also keep their document boundaries: `document_lengths` lists the lengths of the pieces of documents
in each block (EOS included, summing to `block_size`), which is what a padding-free collator needs to restart
positions and attention at every document instead of letting documents attend to each other.

Without packing (`pack_documents`, `packing: false`) no document is cut at an arbitrary block edge: each one is
split only where it exceeds `block_size`, and the pieces, in corpus order, fill padding-free rows of at most
`max_tokens` tokens (one row is one batch), every row with its `document_lengths`.
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


def _stream_blocks(tokenized: IterableDataset, block_size: int, document_lengths: bool = False):
    buffer: list[int] = []
    pieces: list[int] = []  # lengths of the document pieces in `buffer`, summing to len(buffer)
    for example in tokenized:
        buffer.extend(example["input_ids"])
        pieces.append(len(example["input_ids"]))
        full = len(buffer) // block_size * block_size
        for start in range(0, full, block_size):
            row = {"input_ids": buffer[start : start + block_size]}
            if document_lengths:  # take pieces up to the block edge, splitting the one that crosses it
                row["document_lengths"], room = [], block_size
                while room:
                    take = min(room, pieces[0])
                    row["document_lengths"].append(take)
                    room -= take
                    pieces[0] -= take
                    if not pieces[0]:
                        pieces.pop(0)
            yield row
        del buffer[:full]


def pack_stream(tokenized: IterableDataset, block_size: int, document_lengths: bool = False) -> IterableDataset:
    """The streamed counterpart of `pack_blocks`: same blocks (and document_lengths), constant memory."""
    return IterableDataset.from_generator(
        _stream_blocks,
        gen_kwargs={"tokenized": tokenized, "block_size": block_size, "document_lengths": document_lengths},
    )


def pack(
    tokenized: Dataset | IterableDataset, block_size: int, document_lengths: bool = False
) -> Dataset | IterableDataset:
    if isinstance(tokenized, IterableDataset):
        return pack_stream(tokenized, block_size, document_lengths)
    return pack_blocks(tokenized, block_size, document_lengths)


MAX_LIST_VALUES = 2**31 - 1  # an Arrow list chunk has int32 offsets: longer columns are split into chunks


def _list_column(values: pa.Array, offsets: np.ndarray) -> pa.ChunkedArray:
    """Rows `values[offsets[i] : offsets[i + 1]]` as a list column; offsets (R + 1,) int64 from 0. Chunked so that
    no chunk holds more than MAX_LIST_VALUES values (the corpus may hold more tokens than int32 offsets reach)."""
    bounds = [0]  # first row of each chunk
    while offsets[-1] - offsets[bounds[-1]] > MAX_LIST_VALUES:
        bounds.append(int(np.searchsorted(offsets, offsets[bounds[-1]] + MAX_LIST_VALUES, side="right")) - 1)
    bounds.append(len(offsets) - 1)
    chunks = []
    for first, last in zip(bounds[:-1], bounds[1:]):
        local = (offsets[first : last + 1] - offsets[first]).astype(np.int32)  # (rows + 1,)
        chunk_values = values.slice(int(offsets[first]), int(local[-1]))
        chunks.append(pa.ListArray.from_arrays(pa.array(local), chunk_values))
    return pa.chunked_array(chunks, type=pa.list_(values.type))


def document_pieces(lengths: np.ndarray, block_size: int) -> np.ndarray:
    """Documents of `lengths` (D,) split into pieces of at most `block_size`, in corpus order (P,): a document
    longer than block_size gives full pieces, then its remainder.

    >>> document_pieces(np.array([3, 1, 9]), 4).tolist()
    [3, 1, 4, 4, 1]
    """
    counts = -(-lengths // block_size)  # (D,) pieces per document, ceil; 0 for an empty document
    pieces = np.full(int(counts.sum()), block_size, dtype=np.int64)  # (P,)
    nonempty = counts > 0
    pieces[np.cumsum(counts)[nonempty] - 1] = lengths[nonempty] - (counts[nonempty] - 1) * block_size  # remainders
    return pieces


def greedy_rows(pieces: np.ndarray, max_tokens: int) -> np.ndarray:
    """The first piece of each row, then P (R + 1,): consecutive pieces (P,), each at most max_tokens, grouped in
    order into rows of at most `max_tokens` tokens, a new row starting when the next piece does not fit.

    Greedy and order-keeping (no bin packing, which would reorder documents): one binary search per row on the
    cumulative lengths, so a Python loop over rows, never over pieces or tokens.

    >>> greedy_rows(np.array([3, 1, 4, 4, 1]), 8).tolist()
    [0, 3, 5]
    """
    ends = np.cumsum(pieces)  # (P,) tokens up to the end of each piece
    starts, used = [0], 0
    while starts[-1] < len(pieces):
        stop = int(np.searchsorted(ends, used + max_tokens, side="right"))  # the pieces that end within the row
        starts.append(stop)
        used = int(ends[stop - 1])
    return np.asarray(starts, dtype=np.int64)


def pack_documents(tokenized: Dataset, block_size: int, max_tokens: int) -> Dataset:
    """Padding-free rows of whole documents: each document (as `tokenize_documents` frames it) cut only where it is
    longer than `block_size`, the pieces grouped in corpus order (`greedy_rows`) into rows of at most `max_tokens`.

    Each row has `input_ids` (its own length, no padding) and `document_lengths` (its pieces, at most block_size
    each, summing to the row's length). Nothing is dropped: the last row may be short; concatenated, the rows are
    the documents in order.

    >>> documents = Dataset.from_dict({"input_ids": [[5, 6, 0], [0], [1, 2, 3, 4, 5, 6, 7, 8, 0]]})
    >>> rows = pack_documents(documents, block_size=4, max_tokens=8)
    >>> list(rows["input_ids"])
    [[5, 6, 0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 0]]
    >>> list(rows["document_lengths"])
    [[3, 1, 4], [4, 1]]
    """
    if isinstance(tokenized, IterableDataset):
        raise ValueError("Padding-free rows (packing: false) are built from map-style documents: set packing: true.")
    if max_tokens < block_size:
        raise ValueError(
            f"max_tokens_per_batch={max_tokens} is below block_size={block_size}: a row must hold the longest piece."
        )
    if tokenized._indices is not None:  # a select/shuffle view: materialise so the Arrow table is the view
        tokenized = tokenized.flatten_indices()
    column = tokenized.data.column("input_ids")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)  # (D,)
    if lengths.sum() == 0:
        raise ValueError(f"The corpus ({len(lengths)} documents) has no token to put in padding-free rows: add data.")
    tokens = pa.concat_arrays(pc.list_flatten(column).chunks).cast(pa.int32())  # (N,)
    pieces = document_pieces(lengths, block_size)  # (P,)
    rows = greedy_rows(pieces, max_tokens)  # (R + 1,)
    piece_offsets = np.concatenate([[0], np.cumsum(pieces)])  # (P + 1,)
    table = pa.table(
        {
            "input_ids": _list_column(tokens, piece_offsets[rows]),
            "document_lengths": _list_column(pa.array(pieces, type=pa.int32()), rows),
        }
    )
    num_rows = len(rows) - 1
    logger.info(
        "Padding-free rows: %d documents in %d pieces of at most %d tokens, %d rows of at most %d tokens, %d tokens "
        "(fill %.3f of rows x max_tokens); nothing dropped.",
        len(lengths), len(pieces), block_size, num_rows, max_tokens, len(tokens),
        len(tokens) / (num_rows * max_tokens),
    )  # fmt: skip
    return Dataset(InMemoryTable(table))
