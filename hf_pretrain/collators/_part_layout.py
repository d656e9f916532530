"""Where every token of a corrupted or split example lands: two parts per example, written in place.

Span corruption and UL2 read a batch as flat, unpadded examples (`examples_of`: the rows, or the document pieces of
packed rows) and turn every example into two parts: the first, read bidirectionally (mode token, source, EOS), and
the second, predicted (target, EOS). Sources and targets are runs of the example's own tokens (segments: a prefix-LM
split has 2, span corruption 2 per span) with tokens inserted between them (mode token, sentinels, EOS). Rather than
building the parts and gluing them into rows, the collators compute where each run starts in the output and move
every token of the batch with one scatter (`place_segments`), the inserted ones with one more. Decoder-only rows
hold their examples' [first second] parts side by side in (B, W) (`decoder_only_starts`); encoder-decoder inputs and
labels are the two halves of one buffer (`encoder_decoder_starts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ._documents import DOCUMENT_KEY, document_pieces
from ._features import column
from ._padding import flatten, padded_length


def examples_of(features: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """The examples of a batch, flat: (tokens (N,) int32, row lengths (B,), example lengths (P,), examples per row
    (B,), whether the features carried `document_lengths`). The examples are the rows, or with `document_lengths`
    their document pieces; nothing is padded. Raises a ValueError for document lengths that do not fit."""
    flat, lengths = flatten(column(features, "input_ids"), dtype=np.int32)  # (N,), (B,)
    rows = column(features, DOCUMENT_KEY, required=False)
    if rows is None:
        return flat, lengths, lengths, np.ones_like(lengths), False
    pieces, counts = document_pieces(rows, lengths)  # (P,), (B,)
    return flat, lengths, pieces, counts, True


def _fit(needed: int, width: int | None, pad_to_multiple_of: int | None) -> int:
    width = padded_length(needed, pad_to_multiple_of) if width is None else width
    if needed > width:
        raise ValueError(f"Rows of length {needed} do not fit the promised width {width}.")
    return width


def decoder_only_starts(
    first_lengths: np.ndarray,
    second_lengths: np.ndarray,
    counts: np.ndarray,
    width: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Examples (P,) laid out [first second] side by side, `counts[b]` of them in row b (B,), in (B, W) rows.

    Returns the flat index in the (B, W) output of every example's first part and second part (P,) each, the rows'
    lengths (B,) and W (`width`, else the longest row rounded up to `pad_to_multiple_of`).
    """
    totals = first_lengths + second_lengths  # (P,)
    if len(totals) == len(counts):  # one example per row
        row_totals, offsets, rows = totals, 0, np.arange(len(counts))
    else:
        rows = np.repeat(np.arange(len(counts)), counts)  # (P,) the row of each example
        row_totals = np.bincount(rows, weights=totals, minlength=len(counts)).astype(np.int64)  # (B,)
        before = np.cumsum(totals) - totals  # (P,) flat offset of each example, all rows back to back
        offsets = before - np.repeat(np.cumsum(row_totals) - row_totals, counts)  # ... within its row
    width = _fit(int(row_totals.max()) if len(row_totals) else 0, width, pad_to_multiple_of)
    first = rows * width + offsets
    return first, first + first_lengths, row_totals, width


def encoder_decoder_starts(
    first_lengths: np.ndarray,
    second_lengths: np.ndarray,
    first_width: int | None = None,
    second_width: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One example per row: firsts in (B, W1) rows, seconds in (B, W2) rows after them in one flat buffer of
    B · (W1 + W2). Returns the flat start of every first and second part (B,) each, W1 and W2."""
    batch = len(first_lengths)
    first_width = _fit(int(first_lengths.max()), first_width, pad_to_multiple_of)
    second_width = _fit(int(second_lengths.max()), second_width, pad_to_multiple_of)
    rows = np.arange(batch)
    return rows * first_width, batch * first_width + rows * second_width, first_width, second_width


def merge_segments(
    per_example: np.ndarray, groups: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Segments of several kinds of examples merged into token order: lengths and output starts (S,).

    `per_example` (P,) is every example's segment count; each group is (its examples (G,) ascending, their counts
    (G,), their segments' lengths and starts, example after example). A group of every example is returned as it
    is.
    """
    groups = [group for group in groups if len(group[0])]
    if len(groups) == 1 and len(groups[0][0]) == len(per_example):
        return groups[0][2], groups[0][3]
    first = np.cumsum(per_example) - per_example  # (P,) slot of each example's first segment
    lengths = np.empty(int(per_example.sum()), dtype=np.int64)
    starts = np.empty_like(lengths)
    for examples, counts, group_lengths, group_starts in groups:
        slot = np.arange(len(group_lengths)) + np.repeat(first[examples] - (np.cumsum(counts) - counts), counts)
        lengths[slot] = group_lengths
        starts[slot] = group_starts
    return lengths, starts


def place_segments(out: np.ndarray, flat: np.ndarray, lengths: np.ndarray, starts: np.ndarray) -> None:
    """`out` (flat) gets `flat`'s tokens (N,): segment i, `lengths[i]` tokens, from `starts[i]` on; the segments
    tile `flat` in order. One repeat and one scatter for the whole batch."""
    shift = starts - (np.cumsum(lengths) - lengths)  # (S,) output index minus token index, per segment
    destination = np.repeat(shift, lengths)  # (N,)
    destination += np.arange(len(destination))
    out[destination] = flat.astype(out.dtype, copy=False)  # a scatter that casts as it goes costs ~2.5x
