"""Document structure of packed blocks: `document_lengths` → per-token positions and document ids, and the
attention that keeps the documents apart.

A packed block (`hf_pretrain.data.packing.block_document_lengths`) carries `document_lengths`, the lengths of the
document pieces in the row (summing to its length). The causal and masked collators turn it into two compact
per-token columns:

* `position_ids` (B, T) int64: restart at 0 at every document start. Padding continues the positions of the row's
  last document, so a row holding one document gets exactly the default positions `arange(T)`, and detectors that
  cut documents where positions do not step by one (transformers' `find_packed_sequence_indices`) see padding as
  part of the last document, after all of its real tokens.
* `document_ids` (B, T) int64: 0, 1, 2, ... for the pieces of each row, -1 at padding (and wherever a given
  `attention_mask` is 0). Token i may attend to token j iff `document_ids[b, i] == document_ids[b, j] >= 0`
  (and j <= i under causal attention).

No model takes `document_ids`: a model's `**kwargs` would swallow it and let the documents attend to each other
while their positions restart, a silently wrong result. So the collators finish the batch in one of two forms
(`attention_on_device`):

* False (the default, any Trainer and model): the batch isolates documents by itself (`isolate_in_batch`). Causal
  LM, without an `attn_implementation`: `position_ids` and no `attention_mask`, which transformers'
  `create_causal_mask` turns into the block-diagonal causal mask itself (`_preprocess_mask_arguments` runs
  `find_packed_sequence_indices` when the attention mask is None and the forward has no KV cache; the Trainer sets
  `model.config.use_cache = TrainingArguments.use_cache`, False by default). Right padding is safe there: it
  continues the last document's positions, its keys come after every real token (no causal query sees them) and
  its labels are -100. Otherwise (masked LM, whose bidirectional mask has no packed detection; or causal LM with
  an `attn_implementation`): the finished (B, 1, T, T) `attention_mask`, in the implementation's format, and
  `position_ids`; the mask is `hf_pretrain.attention_masks.document_attention_mask`'s, written block by block
  (`block_document_mask`). It holds B·T² entries (bool for sdpa, float32 for eager): 134 MB of bool per 8 x 4096
  batch, which is what the device form avoids.
* True (`PretrainingTrainer`, the recipe): the compact columns `document_ids`, `position_ids` and a (B, T)
  padding `attention_mask`; the trainer builds the mask on the device at the step
  (`hf_pretrain.training.document_mask.isolate_documents`), so no (T, T) object leaves the DataLoader worker.

Both forms give every real token the same keys, hence the same outputs there. Padding-free, a feature's pieces
become documents of their own in `cu_seq_lens` (see `collate_packed`), in either mode.

>>> pieces, counts = document_pieces([[3, 1, 4]], row_lengths=np.array([8]))
>>> position_ids, document_ids = padded_document_columns(pieces, counts, np.array([8]), pad_to_multiple_of=5)
>>> position_ids.tolist(), document_ids.tolist()
([[0, 1, 2, 0, 0, 1, 2, 3, 4, 5]], [[0, 0, 0, 1, 2, 2, 2, 2, -1, -1]])
>>> document_starts(document_ids).astype(int).tolist()
[[0, 0, 0, 1, 1, 0, 0, 0, 0, 0]]
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from hf_pretrain.attention_masks import (
    MASK_FORMATS,
    document_attention_mask,
    document_position_ids,
    unsupported_implementation,
)

from ._keyed import _GOLDEN32, _MASK32, _position_hashes, mix32, sample_keys
from ._padding import flatten, padded_length

DOCUMENT_KEY = "document_lengths"
# What the collators build from `document_lengths`; a feature carrying one as well would be ambiguous.
DOCUMENT_COLUMNS = ("position_ids", "document_ids")
PADDING_DOCUMENT_ID = -1


def document_pieces(rows: Sequence, row_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pieces (P,) int64, counts (B,) int64): the features' `document_lengths` rows back to back and how many
    each has. Raises a ValueError for lengths that are not positive or do not sum to the feature's `input_ids`
    length."""
    pieces, counts = flatten(rows)  # (P,), (B,)
    if pieces.size and pieces.min() < 1:
        raise ValueError(f"document_lengths must be positive, got {pieces[pieces < 1][:4].tolist()}.")
    row_of_piece = np.repeat(np.arange(len(counts)), counts)  # (P,)
    sums = np.bincount(row_of_piece, weights=pieces, minlength=len(counts)).astype(np.int64)  # (B,)
    wrong = np.flatnonzero(sums != row_lengths)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(
            f"Feature {i}'s document_lengths sum to {sums[i]}, not to its input_ids length {row_lengths[i]}."
        )
    return pieces, counts


def document_keys(flat: np.ndarray, pieces: np.ndarray, seed: int, epoch: int = 0) -> np.ndarray:
    """`sample_keys` of the pieces (P,) >= 1 tokens long of `flat` (N,), the same uint32 keys, without padding the
    pieces to (P, L): packed rows' pieces pad to ~3x their tokens. Each key depends on its piece's tokens only."""
    if not len(pieces):
        return np.zeros(0, dtype=np.uint32)
    longest = int(pieces.max())
    if pieces.min() == longest:  # equal pieces: the (P, L) view is free
        return sample_keys(flat.reshape(len(pieces), longest), pieces, seed, epoch)
    starts = np.cumsum(pieces) - pieces  # (P,)
    position = np.arange(len(flat)) - np.repeat(starts, pieces)  # (N,) offset of each token in its piece
    token_hash = flat.astype(np.uint32)
    token_hash ^= _position_hashes(1 << (longest - 1).bit_length())[position]  # a power of two: one cached table
    mix32(token_hash)
    # sample_keys' (B,) content sum, segment by segment (uint32 addition wraps mod 2**32, as its cast does)
    content = np.add.reduceat(token_hash, starts, dtype=np.uint64).astype(np.uint32) ^ pieces.astype(np.uint32)
    base = mix32(np.array([(seed * _GOLDEN32 + epoch) & _MASK32], dtype=np.uint32))
    return mix32(content ^ base)


def padded_document_columns(
    pieces: np.ndarray, counts: np.ndarray, row_lengths: np.ndarray, pad_to_multiple_of: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`position_ids` and `document_ids` (B, T) int64 of right-padded rows, T as `pad_flat` makes it (see the
    module docstring)."""
    width = padded_length(int(row_lengths.max()) if len(row_lengths) else 0, pad_to_multiple_of)
    first_piece = np.cumsum(counts) - counts  # (B,) index of each row's first piece in `pieces`
    local_id = np.arange(len(pieces)) - np.repeat(first_piece, counts)  # (P,) piece index within its row
    if not len(row_lengths) or row_lengths.min() == width:
        # Full rows (packed blocks): flat (N,) values, one np.repeat each, and a free reshape (the fastest of the
        # layouts tried: ~1.5x a (B, T) scan).
        document_ids = np.repeat(local_id, pieces).reshape(len(row_lengths), width)
        positions = np.arange(int(row_lengths.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # (N,)
        return positions.reshape(len(row_lengths), width), document_ids
    # Padded rows: one running sum along each row of what changes where a piece starts, its start column (high 32
    # bits) and its index + 1 (low 32 bits), and where the padding starts (index + 1 back to 0, so -1): ~2x faster
    # than laying repeats out in (B, T). Padding keeps the last piece's start: it continues its positions.
    start = _start_columns(pieces, counts, row_lengths)  # (P,)
    padded = np.flatnonzero((row_lengths < width) & (counts > 0))  # (R,) rows with padding after a piece
    last = (first_piece + counts - 1)[padded]  # (R,) their last pieces
    running = _running_sum(
        (start << 32) | (local_id + 1),
        start,
        counts,
        first_piece,
        width,
        (padded * width + row_lengths[padded], start[last] << 32),
    )  # (B, T)
    position_ids = running >> 32
    np.subtract(np.arange(width), position_ids, out=position_ids)
    document_ids = np.bitwise_and(running, 0xFFFFFFFF, out=running)
    document_ids -= 1
    return position_ids, document_ids


def document_prefix_mask(
    pieces: np.ndarray, counts: np.ndarray, row_lengths: np.ndarray, prefix: np.ndarray, width: int
) -> np.ndarray:
    """(B, T) bool: the first `prefix[p]` tokens of every piece (P,) of right-padded rows of `width` columns."""
    start = _start_columns(pieces, counts, row_lengths)  # (P,)
    if not len(row_lengths) or row_lengths.min() == width:  # full rows: each token's own prefix end, repeated
        prefix_end = np.repeat(start + prefix, pieces).reshape(len(row_lengths), width)
    else:  # padded rows: the same by a running sum (padding keeps the last piece's, which ends before it)
        prefix_end = _running_sum(start + prefix, start, counts, np.cumsum(counts) - counts, width)
    return np.arange(width) < prefix_end


def _start_columns(pieces: np.ndarray, counts: np.ndarray, row_lengths: np.ndarray) -> np.ndarray:
    """(P,) the column at which each piece starts in its row."""
    return np.cumsum(pieces) - pieces - np.repeat(np.cumsum(row_lengths) - row_lengths, counts)


def _running_sum(values, start, counts, first_piece, width, then=None) -> np.ndarray:
    """(B, T) int64: every column holds the value (P,) of the last piece of its row starting at or before it (0
    before the first piece), or from `then`'s flat (B * T) indices on (one per row at most, after its pieces) their
    values: a running sum along each row of the changes where they start."""
    heads = first_piece[counts > 0]  # (B',) each row's first piece
    step = np.diff(values, prepend=0)  # (P,) change from the previous piece ...
    step[heads] = values[heads]  # ... of the same row
    changes = np.zeros(len(counts) * width, dtype=np.int64)
    changes[np.repeat(np.arange(len(counts)) * width, counts) + start] = step
    if then is not None and len(then[0]):
        at, after = then
        changes[at] = after - values[(first_piece + counts - 1)[at // width]]  # from the row's last piece's value
    return np.cumsum(changes.reshape(len(counts), width), axis=1)


def document_starts(document_ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """(B, T) bool numpy: True at the first token of every document but a row's first, the tokens whose causal-LM
    label must be -100 (the model would predict them from the previous document's last token). For unshifted
    next-token targets (target[t] = token t + 1) shift it left by one: there the last token of each document
    before a boundary has no target."""
    # In numpy: these elementwise passes cost about half what they cost in torch at (64, 512).
    ids = document_ids.numpy() if isinstance(document_ids, torch.Tensor) else np.asarray(document_ids)
    following = ids[:, 1:]
    starts = np.zeros(ids.shape, dtype=bool)
    np.logical_and(following != ids[:, :-1], following != PADDING_DOCUMENT_ID, out=starts[:, 1:])
    return starts


def check_attention_on_device(value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"attention_on_device must be True or False, got {value!r}.")


def isolate_in_batch(batch: dict, *, causal: bool, implementation: str | None) -> dict:
    """`batch` (a dict, changed in place and returned) with `document_ids` replaced by the attention that keeps its
    documents apart inside the batch itself (module docstring): for causal attention with `implementation` None,
    no `attention_mask` at all (`position_ids` restarting per document); else the (B, 1, T, T) document mask in
    the format of `implementation` ("sdpa": bool, "eager": additive float32), combined with the batch's padding.

    Raises a ValueError when the mask is to be dropped but a given `attention_mask` hides a token that a real one
    follows (left padding): with no mask, that token would be visible to every later token of its row.
    """
    document_ids = batch.pop("document_ids")
    ids = document_ids.numpy() if isinstance(document_ids, torch.Tensor) else np.asarray(document_ids)  # (B, T)
    padding = batch.get("attention_mask")
    if padding is not None:  # tokens the padding mask hides belong to no document
        padding = padding.numpy() if isinstance(padding, torch.Tensor) else np.asarray(padding)
        ids = np.where(padding != 0, ids, PADDING_DOCUMENT_ID)
    if batch.get("position_ids") is None:  # restarting positions are what makes a document see only itself
        batch["position_ids"] = document_position_ids(torch.as_tensor(ids))
    if causal and implementation is None:
        real = ids >= 0
        if (real[:, 1:] & ~real[:, :-1]).any():
            raise ValueError(
                "attention_mask hides tokens before real ones (left padding), which a batch without attention_mask "
                "cannot express; right-pad, or set attn_implementation (a 4D mask) or attention_on_device=True."
            )
        batch.pop("attention_mask", None)
        return batch
    batch["attention_mask"] = block_document_mask(ids, causal=causal, implementation=implementation)
    return batch


@functools.lru_cache(maxsize=8)
def _lower(width: int, additive: bool) -> np.ndarray:
    """(width, width) read-only causal block: key j <= query i, as bool or additive float32 (0 / float32 min)."""
    allowed = np.tri(width, dtype=bool)
    table = np.where(allowed, np.float32(0), np.finfo(np.float32).min).astype(np.float32) if additive else allowed
    table.flags.writeable = False
    return table


def block_document_mask(document_ids: np.ndarray, *, causal: bool, implementation: str) -> torch.Tensor:
    """The (B, 1, T, T) mask of `hf_pretrain.attention_masks.document_attention_mask(document_ids, causal=causal,
    implementation=implementation)`, the same tensor, written block by block.

    The general pattern compares every (query, key) pair of every row several times over (B, T, T): ~0.8 s for
    8 x 4096 on one core. Packed rows are contiguous documents followed by padding, so their mask is block-diagonal:
    one slice assignment per document (a cached causal triangle under causal attention) into a zeroed (or, for the
    additive eager form, minimum-filled) array, then each padded query's own key. Rows of any other layout (a
    document id repeated apart, tokens hidden before real ones) go to `document_attention_mask` itself.
    """
    if implementation not in MASK_FORMATS:
        raise unsupported_implementation(implementation)
    rows, width = document_ids.shape
    real = document_ids >= 0  # (B, T)
    contiguous = (
        not (real[:, 1:] & ~real[:, :-1]).any()
        and not ((document_ids[:, 1:] < document_ids[:, :-1]) & real[:, 1:]).any()
    )  # padding only at the end, ids never decreasing: each document is one run
    if not contiguous:
        return document_attention_mask(torch.from_numpy(document_ids), causal=causal, implementation=implementation)
    additive = MASK_FORMATS[implementation] == "additive"
    if additive:
        mask = np.full((rows, width, width), np.finfo(np.float32).min, dtype=np.float32)  # (B, T, T)
    else:
        mask = np.zeros((rows, width, width), dtype=bool)  # (B, T, T)
    keep = np.float32(0) if additive else True
    # Runs of equal ids (documents and padding): a row's first token always starts one, so a run ends where the
    # next one starts in flat order, or at its row's end (the next row's first flat index).
    change = np.ones(document_ids.shape, dtype=bool)
    change[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    starts = np.flatnonzero(change)  # (R,) flat index of each run's first token
    lengths = np.diff(starts, append=document_ids.size)  # (R,)
    is_document = real.reshape(-1)[starts]
    row, start = np.divmod(starts[is_document], width)
    lower = _lower(width, additive) if causal else None
    for b, s, n in zip(row.tolist(), start.tolist(), lengths[is_document].tolist()):
        mask[b, s : s + n, s : s + n] = lower[:n, :n] if causal else keep
    padded_row, padded = np.nonzero(~real)
    mask[padded_row, padded, padded] = keep  # a padded query keeps its own key: no all-masked softmax row
    return torch.from_numpy(mask)[:, None]
