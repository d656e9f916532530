"""The keyed masked-LM draw: which tokens are selected, and the 80/10/10 split of what a selected token becomes.

Every decision is a keyed draw (`_keyed`): draw [b, j] depends only on (the key of sample b, a stream, j), so a
sample gets the same mask in any batch. Three streams, one per purpose, keep the decisions independent: the
selection (one draw per position, or per word index under whole-word masking), the split (mask token / random
token / unchanged; per word under whole-word masking) and the random replacement token.

The rate is one number, or one per row (`row_rates`: given, or a schedule at each row's step). Only the selection
needs a draw at every position. The split and the replacement token are read at the selected positions only
(~15 %, and ~1.5 % for replacements), so they are hashed there alone (`keyed_bits_at`), giving the values the
whole (B, T) tables would hold at those positions at a fraction of the cost. Comparisons are made on the 24-bit
integer draws (`_limit`), exactly as on the float32 uniforms k / 2**24 they stand for: the masks are the same.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._keyed import bits_to_int, keyed_bits, keyed_bits_at
from ._rows import IGNORE_INDEX

SELECT_STREAM = 0x4D4C4D01
SPLIT_STREAM = 0x4D4C4D02
RANDOM_TOKEN_STREAM = 0x4D4C4D03


def probability_value(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}.")
    return value


def row_rates(given, block_index, rows: int, schedule) -> np.ndarray | None:
    """The selection rate of each row (B,) float64, or None when all rows use the collator's one rate: `given` (a
    number or one per row), else `schedule` = (fn, blocks_per_step) at each row's step from its `block_index`."""
    if given is None and (schedule is None or block_index is None):
        return None
    if given is None:  # rows of a batch normally share a step: the schedule runs once per distinct step
        rate_at, blocks_per_step = schedule
        steps, inverse = np.unique(_as_array(block_index, np.int64) // blocks_per_step, return_inverse=True)
        given = np.array([rate_at(int(step)) for step in steps], dtype=np.float64)[inverse.reshape(-1)]
    rates = np.broadcast_to(_as_array(given, np.float64), (rows,))
    if not ((rates >= 0) & (rates <= 1)).all():  # also rejects NaN
        raise ValueError(f"mlm_probability must be in [0, 1], got {rates[~((rates >= 0) & (rates <= 1))][:4]}.")
    return rates


def _as_array(value, dtype) -> np.ndarray:
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array.astype(dtype, copy=False)


def _limit(probability):
    """The integer form of `u < float32(probability)` for a 24-bit draw k (u = k / 2**24): k < ceil(p * 2**24),
    exact since p * 2**24 is exact in float64. An int for a number, else an int64 array (one per row)."""
    if np.ndim(probability) == 0:
        return math.ceil(float(np.float32(probability)) * (1 << 24))
    return np.ceil(np.asarray(probability, dtype=np.float32).astype(np.float64) * (1 << 24)).astype(np.int64)


def draw_masks(
    ids: np.ndarray,
    maskable: np.ndarray,
    keys: np.ndarray,
    probability,
    *,
    mask_id: int,
    mask_replace_prob: float,
    random_replace_prob: float,
    replacements: np.ndarray,
    exact_count: bool = False,
    word: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(masked input ids, labels), both (B, T) int64, of right-padded rows `ids` (B, T).

    `maskable` (B, T) bool marks the tokens that may be selected; `keys` (B,) uint32 are the samples' keys;
    `probability` is the selection rate, a number or one per row (B,). With `exact_count`, exactly
    round(probability * maskable count) per row are selected (words under whole-word masking). `word` (B, T) is
    each token's word index within its row (whole-word masking: a word is selected and split as a unit).
    `replacements` (K,) are the ids a random replacement draws from.
    """
    rows, width = ids.shape
    if rows == 0 or width == 0:
        return ids.copy(), np.full_like(ids, IGNORE_INDEX)
    if word is not None:
        # All tokens of a word share maskability, so scattering them by word index is unambiguous.
        maskable_word = np.zeros_like(maskable)
        np.put_along_axis(maskable_word, word, maskable, axis=1)  # (B, W = T) indexed by word
    else:
        maskable_word = maskable
    draws = keyed_bits(keys, width, SELECT_STREAM)  # (B, W) uint32, one draw per word index
    np.right_shift(draws, np.uint32(8), out=draws)  # the 24-bit uniforms' numerators, in place
    if exact_count:
        chosen = smallest_k(draws, maskable_word, probability)  # (B, W)
    else:
        limit = _limit(probability)  # an int, or (B,): one per row
        if np.ndim(limit):
            limit = limit.astype(np.uint32)[:, None]  # (B, 1); <= 2**24, so uint32 compares without promotion
        chosen = (draws < limit) & maskable_word  # (B, W)
    selected = chosen if word is None else np.take_along_axis(chosen, word, axis=1) & maskable  # (B, T)

    flat_ids = ids.reshape(-1)
    at = np.flatnonzero(selected)  # (S,) flat index of every selected token
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)  # (B, T)
    labels.reshape(-1)[at] = flat_ids[at]
    masked_ids = ids.astype(np.int64, copy=True)  # (B, T)
    row, column = np.divmod(at, width)  # (S,) each
    # The 80/10/10 decision of each selected token, from its word's draw under whole-word masking.
    split_column = column if word is None else word.reshape(-1)[at]
    split = keyed_bits_at(keys, row, split_column, SPLIT_STREAM) >> np.uint32(8)  # (S,) 24-bit draws
    to_mask = split < _limit(mask_replace_prob)
    masked = masked_ids.reshape(-1)
    masked[at[to_mask]] = mask_id
    if random_replace_prob > 0:
        upper = _limit(mask_replace_prob + random_replace_prob)
        to_random = ~to_mask & (split < upper)  # (S,)
        picks = bits_to_int(
            keyed_bits_at(keys, row[to_random], column[to_random], RANDOM_TOKEN_STREAM), len(replacements)
        )
        masked[at[to_random]] = replacements[picks]
    return masked_ids, labels


def smallest_k(draws: np.ndarray, eligible: np.ndarray, probability) -> np.ndarray:
    """(B, W) bool: in each row, the round(probability * eligible count) eligible positions with the smallest draws.

    `draws` are 24-bit integers (B, W); `draw * 2**20 + position` (exact in float64) makes them unique, so a
    per-row threshold on the sorted values picks exactly k, ties broken by position. A float64 sort is SIMD-fast
    in numpy. `probability` is a number or one per row (B,).
    """
    rows, width = draws.shape
    count = np.round(eligible.sum(1) * probability).astype(np.int64)  # (B,), half to even as Python's round
    unique = draws.astype(np.float64) * float(1 << 20) + np.arange(width, dtype=np.float64)  # (B, W)
    unique[~eligible] = np.inf
    ordered = np.sort(unique, axis=1)  # (B, W)
    threshold = ordered[np.arange(rows), np.maximum(count - 1, 0)]  # (B,) the k-th smallest
    return (unique <= threshold[:, None]) & (count[:, None] > 0) & eligible


def word_index(
    ids: np.ndarray, maskable: np.ndarray, word_ids: np.ndarray | None, word_starts: np.ndarray | None
) -> np.ndarray:
    """Index of each token's word within its row (B, T), from a cumulative sum of word starts: from `word_ids`
    (B, T) when given, else the vocabulary's word-start table `word_starts` (V,) bool."""
    if word_ids is not None:
        starts = np.ones(maskable.shape, dtype=bool)
        starts[:, 1:] = word_ids[:, 1:] != word_ids[:, :-1]
    elif word_starts is not None:
        starts = word_starts[ids]  # (B, T) bool, one gather over the vocabulary table
    else:
        raise ValueError(
            "whole_word_mask=True, but the tokenizer's word-start convention is unknown (not byte-level, "
            "Metaspace or WordPiece); give each feature 'word_ids' (a fast tokenizer's encoding.word_ids()) or "
            "'offset_mapping' (return_offsets_mapping=True)."
        )
    # Unmaskable tokens (special, padding) are words of their own: they start one and end the previous one.
    starts = starts | ~maskable
    starts[:, 1:] |= ~maskable[:, :-1]
    starts[:, 0] = True
    return np.cumsum(starts, axis=1) - 1


def offset_word_ids(offsets: np.ndarray) -> np.ndarray:
    """Word index of each token (B, T) from its character offsets (B, T, 2): a token starts a word unless it begins
    where the previous token ends (transformers' whole-word rule). A packed row (1, N, 2) works alike: unpacked,
    each document's first token starts a word (`word_index`), as do the tokens next to special ones."""
    if offsets.ndim != 3 or offsets.shape[-1] != 2:
        raise ValueError(f"offset_mapping must hold one (start, end) pair per token, got shape {offsets.shape}.")
    starts = np.ones(offsets.shape[:2], dtype=bool)
    starts[:, 1:] = offsets[:, 1:, 0] != offsets[:, :-1, 1]
    return np.cumsum(starts, axis=1) - 1
