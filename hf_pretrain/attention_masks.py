"""Attention masks from compact per-token columns: documents, prefixes and padding as one (B, 1, T, T) pattern.

Collators describe a batch's attention with per-token columns, never with a (T, T) table per row:

* `document_ids` (B, T) int64: the document of each token within its row (0, 1, 2, ...), -1 at padding;
* `prefix_mask` (B, T) bool, optional: tokens of a bidirectional prefix (prefix-LM, the inputs of decoder-only
  span corruption and UL2), which attend to every prefix token of their document.

`attention_pattern` turns them into the boolean (B, T, T) pattern, and `document_attention_mask` into the 4D mask in
the form an attention implementation consumes (`MASK_FORMATS`). The trainer calls it on the device at the step
(`hf_pretrain.training.document_mask`); a collator used without our trainer calls it in the DataLoader worker.

Query i may attend to key j iff both are real tokens of the same document and
    j <= i                         (causal; every position under bidirectional attention), or
    prefix[i] and prefix[j]        (both in the document's bidirectional prefix),
or i == j: every query keeps its own key, so a padded query row (cut off from every document) has exactly one
finite key instead of an all -inf softmax row, whose NaN would poison the backward even where no loss reads it.
"""

from __future__ import annotations

import torch

__all__ = [
    "MASK_FORMATS",
    "attention_pattern",
    "document_attention_mask",
    "document_block_mask",
    "document_position_ids",
]

# Attention implementations that take a custom mask, and the form each consumes: eager adds the mask to the
# scores, so it needs the additive float form (a boolean mask there would add 0/1 and mask nothing); sdpa takes
# a boolean mask, True = attend; flex_attention takes torch's BlockMask, built from the same key ranges without
# any (T, T) table (its kernel skips the blocks no query of a tile may see).
MASK_FORMATS = {"sdpa": "bool", "eager": "additive", "flex_attention": "block"}


def unsupported_implementation(implementation: str) -> ValueError:
    """The error for an implementation that takes no 4D mask (flash kernels take cu_seq_lens instead)."""
    if "flash" in implementation:
        return ValueError(
            f"attn_implementation={implementation!r} cannot take a 4D attention mask; use padding-free batches "
            "(position_ids restarting per document, no attention_mask) so it isolates documents with cu_seq_lens."
        )
    return ValueError(
        f"attn_implementation={implementation!r} cannot take a 4D attention mask; use one of {tuple(MASK_FORMATS)}."
    )


def _check_shapes(document_ids: torch.Tensor, prefix_mask: torch.Tensor | None) -> None:
    if document_ids.dim() != 2:
        raise ValueError(f"document_ids must be (batch, length), got shape {tuple(document_ids.shape)}.")
    if prefix_mask is not None and prefix_mask.shape != document_ids.shape:
        raise ValueError(
            f"prefix_mask {tuple(prefix_mask.shape)} must have document_ids' shape {tuple(document_ids.shape)}."
        )


def _key_ranges(document_ids, real, causal: bool, prefix) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(lo, hi) (B, T): the keys query i may see are exactly [lo, hi), or None when that does not hold (documents
    that are not contiguous, or a prefix that does not start its document)."""
    batch, length = document_ids.shape
    arange = torch.arange(length, device=document_ids.device).expand(batch, length)  # (B, T)
    starts = torch.ones_like(real)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    lo = torch.where(starts, arange, torch.zeros_like(arange)).cummax(-1).values  # (B, T) first token of own run
    # A document id that comes back after another run is not contiguous: the ranges would miss its first run.
    run_id = starts.cumsum(-1)  # (B, T) index of each contiguous run
    first_run = torch.full((batch, length + 1), length + 1, device=document_ids.device, dtype=run_id.dtype)
    slot = (document_ids + 1).clamp(min=0)  # (B, T); padding (-1) -> slot 0, never checked
    first_run.scatter_reduce_(1, slot, run_id, reduce="amin")
    if (real & (first_run.gather(1, slot) != run_id)).any():
        return None
    ends = torch.ones_like(real)
    ends[:, :-1] = starts[:, 1:]
    flipped = torch.where(ends, arange, torch.full_like(arange, length)).flip(-1).cummin(-1).values.flip(-1)
    end = flipped + 1  # (B, T) one past the last token of own run
    if not causal:
        hi = end
    elif prefix is None:
        hi = arange + 1
    else:
        in_prefix = prefix & real
        count = torch.zeros_like(arange).scatter_add_(1, run_id - 1, in_prefix.long())  # (B, T) prefix tokens per run
        prefix_end = lo + count.gather(1, run_id - 1)  # (B, T)
        if (in_prefix != ((arange < prefix_end) & real)).any():  # prefix tokens not at the start of their document
            return None
        hi = torch.maximum(arange + 1, prefix_end)
    # Padding sees only itself (see the module docstring); real tokens never see padding, which is its own run.
    return torch.where(real, lo, arange), torch.where(real, hi, arange + 1)


def _token_columns(document_ids, attention_mask, prefix_mask):
    """(documents, real, prefix), each (B, T): document ids with padding as -1, real tokens, the bool prefix."""
    _check_shapes(document_ids, prefix_mask)
    device = document_ids.device
    real = document_ids >= 0
    if attention_mask is not None:
        real = real & attention_mask.to(device=device, dtype=torch.bool)
    prefix = prefix_mask.to(device=device, dtype=torch.bool) if prefix_mask is not None else None
    return torch.where(real, document_ids, torch.full_like(document_ids, -1)), real, prefix


def attention_pattern(
    document_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    causal: bool,
    prefix_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """(B, T, T) bool: query i may attend to key j (see the module docstring).

    Documents are contiguous in packed rows and prefixes start their document, so each query sees one range of
    keys [lo, hi): two comparisons per (T, T) entry instead of a block-diagonal equality, two padding masks, the
    direction and the diagonal. Other layouts take the general formula.
    """
    documents, real, prefix = _token_columns(document_ids, attention_mask, prefix_mask)
    device = document_ids.device
    length = document_ids.shape[-1]
    q = torch.arange(length, device=device)[:, None]  # (T, 1)
    kv = torch.arange(length, device=device)[None, :]  # (1, T)
    ranges = _key_ranges(documents, real, causal, prefix)
    if ranges is not None:
        lo, hi = ranges  # lo <= i < hi: the diagonal is in every range already
        allowed = torch.ge(kv, lo[..., None]).logical_and_(kv < hi[..., None])  # (B, T, T)
    else:
        allowed = general_pattern(documents, real, causal, prefix) | (q == kv)
    if sliding_window is not None:
        # transformers' overlays: causal `kv > q - w` (sliding_window_overlay), bidirectional `|q - kv| <= w`
        allowed &= ((kv > q - sliding_window) if causal else ((q - kv).abs() <= sliding_window)) | (q == kv)
    return allowed


def general_pattern(document_ids, real, causal: bool, prefix) -> torch.Tensor:
    """The pattern straight from its definition (any layout): same document, both real, and j <= i or both prefix."""
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T): block-diagonal by document
    allowed = same & real[:, :, None] & real[:, None, :]  # padding neither as query nor as key
    if causal:
        length = document_ids.shape[-1]
        q = torch.arange(length, device=document_ids.device)[:, None]
        direction = torch.arange(length, device=document_ids.device)[None, :] <= q  # (T, T)
        if prefix is not None:
            direction = direction | (prefix[:, :, None] & prefix[:, None, :])  # (B, T, T)
        allowed = allowed & direction
    return allowed


def in_format(allowed: torch.Tensor, implementation: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A (B, T, T) bool pattern as the (B, 1, T, T) mask `implementation` consumes (see `MASK_FORMATS`)."""
    mask = allowed[:, None]  # (B, 1, T, T): one mask for all heads
    fmt = MASK_FORMATS.get(implementation)
    if fmt == "bool":
        return mask
    if fmt == "additive":
        dtype = dtype or torch.float32
        return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    raise unsupported_implementation(implementation)


def document_attention_mask(
    document_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    causal: bool,
    implementation: str,
    dtype: torch.dtype | None = None,
    sliding_window: int | None = None,
    prefix_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (B, 1, T, T) mask that keeps the documents of packed rows apart, in the format of `implementation`.

    Args:
        document_ids: (B, T) int, the document of each token within its row (0, 1, ...), negative at padding.
        attention_mask: (B, T) optional padding mask (1 = token, 0 = padding); combined with `document_ids < 0`.
        causal: key j is visible from query i only when j <= i (CLM, prefix-LM); else the whole document (MLM).
        implementation: "eager" (additive float in `dtype`, 0 / finfo.min), "sdpa" (bool, True = attend),
            anything else raises a ValueError.
        dtype: the eager mask's dtype (the model's compute dtype); float32 when None. Ignored for sdpa.
        sliding_window: also restrict to transformers' sliding window (for sliding-attention layers).
        prefix_mask: (B, T) bool, with `causal`: the tokens of each document's bidirectional prefix.

    >>> document_attention_mask(torch.tensor([[0, 0, 0, 1, 1, -1]]), causal=True, implementation="sdpa",
    ...                         prefix_mask=torch.tensor([[1, 1, 0, 1, 0, 0]]))[0, 0].int().tolist()
    [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]
    """
    if implementation not in MASK_FORMATS:
        raise unsupported_implementation(implementation)
    if MASK_FORMATS[implementation] == "block":
        return document_block_mask(
            document_ids, attention_mask, causal=causal, prefix_mask=prefix_mask, sliding_window=sliding_window
        )
    pattern = attention_pattern(
        document_ids, attention_mask, causal=causal, prefix_mask=prefix_mask, sliding_window=sliding_window
    )
    return in_format(pattern, implementation, dtype)


def document_block_mask(
    document_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    causal: bool,
    prefix_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
):
    """The same pattern as `attention_pattern`, as flex_attention's BlockMask (B, 1 head, T, T).

    The mask_mod reads the (B, T) key ranges (or, for layouts without them, the per-token document ids), so
    nothing of size (T, T) is kept: `create_block_mask` evaluates it tile by tile and stores which tiles are full,
    partial or empty.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    documents, real, prefix = _token_columns(document_ids, attention_mask, prefix_mask)
    ranges = _key_ranges(documents, real, causal, prefix)
    if ranges is not None:
        lo, hi = ranges  # (B, T) each

        def allowed(b, h, q, kv):
            return (kv >= lo[b, q]) & (kv < hi[b, q])

    else:
        prefix = torch.zeros_like(real) if prefix is None else prefix & real

        def allowed(b, h, q, kv):
            same = (documents[b, q] == documents[b, kv]) & real[b, q] & real[b, kv]
            if causal:
                same = same & ((kv <= q) | (prefix[b, q] & prefix[b, kv]))
            return same | (q == kv)

    mask_mod = allowed
    if sliding_window is not None:

        def mask_mod(b, h, q, kv):  # transformers' overlays, as in attention_pattern
            window = (kv > q - sliding_window) if causal else ((q - kv).abs() <= sliding_window)
            return allowed(b, h, q, kv) & (window | (q == kv))

    batch, length = document_ids.shape
    return create_block_mask(mask_mod, batch, None, length, length, device=document_ids.device)


def document_position_ids(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) positions restarting at 0 at each document (and counting on through trailing padding)."""
    length = document_ids.shape[-1]
    arange = torch.arange(length, device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, arange, torch.zeros_like(arange)).cummax(-1).values  # (B, T): start of own document
    return arange - first
