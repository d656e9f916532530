"""Row assembly shared by span corruption, prefix LM and UL2, which work in flat (row-major, unpadded) space.

These collators take `input_ids` flat and padded (`input_id_rows`), cut every row into parts with vectorized
numpy (a split point, corrupted spans), then glue the parts of each row back into right-padded rows
(`assemble_rows`) with no Python loop over examples or tokens.

Packed rows (features with `document_lengths`) are worked on piece by piece: every document piece is an example
of its own (`Pieces`), its parts are glued flat (`concat_parts`) and the pieces of a row then laid out side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from ._documents import DOCUMENT_KEY, document_pieces
from ._features import column
from ._keyed import keyed_fraction
from ._padding import flatten, pad_flat, padded_length

IGNORE_INDEX = -100


def input_id_rows(
    features: Sequence[Mapping], pad_value: int, pad_to_multiple_of: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`input_ids` of the features as (flat (N,), padded (B, T)) int32 and lengths (B,) int64.

    The padded view is free for equal lengths (a reshape of the flat array). int32 halves the memory traffic of
    every pass over the tokens (and lets `flatten` read Python lists with `struct`); outputs are int64
    (`assemble_rows`).
    """
    flat, lengths = flatten(column(features, "input_ids"), dtype=np.int32)  # (N,), (B,)
    return flat, pad_flat(flat, lengths, pad_value, pad_to_multiple_of), lengths


def assemble_rows(
    pieces: Sequence[tuple[np.ndarray | int, np.ndarray]],
    pad_value: int,
    width: int | None = None,
    pad_to_multiple_of: int | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-row pieces into a right-padded (B, W) int64 array; also return the row lengths (B,).

    Each piece is (values, lengths): `values` holds every row's part back to back (row-major, flat) or is one
    scalar that fills the part; `lengths` (B,) says how long each row's part is (0 is allowed). Piece row r lands
    in output row `rows[r]` (default r), so groups processed in another order need no permutation afterwards.

    >>> out, n = assemble_rows([(np.array([1, 2, 3]), np.array([2, 1])), (9, np.array([1, 1]))], pad_value=0)
    >>> out.tolist(), n.tolist()
    ([[1, 2, 9], [3, 9, 0]], [3, 2])
    """
    batch = len(pieces[0][1])
    totals = np.zeros(batch, dtype=np.int64)
    for _, lengths in pieces:
        totals = totals + lengths
    needed = int(totals.max())
    width = padded_length(needed, pad_to_multiple_of) if width is None else width
    if needed > width:
        raise ValueError(f"Rows of length {needed} do not fit the promised width {width}.")
    uniform = all(lengths.min() == lengths.max() for _, lengths in pieces)
    if uniform and needed == width and rows is None:
        # Fast path (fixed-length data): every row has the same layout, so the pieces are blocks of columns.
        blocks = [
            np.full((batch, int(n[0])), v, dtype=np.int64) if np.isscalar(v) else v.reshape(batch, int(n[0]))
            for v, n in pieces
        ]
        return np.concatenate(blocks, axis=1, dtype=np.int64), totals
    rows = np.arange(batch) if rows is None else rows
    out = np.full((batch, width), pad_value, dtype=np.int64)
    flat_out = out.reshape(-1)
    start = rows * width  # (B,) flat index in `out` where each piece row's next part begins
    for values, lengths in pieces:
        scalar = np.isscalar(values)
        if scalar and values == pad_value:
            pass  # already there
        elif lengths.max() <= 1:  # one token per row at most (EOS, a mode token): index the rows directly
            flat_out[start[lengths == 1]] = values
        else:
            # Destination of every element: its row's start plus its rank within the row's part. One repeat over
            # the part's elements instead of boolean masks over the whole (B, W) array per piece.
            offsets = np.cumsum(lengths) - lengths  # (B,) where each row's part begins in `values`
            dest = np.repeat(start - offsets, lengths)
            dest += np.arange(len(dest))
            flat_out[dest] = values
        start = start + lengths
    totals_out = np.empty_like(totals)
    totals_out[rows] = totals
    return out, totals_out


def shift_right(labels: np.ndarray, start_token_id: int, pad_token_id: int) -> np.ndarray:
    """Decoder inputs from labels (B, T): shifted right behind the start token, ignored positions → pad."""
    shifted = np.empty_like(labels)
    shifted[:, 0] = start_token_id
    shifted[:, 1:] = labels[:, :-1]
    shifted[shifted == IGNORE_INDEX] = pad_token_id
    return shifted


def draw_split_points(
    keys: np.ndarray, lengths: np.ndarray, fraction_range: tuple[float, float], stream: int
) -> np.ndarray:
    """Prefix lengths (B,): floor(length * uniform(fraction_range)), clipped so both parts keep a token."""
    low, high = fraction_range
    fraction = low + keyed_fraction(keys, stream) * (high - low)  # (B,)
    return np.clip(np.floor(lengths * fraction).astype(np.int64), 1, lengths - 1)


def check_fraction_range(fraction_range: tuple[float, float], name: str = "prefix_fraction_range") -> None:
    if len(fraction_range) != 2 or not 0.0 <= fraction_range[0] <= fraction_range[1] <= 1.0:
        raise ValueError(f"{name} must be (low, high) with 0 <= low <= high <= 1, got {fraction_range!r}.")


def tokenizer_id(tokenizer: PreTrainedTokenizerBase, attribute: str, objective: str) -> int:
    """`tokenizer.<attribute>` (e.g. 'pad_token_id'), or a ValueError naming it."""
    value = getattr(tokenizer, attribute, None)
    if value is None:
        raise ValueError(
            f"tokenizer has no {attribute.removesuffix('_id')}, which {objective} needs; add one "
            "(tokenizer.add_special_tokens(...), then model.resize_token_embeddings(len(tokenizer)))."
        )
    return int(value)


# ---------------------------------------------------------------------------------------------------------------
# Document pieces: the examples of packed rows (prefix LM, decoder-only span corruption and UL2)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Pieces:
    """The examples of a batch: the document pieces of every row (features' `document_lengths`), else the rows.

    Each piece is corrupted or split on its own and keyed by its own tokens (`piece_ids` is what `sample_keys`
    reads), so a document gets the same draws whether it is packed with others or run alone.
    """

    lengths: np.ndarray  # (P,) int64
    counts: np.ndarray  # (B,) int64: pieces per row, all 1 without document_lengths
    ids: np.ndarray  # (P, L) right-padded piece tokens; the rows' (B, T) ids themselves when one piece per row
    documented: bool  # the features carried document_lengths

    @property
    def one_per_row(self) -> bool:
        return len(self.lengths) == len(self.counts)

    def row_sums(self, per_piece: np.ndarray) -> np.ndarray:
        """(B,) sum over each row's pieces of a (P,) value."""
        if self.one_per_row:
            return per_piece
        row_of_piece = np.repeat(np.arange(len(self.counts)), self.counts)  # (P,)
        return np.bincount(row_of_piece, weights=per_piece, minlength=len(self.counts)).astype(np.int64)

    def lay_out(
        self,
        parts: Sequence[tuple[np.ndarray | int, np.ndarray]],
        pad_value: int,
        width: int | None = None,
        pad_to_multiple_of: int | None = None,
        order: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every piece's parts (as in `concat_parts`) glued, a row's pieces side by side: the right-padded rows
        (B, W) int64 and each piece's total length (P,)."""
        if self.one_per_row:  # straight into the rows, one scatter
            return assemble_rows(parts, pad_value, width, pad_to_multiple_of, order)
        flat, totals = concat_parts(parts, order)  # (sum of totals,), (P,)
        rows, _ = assemble_rows([(flat, self.row_sums(totals))], pad_value, width, pad_to_multiple_of)
        return rows, totals


def document_pieces_of(
    features: Sequence[Mapping], flat: np.ndarray, ids: np.ndarray, lengths: np.ndarray, pad_value: int
) -> Pieces:
    """The `Pieces` of a batch: `flat` (N,), `ids` (B, T) and `lengths` (B,) as `input_id_rows` gives them.

    Raises a ValueError when `document_lengths` are not positive or do not sum to their feature's length.
    """
    rows = column(features, DOCUMENT_KEY, required=False)
    if rows is None:
        return Pieces(lengths, np.ones_like(lengths), ids, documented=False)
    pieces, counts = document_pieces(rows, lengths)  # (P,), (B,)
    piece_ids = ids if len(pieces) == len(lengths) else pad_flat(flat, pieces, pad_value)  # (P, L)
    return Pieces(pieces, counts, piece_ids, documented=True)


def no_documents_error(objective: str) -> ValueError:
    """The error for features with `document_lengths` in an encoder-decoder layout."""
    return ValueError(
        f"document_lengths: documents cannot be kept apart in encoder-decoder {objective} (the encoder reads a row "
        "as one sequence); drop the features' document_lengths (document_attention: shared in the recipe) or use "
        "decoder_only=True."
    )


def concat_parts(
    parts: Sequence[tuple[np.ndarray | int, np.ndarray]], order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-example parts into one flat int64 array, example after example; also return each example's
    total length (P,). Parts are (values, lengths) as in `assemble_rows`; example r of the parts is example
    `order[r]` of the output (default r), so groups processed in another order need no permutation afterwards.

    >>> flat, n = concat_parts([(np.array([1, 2, 3]), np.array([2, 1])), (9, np.array([1, 0]))], order=np.array([1, 0]))
    >>> flat.tolist(), n.tolist()
    ([3, 1, 2, 9], [1, 3])
    """
    count = len(parts[0][1])
    totals = np.zeros(count, dtype=np.int64)
    for _, lengths in parts:
        totals = totals + lengths
    if order is None and all(lengths.min() == lengths.max() for _, lengths in parts):
        # Fixed-length data: every example has the same layout, so the parts are blocks of columns.
        blocks = [
            np.full((count, int(n[0])), v, dtype=np.int64) if np.isscalar(v) else v.reshape(count, int(n[0]))
            for v, n in parts
        ]
        return np.concatenate(blocks, axis=1, dtype=np.int64).reshape(-1), totals
    out_totals = totals if order is None else np.empty_like(totals)
    if order is not None:
        out_totals[order] = totals
    start = np.cumsum(out_totals) - out_totals  # (P,) where each output example begins
    start = start if order is None else start[order]  # ... for the examples in the parts' order
    out = np.empty(int(totals.sum()), dtype=np.int64)  # every element is written by exactly one part
    for values, lengths in parts:
        if lengths.max() <= 1:  # one element per example at most (EOS, a mode token): index directly
            out[start[lengths == 1]] = values
        else:
            offsets = np.cumsum(lengths) - lengths  # (P,) where each example's part begins in `values`
            dest = np.repeat(start - offsets, lengths)
            dest += np.arange(len(dest))
            out[dest] = values
        start = start + lengths
    return out, out_totals
