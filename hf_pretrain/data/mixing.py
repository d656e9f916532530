"""Weighted mixing of sources at the token level, with an exact count of what each source contributed.

Every source is packed into its own blocks of `block_size` tokens, so mixing blocks mixes tokens in the same
proportions. Which source supplies block n is a deterministic schedule, not a random draw: stride scheduling,
where source j's m-th block is due at virtual time (m + 1/2) / w_j and blocks are served in order of due time
(ties to the lower source index). After any number of blocks n, every source has supplied w_j · n blocks to within
1/2 + w_j · S/2 blocks for S sources (the due times of the first n blocks end within S/2 of n), in practice about
one block; a random draw is off by ~sqrt(n). The count per source is a closed-form function of n. That makes two
things free:

- per-source accounting during training: tokens seen from each source at global step s are `counts(s · blocks
  per step)`, computed in the main process without any metadata travelling with the batches;
- resume: the schedule restarts at any block index without replaying the ones before.

Due times are integers (`SCALE / w_j` rounded), so ties and counts are exact in any order of computation.

Padding-free rows (`packing: false`) are not of equal length, so mixing rows by count would not mix tokens by
weight. `mix_rows` runs the same stride scheduling in tokens: source j's row is due at (tokens of its rows before
it + half its own) / w_j. Every source's tokens then stay within a row of w_j · tokens at any point, but the count
per source is no longer a closed form of the row index: `tokens_per_source` reads it from the mixture itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from datasets.table import InMemoryTable

logger = logging.getLogger(__name__)

SCALE = 1 << 32  # due-time resolution; keys stay below 2**63 for up to ~2**31 blocks
MAX_BLOCKS = 1 << 31


def normalize_weights(weights: Sequence[float], names: Sequence[str] | None = None) -> np.ndarray:
    """Weights as fractions summing to 1; a weight that is not a positive finite number is an error naming it."""
    names = list(names) if names is not None else [f"source {i}" for i in range(len(weights))]
    if len(weights) == 0:
        raise ValueError("Mixing needs at least one source.")
    values = []
    for name, weight in zip(names, weights):
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"The weight of {name!r} must be a number, got {weight!r}.") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"The weight of {name!r} must be a positive number, got {weight!r}: a source with no weight would "
                "never be read; remove it instead."
            )
        values.append(value)
    array = np.asarray(values, dtype=np.float64)
    return array / array.sum()


class MixingSchedule:
    """Which source supplies each block, for sources mixed by `weights` (normalized here).

    >>> schedule = MixingSchedule([60, 30, 10])
    >>> schedule.sources(0, 10).tolist()
    [0, 1, 0, 0, 1, 2, 0, 0, 1, 0]
    >>> schedule.counts(10).tolist(), schedule.counts(1000).tolist()
    ([6, 3, 1], [600, 300, 100])
    """

    def __init__(self, weights: Sequence[float], names: Sequence[str] | None = None):
        self.weights = normalize_weights(weights, names)
        if self.weights.min() < 1e-6:
            raise ValueError(f"Mixing weights below 1e-6 of the total are not supported, got {self.weights.min()}.")
        self.strides = [round(SCALE / w) for w in self.weights]  # Python ints: exact
        self.offsets = [stride // 2 for stride in self.strides]

    def __len__(self) -> int:
        return len(self.strides)

    def _due_before(self, key: int) -> list[int]:
        """Per source, the number of its blocks due strictly before `key`."""
        return [max(0, -((offset - key) // stride)) for stride, offset in zip(self.strides, self.offsets)]

    def counts(self, n: int) -> np.ndarray:
        """Blocks supplied by each source among the first `n` blocks (S,); sums to n."""
        if not 0 <= n <= MAX_BLOCKS:
            raise ValueError(f"Block index must be in [0, {MAX_BLOCKS}], got {n}.")
        low, high = 0, (n + 1) * max(self.strides) + 1  # the smallest key with more than n blocks due before it
        while low < high:
            middle = (low + high) // 2
            if sum(self._due_before(middle)) > n:
                high = middle
            else:
                low = middle + 1
        key = low - 1  # blocks due before `key` are all in; some due exactly at `key` complete the n
        counts = self._due_before(key)
        missing = n - sum(counts)
        for j, (stride, offset) in enumerate(zip(self.strides, self.offsets)):
            if missing and key >= offset and (key - offset) % stride == 0:
                counts[j] += 1
                missing -= 1
        return np.asarray(counts, dtype=np.int64)

    def sources(self, start: int, stop: int) -> np.ndarray:
        """The source of each block in [start, stop) as an int64 array, vectorized."""
        if stop < start:
            raise ValueError(f"stop={stop} is before start={start}.")
        first, last = self.counts(start), self.counts(stop)
        keys, owners = [], []
        for j, (stride, offset) in enumerate(zip(self.strides, self.offsets)):
            m = np.arange(first[j], last[j], dtype=np.int64)
            keys.append(m * stride + offset)
            owners.append(np.full(len(m), j, dtype=np.int64))
        keys, owners = np.concatenate(keys), np.concatenate(owners)
        return owners[np.lexsort((owners, keys))]  # by due time, then by source index

    def blocks_until_exhausted(self, available: Sequence[int]) -> int:
        """The most blocks the mixture can have without repeating any source's blocks."""
        available = np.asarray(available, dtype=np.int64)
        low, high = 0, min(MAX_BLOCKS, int(available.sum()))
        while low < high:  # the largest n with counts(n) <= available everywhere
            middle = (low + high + 1) // 2
            if (self.counts(middle) <= available).all():
                low = middle
            else:
                high = middle - 1
        return low


def _source_order(rank: np.ndarray, size: int, source: int, seed: int) -> np.ndarray:
    """Row of the `rank`-th block drawn from a source of `size` blocks: a fresh permutation per pass (epoch)."""
    rows = np.empty(len(rank), dtype=np.int64)
    epochs = rank // size
    for epoch in np.unique(epochs):
        permutation = np.random.default_rng([seed, source, int(epoch)]).permutation(size)
        chosen = epochs == epoch
        rows[chosen] = permutation[rank[chosen] % size]
    return rows


def mix_blocks(
    blocks: Sequence[Dataset],
    weights: Sequence[float],
    names: Sequence[str] | None = None,
    num_blocks: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, dict]:
    """Interleave per-source packed blocks by the mixing schedule into one dataset in training order.

    Each source's blocks are shuffled (seeded); the result carries a `source_id` column. Without `num_blocks` the
    mixture stops before any source would repeat; with it, sources that run out start a new (reshuffled) pass,
    which the returned info counts as `passes` and logs as a warning: upsampling is a decision, not an accident.

    Returns the dataset and per-source info: blocks available, blocks used, passes.
    """
    names = list(names) if names is not None else [f"source_{i}" for i in range(len(blocks))]
    schedule = MixingSchedule(weights, names)
    available = [len(b) for b in blocks]
    for name, size in zip(names, available):
        if size == 0:
            raise ValueError(f"Source {name!r} has no block to mix: it is smaller than one block (or empty).")
    if num_blocks is None:
        num_blocks = schedule.blocks_until_exhausted(available)
    order = schedule.sources(0, num_blocks)  # (n,)
    counts = np.bincount(order, minlength=len(blocks))
    rank = np.empty(num_blocks, dtype=np.int64)  # the rank of each block within its source
    starts = np.concatenate([[0], np.cumsum(available)[:-1]])
    rows = np.empty(num_blocks, dtype=np.int64)
    info = {}
    for j, name in enumerate(names):
        chosen = order == j
        rank[chosen] = np.arange(counts[j])
        rows[chosen] = starts[j] + _source_order(rank[chosen], available[j], j, seed)
        passes = math.ceil(counts[j] / available[j]) if counts[j] else 0
        if passes > 1:
            logger.warning(
                "Source %r is repeated: %d blocks used of %d (%d passes).", name, counts[j], available[j], passes
            )
        info[name] = {"blocks_available": available[j], "blocks_used": int(counts[j]), "passes": passes}
    return _gather(blocks, rows, order), info


def _gather(blocks: Sequence[Dataset], rows: np.ndarray, order: np.ndarray) -> Dataset:
    """Rows (n,) of the sources' tables laid end to end, with their `source_id` (n,): the columns all share."""
    columns = set.intersection(*(set(b.column_names) for b in blocks))
    tables = [
        (b.flatten_indices() if b._indices is not None else b).data.table.select(
            [c for c in b.column_names if c in columns]
        )
        for b in blocks
    ]
    table = pa.concat_tables(tables, promote_options="permissive").take(pa.array(rows))
    table = table.append_column("source_id", pa.array(order.astype(np.int16)))
    return Dataset(InMemoryTable(table))


def _row_lengths(rows: Dataset) -> np.ndarray:
    """Tokens of each row (n,): the lengths of its `input_ids`."""
    table = (rows.flatten_indices() if rows._indices is not None else rows).data.table
    return pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)


def mix_rows(
    rows: Sequence[Dataset], weights: Sequence[float], names: Sequence[str] | None = None, seed: int = 0
) -> tuple[Dataset, dict]:
    """Interleave per-source rows of unequal length (padding-free rows) by token weight, in training order.

    Each source's rows are shuffled (seeded, as `mix_blocks` shuffles blocks); a row is due at the virtual time
    (tokens of its source's rows before it + half its own) / w_j, and rows are served by due time (ties to the
    lower source index). The mixture stops when the first source runs out of tokens (at virtual time tokens_j /
    w_j): nothing repeats, the sources not used up keep their other rows out (counted in the info). The result
    carries a `source_id` column; `tokens_per_source` counts what a prefix of it holds.

    Returns the dataset and per-source info: rows and tokens available and used.

    >>> sources = [Dataset.from_dict({"input_ids": [[1] * 6, [1] * 2, [1] * 4]}),
    ...            Dataset.from_dict({"input_ids": [[2] * 3] * 8})]
    >>> mixed, info = mix_rows(sources, [1, 1], ["long", "short"])
    >>> [len(ids) for ids in mixed["input_ids"]], list(mixed["source_id"])  # "long" shuffled to 4, 6, 2
    ([3, 4, 3, 6, 3, 3, 2], [1, 0, 1, 0, 1, 1, 0])
    >>> info["long"]["tokens_used"], info["short"]["tokens_used"]
    (12, 12)
    """
    names = list(names) if names is not None else [f"source_{i}" for i in range(len(rows))]
    fractions = normalize_weights(weights, names)
    keys, owners, picks, sizes = [], [], [], []
    for j, (name, source) in enumerate(zip(names, rows)):
        if len(source) == 0:
            raise ValueError(f"Source {name!r} has no row to mix: it is empty.")
        permutation = _source_order(np.arange(len(source)), len(source), j, seed)  # (R_j,)
        lengths = _row_lengths(source)[permutation]  # (R_j,) in the order the source is read
        before = np.cumsum(lengths) - lengths  # (R_j,) tokens of the source's rows before each
        keys.append((before + lengths / 2) / fractions[j])
        owners.append(np.full(len(source), j, dtype=np.int64))
        picks.append(permutation + sum(len(r) for r in rows[:j]))  # rows of the sources laid end to end
        sizes.append(lengths)
    available = np.array([lengths.sum() for lengths in sizes])  # (S,) tokens per source
    keys, owners, picks, sizes = (np.concatenate(a) for a in (keys, owners, picks, sizes))  # (R,) each
    kept = keys < (available / fractions).min()  # up to the first source's end: its own last row is due before
    order = np.lexsort((owners[kept], keys[kept]))  # by due time, then by source index
    owners, picks, sizes = owners[kept][order], picks[kept][order], sizes[kept][order]
    info = {
        name: {
            "rows_available": len(rows[j]),
            "rows_used": int((owners == j).sum()),
            "tokens_available": int(available[j]),
            "tokens_used": int(sizes[owners == j].sum()),
        }
        for j, name in enumerate(names)
    }
    return _gather(rows, picks, owners), info


def tokens_per_source(mixed: Dataset, rows: int, num_sources: int) -> np.ndarray:
    """Tokens from each source (S,) in the first `rows` rows of a mixture read in order, wrapping around into
    further passes (epochs) of the whole mixture: exact for rows of any length (`mix_rows`), where the closed form
    `MixingSchedule.counts(n) · block_size` holds only for equal blocks.

    >>> mixed = Dataset.from_dict({"input_ids": [[7] * 3, [7] * 5, [7] * 2], "source_id": [1, 0, 1]})
    >>> tokens_per_source(mixed, 2, 2).tolist(), tokens_per_source(mixed, 4, 2).tolist()
    ([5, 3], [5, 8])
    """
    lengths = _row_lengths(mixed)  # (n,)
    sources = np.asarray(mixed["source_id"], dtype=np.int64)  # (n,)
    passes, rest = divmod(rows, len(mixed))
    whole = np.bincount(sources, weights=lengths, minlength=num_sources) if passes else 0
    prefix = np.bincount(sources[:rest], weights=lengths[:rest], minlength=num_sources)
    return (passes * whole + prefix).astype(np.int64)
