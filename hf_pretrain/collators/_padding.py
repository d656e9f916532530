"""Rows → flat or right-padded numpy arrays: the one padding implementation every collator uses.

Conversion goes through numpy, not torch: `datasets` hands features over as Python lists, `torch.tensor` on a list
of lists is ~8x slower than numpy for a 64 x 512 batch, and ragged rows are flattened in one pass and scattered
into the padded array with one boolean-mask assignment (no Python loop over tokens). Callers wrap the results with
`torch.from_numpy` (no copy).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import chain

import numpy as np
import torch


def check_pad_to_multiple_of(value, padding_free: bool = False) -> None:
    """`pad_to_multiple_of` must be None or a positive int, and means nothing without padding."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {value!r}.")
    if padding_free:
        raise ValueError("pad_to_multiple_of has no meaning with padding_free=True (nothing is padded).")


def padded_length(max_length: int, pad_to_multiple_of: int | None) -> int:
    """`max_length` rounded up to a multiple of `pad_to_multiple_of` (unchanged when None)."""
    if pad_to_multiple_of:
        return -(-max_length // pad_to_multiple_of) * pad_to_multiple_of
    return max_length


def lengths_of(rows: Sequence) -> np.ndarray:
    """Length of each row, as an int64 array (B,)."""
    return np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))


def _as_1d_array(row) -> np.ndarray:
    array = row.numpy() if isinstance(row, torch.Tensor) else np.asarray(row)
    if array.ndim != 1:
        raise ValueError(f"Each feature's sequence must be 1-dimensional, got shape {tuple(array.shape)}.")
    return array


def _flatten_int32_lists(rows: Sequence, lengths: np.ndarray) -> np.ndarray | None:
    """Python-list rows → flat int32 via `struct.pack`, which reads a list of ints ~30% faster than `np.fromiter`
    iterates it (0.5 vs 0.7 ms for 64 x 568 on one core). None when a value is not an int or beyond int32."""
    try:
        packed = struct.pack(f"{int(lengths.sum())}i", *chain.from_iterable(rows))
    except struct.error:
        return None  # the generic path converts or reports it
    return np.frombuffer(bytearray(packed), dtype=np.intc)  # bytearray: a writable array


def flatten(rows: Sequence, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate rows (lists, tuples, arrays or tensors) into one array (N,) of `dtype`; also return the lengths
    (B,). Raises a ValueError for rows that are not 1-dimensional.

    >>> flat, lengths = flatten([[5, 6, 7], (8,)])
    >>> flat.tolist(), lengths.tolist()
    ([5, 6, 7, 8], [3, 1])
    """
    lengths = lengths_of(rows)
    if not len(rows):
        return np.zeros(0, dtype=dtype), lengths
    if not isinstance(rows[0], list | tuple):
        return np.concatenate([_as_1d_array(r) for r in rows]).astype(dtype, copy=False), lengths
    if np.dtype(dtype) == np.int32:
        flat = _flatten_int32_lists(rows, lengths)
        if flat is not None:
            return flat, lengths
    try:
        return np.fromiter(chain.from_iterable(rows), dtype=dtype, count=int(lengths.sum())), lengths
    except TypeError:  # a nested list: fromiter cannot turn a list into one number
        raise ValueError("Each feature's sequence must be 1-dimensional (a flat list of ints).") from None


def pad_flat(flat: np.ndarray, lengths: np.ndarray, pad_value, pad_to_multiple_of: int | None = None) -> np.ndarray:
    """Lay the flat rows (N, ...) of lengths (B,) out right-padded as (B, T, ...), T = the longest row rounded up to
    a multiple of `pad_to_multiple_of`; `flat`'s dtype. Trailing dimensions (e.g. the (start, end) pair of an
    `offset_mapping`) are kept. Equal-length rows that need no padding are a free reshape."""
    width = padded_length(int(lengths.max()) if len(lengths) else 0, pad_to_multiple_of)
    if len(lengths) and lengths.min() == width:
        return flat.reshape(len(lengths), width, *flat.shape[1:])
    array = np.full((len(lengths), width, *flat.shape[1:]), pad_value, dtype=flat.dtype)
    array[np.arange(width)[None, :] < lengths[:, None]] = flat  # row-major order matches the concatenation
    return array


def pad_rows(
    rows: Sequence, pad_value, pad_to_multiple_of: int | None = None, dtype=np.int64
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows into a (B, T) array of `dtype`; also return the real lengths (B,) int64.

    Even equal-length Python lists go through `flatten` and a reshape: about 2x faster than `np.array` on a list
    of lists (0.5 vs 0.9 ms for 64 x 512).

    >>> ids, lengths = pad_rows([[5, 6, 7], [8]], pad_value=0)
    >>> ids.tolist(), lengths.tolist()
    ([[5, 6, 7], [8, 0, 0]], [3, 1])
    >>> pad_rows([[5, 6, 7], [8]], pad_value=-1, pad_to_multiple_of=4)[0].tolist()
    [[5, 6, 7, -1], [8, -1, -1, -1]]
    """
    flat, lengths = flatten(rows, dtype=dtype)  # (N,), (B,)
    return pad_flat(flat, lengths, pad_value, pad_to_multiple_of), lengths
