"""Keyed randomness: every random draw of the collators is a pure function of its key, not of a stream.

A sample's draws are a function of (seed, epoch, the sample's tokens, a stream id, the position): a counter-based
hash evaluated elementwise. So a sample gets the same mask whatever batch it lands in, whatever the DataLoader
worker count, and a resumed run reproduces the masks of the uninterrupted one. No generator state needs saving.

The hash runs in numpy uint32: unsigned arithmetic wraps mod 2**32 by definition, and 4-byte in-place ops run ~30x
faster than the same hash in int64 torch with masking (0.08 ms for 64 x 512 draws on one core).
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # 2**32 / golden ratio: decorrelates consecutive counters
_U32 = np.uint32


def mix32(x: np.ndarray) -> np.ndarray:
    """A 32-bit avalanche hash (the "lowbias32" xorshift-multiply finalizer), in place on a uint32 array."""
    shifted = x >> _U32(16)  # one scratch array for the three shifts: allocations cost as much as the ops here
    x ^= shifted
    x *= _U32(0x7FEB352D)
    np.right_shift(x, _U32(15), out=shifted)
    x ^= shifted
    x *= _U32(0x846CA68B)
    np.right_shift(x, _U32(16), out=shifted)
    x ^= shifted
    return x


@functools.lru_cache(maxsize=32)
def _counters(width: int) -> np.ndarray:
    """(width,) uint32 `j * golden` for j < width, read-only; cached: every batch of a run has the same widths."""
    counters = np.arange(width, dtype=_U32) * _U32(_GOLDEN32)
    counters.flags.writeable = False
    return counters


@functools.lru_cache(maxsize=32)
def _position_hashes(width: int) -> np.ndarray:
    """(width,) uint32 hash of each position, read-only (what makes a sample's key order-sensitive)."""
    hashes = mix32(np.arange(width, dtype=_U32) * _U32(_GOLDEN32))
    hashes.flags.writeable = False
    return hashes


def sample_keys(ids: torch.Tensor, lengths: torch.Tensor, seed: int, epoch: int = 0) -> np.ndarray:
    """One uint32 key per sample (B,), a function of the sample's real tokens, the seed and the epoch only.

    Padding never changes the key, so a sample gets the same key in any batch. Identical sequences share a key
    (and hence a mask) within an epoch; bump `epoch` to draw fresh masks for repeated data.
    """
    ids_np = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    lengths_np = lengths.numpy() if isinstance(lengths, torch.Tensor) else np.asarray(lengths)
    width = ids_np.shape[1]
    token_hash = ids_np.astype(_U32)  # (B, T); ids < 2**32 always
    token_hash ^= _position_hashes(width)  # position-dependent, so the key is order-sensitive
    mix32(token_hash)
    if len(lengths_np) and lengths_np.min() < width:  # full rows (packed blocks) have nothing to clear
        token_hash[np.arange(width)[None, :] >= lengths_np[:, None]] = 0
    content = token_hash.sum(1, dtype=np.uint64).astype(_U32) ^ lengths_np.astype(_U32)  # (B,)
    base = mix32(np.array([(seed * _GOLDEN32 + epoch) & _MASK32], dtype=_U32))
    return mix32(content ^ base)


def _stream_keys(keys: np.ndarray, stream: int) -> np.ndarray:
    return mix32(keys ^ _U32((stream * _GOLDEN32 + 1) & _MASK32))  # (B,)


def keyed_bits(keys: np.ndarray, width: int, stream: int) -> np.ndarray:
    """Uniform uint32 draws (B, width): element [b, j] depends only on (keys[b], stream, j)."""
    # two rounds: adjacent counters decorrelate
    return mix32(mix32(_stream_keys(keys, stream)[:, None] + _counters(width)[None, :]))


def keyed_bits_at(keys: np.ndarray, rows: np.ndarray, columns: np.ndarray, stream: int) -> np.ndarray:
    """The draws of a few positions (S,): element i is `keyed_bits(keys, width, stream)[rows[i], columns[i]]` for
    any width, without the whole (B, width) table (for draws only a sparse subset of positions reads)."""
    counters = np.asarray(columns).astype(_U32) * _U32(_GOLDEN32)  # (S,)
    return mix32(mix32(_stream_keys(keys, stream)[rows] + counters))


def keyed_uniform(keys: np.ndarray, width: int, stream: int) -> torch.Tensor:
    """Uniform floats in [0, 1) (B, width), 24 bits of resolution so float32 represents them exactly."""
    bits = keyed_bits(keys, width, stream) >> _U32(8)
    return torch.from_numpy(bits.astype(np.float32) * np.float32(1.0 / (1 << 24)))


def keyed_randint(keys: np.ndarray, width: int, stream: int, high: int) -> torch.Tensor:
    """Uniform integers in [0, high) (B, width) by multiply-shift (bias below high / 2**32)."""
    return torch.from_numpy(bits_to_int(keyed_bits(keys, width, stream), high))


def bits_to_int(bits: np.ndarray, high: int) -> np.ndarray:
    """Uniform uint32 draws → int64 integers in [0, high) by multiply-shift (`keyed_randint`'s mapping)."""
    if not 0 < high < 2**32:
        raise ValueError(f"high must be in (0, 2**32), got {high}.")
    return ((bits.astype(np.uint64) * np.uint64(high)) >> np.uint64(32)).astype(np.int64)


def keyed_fraction(keys: np.ndarray, stream: int) -> np.ndarray:
    """One uniform float64 in [0, 1) per key (B,), 24-bit resolution."""
    return (keyed_bits(keys, 1, stream)[:, 0] >> _U32(8)) * (1.0 / (1 << 24))


def fresh_seed(seed: int | None) -> int:
    """`seed`, or a fresh one from the OS when None (the keyed draws then differ call to call)."""
    return random.SystemRandom().getrandbits(32) if seed is None else seed
