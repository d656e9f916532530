"""Prepared data on disk: what `recipes/prepare_data.py` writes and training reads (`prepared_dataset_path`).

A prepared folder is a set of shards plus a small index, so that preparation can write it from many tasks and
training reads it as it lies, without a conversion step:

    train/<name>/, validation/<name>/   each shard a `Dataset.save_to_disk` folder: input_ids (block_size int32),
                                        document_lengths (int32, summing to block_size), source_id (int16)
    index.json                          {"format": "hf_pretrain.shards/1", "block_size", "train_shards",
                                         "train_rows", "validation_shards", "validation_rows", "order_file"}
    train_order.npy                     int64 (N,): global row indices into the concatenated train shards, in
                                        training order (the weighted mixture; no block repeats)
    tokenizer/, stats.json              stats.json is written last: a folder without it is not complete

Training reads the train split as one `datasets.Dataset` in training order whose memory does not grow with the
corpus: the shards are memory-mapped Arrow files, and the order is the dataset's indices mapping, built as a
zero-copy Arrow view of the memory-mapped .npy (`OrderTable`). Nothing holds a table of N rows in RAM; pickling
(DataLoader workers under spawn) sends the path, not the rows. A resumed run skips trained blocks by position: the
Trainer's `skip_first_batches` skips sampler indices, so skipped blocks are never read.

A folder of the earlier layout (one `save_to_disk` DatasetDict) is still read as it is.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk
from datasets.table import InMemoryTable

STATS_FILE = "stats.json"
INDEX_FILE = "index.json"
ORDER_FILE = "train_order.npy"
FORMAT = "hf_pretrain.shards/1"
_CHUNK = 1 << 22  # rows of the order validated and copied at a time: flat memory for any corpus


def _atomic_write(path: str, write) -> None:
    """Write through a temporary file renamed into place, so a reader never sees half a file."""
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _check_shards(output_dir: str, split: str, shards, rows) -> tuple[list[str], list[int]]:
    shards, rows = [str(s) for s in shards], [int(r) for r in rows]
    if len(shards) != len(rows):
        raise ValueError(f"{split}_shards has {len(shards)} entries but {split}_rows has {len(rows)}.")
    if len(set(shards)) != len(shards):
        raise ValueError(f"{split}_shards lists a shard twice: {shards}.")
    for shard, count in zip(shards, rows):
        if os.path.isabs(shard) or ".." in shard.split(os.sep):
            raise ValueError(f"{split} shard {shard!r} must be a path relative to {output_dir!r}, inside it.")
        if not os.path.isdir(os.path.join(output_dir, shard)):
            raise ValueError(f"{split} shard {os.path.join(output_dir, shard)!r} does not exist: write it first.")
        if count < 0:
            raise ValueError(f"{split}_rows of {shard!r} is {count}, below 0.")
    return shards, rows


def write_index(
    output_dir: str, train_shards, train_rows, order, validation_shards, validation_rows, block_size: int
) -> None:
    """Write `train_order.npy` then `index.json` (each atomically), after checking that `order` indexes the
    concatenated train shards with no repeats (the mixture stops before any block repeats) and every shard exists.
    Write stats.json after this: it marks the folder complete."""
    if int(block_size) <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}.")
    train_shards, train_rows = _check_shards(output_dir, "train", train_shards, train_rows)
    validation_shards, validation_rows = _check_shards(output_dir, "validation", validation_shards, validation_rows)
    order = np.asarray(order)
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise ValueError(f"order must be a 1-D integer array, got shape {order.shape} of {order.dtype}.")
    total = sum(train_rows)
    if len(order) > total:
        raise ValueError(f"order has {len(order)} rows but the train shards hold {total}: blocks would repeat.")
    seen = np.zeros(total, dtype=bool)  # 1 byte per block, at preparation time only
    for start in range(0, len(order), _CHUNK):
        chunk = order[start : start + _CHUNK].astype(np.int64)
        if len(chunk) and (chunk.min() < 0 or chunk.max() >= total):
            raise ValueError(f"order holds indices outside [0, {total}) near position {start}.")
        if seen[chunk].any() or len(np.unique(chunk)) != len(chunk):
            raise ValueError(f"order repeats a block near position {start}: the mixture must not repeat blocks.")
        seen[chunk] = True

    def save_order(path: str) -> None:
        with open(path, "wb") as handle:  # np.save on a path would append .npy to the temporary name
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(len(order),))
            for start in range(0, len(order), _CHUNK):
                out[start : start + _CHUNK] = order[start : start + _CHUNK]
            out.flush()
            del out
            handle.flush()

    index = {
        "format": FORMAT,
        "block_size": int(block_size),
        "train_shards": train_shards,
        "train_rows": train_rows,
        "validation_shards": validation_shards,
        "validation_rows": validation_rows,
        "order_file": ORDER_FILE,
    }

    def save_index(path: str) -> None:
        with open(path, "w") as handle:
            json.dump(index, handle, indent=1)

    os.makedirs(output_dir, exist_ok=True)
    _atomic_write(os.path.join(output_dir, ORDER_FILE), save_order)
    _atomic_write(os.path.join(output_dir, INDEX_FILE), save_index)


class OrderTable(InMemoryTable):
    """The `indices` table of the train split: a zero-copy uint64 Arrow view of the memory-mapped order file.

    Pages of the file are read only when a block is asked for, and pickling sends the path (an `InMemoryTable`
    would send every row). Transforms (slice, ...) return plain in-memory tables, correct but copied."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        order = np.load(self.path, mmap_mode="r")  # int64, validated non-negative by write_index
        if order.ndim != 1 or order.dtype != np.int64:
            raise ValueError(f"{self.path!r} must hold a 1-D int64 array, got {order.shape} of {order.dtype}.")
        view = order.view(np.uint64)  # datasets requires unsigned indices; same bytes, no copy
        array = pa.Array.from_buffers(pa.uint64(), len(view), [None, pa.py_buffer(view)])
        super().__init__(pa.table({"indices": array}))

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        OrderTable.__init__(self, state["path"])


def _read_index(path: str) -> dict:
    index_path = os.path.join(path, INDEX_FILE)
    with open(index_path) as handle:
        index = json.load(handle)
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_path!r} has format {index.get('format')!r}, not {FORMAT!r}: prepare it again.")
    for key in ("block_size", "train_shards", "train_rows", "validation_shards", "validation_rows", "order_file"):
        if key not in index:
            raise ValueError(f"{index_path!r} has no {key!r}: prepare it again with recipes/prepare_data.py.")
    return index


def _load_split(path: str, shards: list[str], rows: list[int], block_size: int, split: str) -> Dataset:
    """The shards of a split concatenated (memory-mapped), each checked against the index."""
    if len(shards) != len(rows):
        raise ValueError(f"{os.path.join(path, INDEX_FILE)!r}: {len(shards)} {split}_shards but {len(rows)} rows.")
    datasets = []
    for shard, count in zip(shards, rows):
        folder = os.path.join(path, shard)
        if not os.path.isdir(folder):
            raise ValueError(
                f"{split} shard {folder!r} is missing: prepare_dataset_path is incomplete, prepare again."
            )
        dataset = load_from_disk(folder)
        if len(dataset) != count:
            raise ValueError(
                f"{split} shard {folder!r} has {len(dataset)} rows, index.json says {count}: prepare again."
            )
        if count and len(dataset[0]["input_ids"]) != block_size:  # one row per shard: cheap, catches a mixed folder
            raise ValueError(
                f"{split} shard {folder!r} holds blocks of {len(dataset[0]['input_ids'])}, index.json says {block_size}."
            )
        datasets.append(dataset)
    return concatenate_datasets(datasets) if len(datasets) > 1 else datasets[0]


def load_shards(path: str, block_size: int | None = None) -> DatasetDict:
    """The sharded train split in training order (+ validation when it has shards); see the module docstring."""
    index = _read_index(path)
    if block_size is not None and index["block_size"] != block_size:
        raise ValueError(
            f"{os.path.join(path, INDEX_FILE)!r} has block_size {index['block_size']}, stats.json {block_size}."
        )
    if not index["train_shards"]:
        raise ValueError(f"{os.path.join(path, INDEX_FILE)!r} lists no train shards: prepare it again.")
    train = _load_split(path, index["train_shards"], index["train_rows"], index["block_size"], "train")
    order_path = os.path.join(path, index["order_file"])
    if not os.path.isfile(order_path):
        raise ValueError(f"The training order {order_path!r} is missing: prepare {path!r} again.")
    order = OrderTable(order_path)
    if order.num_rows > len(train):
        raise ValueError(f"{order_path!r} has {order.num_rows} rows but the train shards hold {len(train)}.")
    with open(os.path.join(path, INDEX_FILE), "rb") as handle:  # a fingerprint without hashing N rows
        fingerprint = hashlib.sha256(handle.read() + str(os.stat(order_path).st_mtime_ns).encode()).hexdigest()[:16]
    splits = DatasetDict(
        train=Dataset(train.data, info=train.info, split="train", indices_table=order, fingerprint=fingerprint)
    )
    if index["validation_shards"]:
        splits["validation"] = _load_split(
            path, index["validation_shards"], index["validation_rows"], index["block_size"], "validation"
        )
    return splits


def load_prepared(path: str) -> tuple[DatasetDict, dict]:
    """A prepared dataset (train [+ validation]) and its stats; errors name what is missing."""
    stats_path = os.path.join(path, STATS_FILE)
    if not os.path.isfile(stats_path):
        raise ValueError(
            f"prepared_dataset_path={path!r} has no {STATS_FILE}: prepare it with recipes/prepare_data.py."
        )
    with open(stats_path) as handle:
        stats = json.load(handle)
    if os.path.isfile(os.path.join(path, INDEX_FILE)):
        return load_shards(path, stats.get("block_size")), stats
    if not os.path.isfile(os.path.join(path, "dataset_dict.json")):  # neither layout
        raise ValueError(f"prepared_dataset_path={path!r} has no {INDEX_FILE}: prepare it again.")
    splits = load_from_disk(path)  # the earlier layout: one save_to_disk DatasetDict
    if not isinstance(splits, DatasetDict) or "train" not in splits:
        raise ValueError(f"prepared_dataset_path={path!r} holds no 'train' split.")
    return splits, stats
