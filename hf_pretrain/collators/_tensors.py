"""Shared tensor plumbing for the collators: features → padded or flattened tensors, and keyed randomness.

Two decisions live here so every collator makes them the same way:

* **Conversion goes through numpy.** `datasets` hands features over as Python lists; `torch.tensor` on a list of
  lists is ~8x slower than `np.array` for a 64 x 512 batch, and ragged rows are flattened with `np.fromiter` and
  scattered into the padded array with one boolean-mask assignment (no Python loop over tokens).
* **Randomness is keyed, not streamed.** A sample's random draws are a pure function of (seed, epoch, the sample's
  tokens, a stream id, the position): a counter-based hash evaluated elementwise. So a sample gets the same mask
  whatever batch it lands in, whatever the DataLoader worker count, and a resumed run reproduces the masks of the
  uninterrupted one. No generator state needs saving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # 2**32 / golden ratio: decorrelates consecutive counters


def column(features: Sequence[Mapping], key: str, *, required: bool = True) -> list | None:
    """The `key` entry of every feature, or None when no feature has it. Raises a clear error on partial presence."""
    if not features:
        raise ValueError("The collator received an empty list of features.")
    if not isinstance(features[0], Mapping):
        raise ValueError(f"Features must be dicts (e.g. {{'input_ids': [...]}}), got {type(features[0]).__name__}.")
    present = [key in f for f in features]
    if not any(present):
        if required:
            raise ValueError(f"Features have no '{key}' entry; found keys {sorted(features[0].keys())}.")
        return None
    if not all(present):
        raise ValueError(f"Only some features have a '{key}' entry; give it for all of them or for none.")
    return [f[key] for f in features]


def _as_1d_array(row) -> np.ndarray:
    array = row.numpy() if isinstance(row, torch.Tensor) else np.asarray(row)
    if array.ndim != 1:
        raise ValueError(f"Each feature's sequence must be 1-dimensional, got shape {tuple(array.shape)}.")
    return array


def lengths_of(rows: Sequence) -> np.ndarray:
    """Length of each row, as an int64 array (B,)."""
    return np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))


def flatten_rows(rows: Sequence, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate rows (lists, arrays or tensors) into one array (N,) and return it with the lengths (B,)."""
    lengths = lengths_of(rows)
    if isinstance(rows[0], list | tuple):
        flat = np.fromiter(chain.from_iterable(rows), dtype=dtype, count=int(lengths.sum()))
    else:
        flat = np.concatenate([_as_1d_array(r) for r in rows]).astype(dtype, copy=False)
    return flat, lengths


def padded_length(max_length: int, pad_to_multiple_of: int | None) -> int:
    if pad_to_multiple_of:
        return -(-max_length // pad_to_multiple_of) * pad_to_multiple_of
    return max_length


def pad_rows(
    rows: Sequence, pad_value: int, pad_to_multiple_of: int | None = None, dtype=np.int64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows into a (B, T) tensor; also return the real lengths (B,).

    >>> ids, lengths = pad_rows([[5, 6, 7], [8]], pad_value=0)
    >>> ids.tolist(), lengths.tolist()
    ([[5, 6, 7], [8, 0, 0]], [3, 1])
    """
    lengths = lengths_of(rows)
    width = padded_length(int(lengths.max()), pad_to_multiple_of)
    if width == lengths.min() and isinstance(rows[0], list | tuple):
        array = np.array(rows, dtype=dtype)  # fast path: equal-length Python lists
        if array.ndim != 2:
            raise ValueError(f"Each feature's sequence must be 1-dimensional, got batch shape {array.shape}.")
    else:
        flat, lengths = flatten_rows(rows, dtype=dtype)
        array = np.full((len(rows), width), pad_value, dtype=dtype)
        array[np.arange(width) < lengths[:, None]] = flat  # row-major order matches the concatenation
    return torch.from_numpy(array), torch.from_numpy(lengths)


def check_pad_to_multiple_of(value, padding_free: bool = False) -> None:
    """`pad_to_multiple_of` must be None or a positive int, and means nothing without padding."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {value!r}.")
    if padding_free:
        raise ValueError("pad_to_multiple_of has no meaning with padding_free=True (nothing is padded).")


def flat_position_ids(lengths: torch.Tensor) -> torch.Tensor:
    """Positions restarting at 0 for each document of a flattened row: lengths [3, 2] → [0, 1, 2, 0, 1]."""
    total = int(lengths.sum())
    starts = torch.cumsum(lengths, 0) - lengths  # (D,)
    return torch.arange(total) - torch.repeat_interleave(starts, lengths)


def cu_seq_lens(lengths: torch.Tensor) -> torch.Tensor:
    """Cumulative sequence boundaries (D + 1,) int32, the flash-attention varlen convention: [0, l0, l0 + l1, ...]."""
    return torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))


# ---------------------------------------------------------------------------------------------------------------
# Keyed randomness, in numpy uint32: unsigned arithmetic wraps mod 2**32 by definition, and 4-byte in-place ops run
# ~30x faster than the same hash in int64 torch with masking (0.08 ms for 64 x 512 draws on one core).
# ---------------------------------------------------------------------------------------------------------------

_U32 = np.uint32


def mix32(x: np.ndarray) -> np.ndarray:
    """A 32-bit avalanche hash (the "lowbias32" xorshift-multiply finalizer), in place on a uint32 array."""
    x ^= x >> _U32(16)
    x *= _U32(0x7FEB352D)
    x ^= x >> _U32(15)
    x *= _U32(0x846CA68B)
    x ^= x >> _U32(16)
    return x


def sample_keys(ids: torch.Tensor, lengths: torch.Tensor, seed: int, epoch: int = 0) -> np.ndarray:
    """One uint32 key per sample (B,), a function of the sample's real tokens, the seed and the epoch only.

    Padding never changes the key, so a sample gets the same key in any batch. Identical sequences share a key
    (and hence a mask) within an epoch; bump `epoch` to draw fresh masks for repeated data.
    """
    ids_np = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    lengths_np = lengths.numpy() if isinstance(lengths, torch.Tensor) else np.asarray(lengths)
    positions = np.arange(ids_np.shape[1], dtype=_U32)
    token_hash = ids_np.astype(_U32)  # (B, T); ids < 2**32 always
    token_hash ^= mix32(positions * _U32(_GOLDEN32))  # position-dependent, so the key is order-sensitive
    mix32(token_hash)
    token_hash[positions[None, :] >= lengths_np[:, None]] = 0
    content = token_hash.sum(1, dtype=np.uint64).astype(_U32) ^ lengths_np.astype(_U32)  # (B,)
    base = mix32(np.array([(seed * _GOLDEN32 + epoch) & _MASK32], dtype=_U32))
    return mix32(content ^ base)


def keyed_bits(keys: np.ndarray, width: int, stream: int) -> np.ndarray:
    """Uniform uint32 draws (B, width): element [b, j] depends only on (keys[b], stream, j)."""
    stream_keys = mix32(keys ^ _U32((stream * _GOLDEN32 + 1) & _MASK32))  # (B,)
    counters = np.arange(width, dtype=_U32) * _U32(_GOLDEN32)  # (width,)
    return mix32(mix32(stream_keys[:, None] + counters[None, :]))  # two rounds: adjacent counters decorrelate


def keyed_uniform(keys: np.ndarray, width: int, stream: int) -> torch.Tensor:
    """Uniform floats in [0, 1) (B, width), 24 bits of resolution so float32 represents them exactly."""
    bits = keyed_bits(keys, width, stream) >> _U32(8)
    return torch.from_numpy(bits.astype(np.float32) * np.float32(1.0 / (1 << 24)))


def keyed_randint(keys: np.ndarray, width: int, stream: int, high: int) -> torch.Tensor:
    """Uniform integers in [0, high) (B, width) by multiply-shift (bias below high / 2**32)."""
    if not 0 < high < 2**32:
        raise ValueError(f"high must be in (0, 2**32), got {high}.")
    draws = (keyed_bits(keys, width, stream).astype(np.uint64) * np.uint64(high)) >> np.uint64(32)
    return torch.from_numpy(draws.astype(np.int64))
