"""Tokenize documents and pack them into fixed-length blocks, an EOS after every document.

Unlike the `group_texts` of transformers' examples, which drops a remainder in every 1,000-row map batch, the
whole token stream is concatenated (an Arrow `list_flatten`, no Python loop) and cut once: only the final partial
block is dropped. The streamed variant carries the remainder from one document to the next for the same result.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, IterableDataset
from datasets.table import InMemoryTable

logger = logging.getLogger(__name__)


def tokenize_documents(
    documents: Dataset | IterableDataset, tokenizer, text_column: str = "text", num_proc: int | None = None
) -> Dataset | IterableDataset:
    """Each document becomes its token ids followed by EOS (the document separator of packed blocks)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos_token; packing needs it to separate documents.")

    def tokenize(batch):
        ids = tokenizer(batch[text_column], add_special_tokens=False, return_attention_mask=False, verbose=False)
        return {"input_ids": [doc + [eos] for doc in ids["input_ids"]]}

    kwargs = {"batched": True, "remove_columns": documents.column_names}
    if isinstance(documents, Dataset):
        kwargs.update(num_proc=num_proc, desc="Tokenizing")
    return documents.map(tokenize, **kwargs)


def pack_blocks(tokenized: Dataset, block_size: int) -> Dataset:
    """Concatenate every document's tokens and cut the stream into (num_blocks, block_size) rows."""
    if tokenized._indices is not None:  # a select/shuffle view: materialise so the Arrow table is the view
        tokenized = tokenized.flatten_indices()
    tokens = pc.list_flatten(tokenized.data.column("input_ids"))  # (N,) chunked, zero-copy
    num_blocks = len(tokens) // block_size
    if num_blocks == 0:
        raise ValueError(
            f"The corpus has {len(tokens)} tokens, fewer than one block of block_size={block_size}: "
            "lower block_size or add data."
        )
    stream = pa.concat_arrays(tokens.slice(0, num_blocks * block_size).chunks).cast(pa.int32())
    blocks = pa.FixedSizeListArray.from_arrays(stream, block_size)  # (num_blocks, block_size)
    dropped = len(tokens) - num_blocks * block_size
    logger.info(
        "Packed %d tokens into %d blocks of %d; %d tail tokens dropped.", len(tokens), num_blocks, block_size, dropped
    )
    return Dataset(InMemoryTable(pa.table({"input_ids": blocks})))


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
