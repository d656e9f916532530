"""The (B, T, T) attention pattern: the range formulation equals the definition on every layout."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_pretrain.attention_masks import (
    attention_pattern,
    document_attention_mask,
    document_block_mask,
    general_pattern,
)


@st.composite
def packed_rows(draw):
    """(document_ids, attention_mask, prefix_mask) of 1–3 right-padded rows of contiguous documents."""
    rows, width = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    ids = torch.full((rows, width), -1)
    prefix = torch.zeros(rows, width, dtype=torch.bool)
    for r in range(rows):
        length = draw(st.integers(0, width))
        position, document = 0, 0
        while position < length:
            n = draw(st.integers(1, length - position))
            ids[r, position : position + n] = document
            prefix[r, position : position + draw(st.integers(0, n))] = True  # each document's prefix starts it
            position, document = position + n, document + 1
    return ids, (ids >= 0).long(), prefix


def definition(ids, mask, causal, prefix):
    """Straight from the module docstring, one (i, j) at a time."""
    rows, width = ids.shape
    out = torch.zeros(rows, width, width, dtype=torch.bool)
    for b in range(rows):
        for i in range(width):
            for j in range(width):
                real = ids[b, i] >= 0 and ids[b, j] >= 0 and mask[b, i] and mask[b, j]
                seen = j <= i or (not causal) or (prefix is not None and prefix[b, i] and prefix[b, j])
                out[b, i, j] = (real and ids[b, i] == ids[b, j] and seen) or i == j
    return out


@settings(max_examples=150, deadline=None)
@given(packed_rows(), st.booleans(), st.booleans())
def test_ranges_equal_the_definition(layout, causal, with_prefix):
    ids, mask, prefix = layout
    prefix = prefix if (with_prefix and causal) else None
    expected = definition(ids, mask, causal, prefix)
    assert torch.equal(attention_pattern(ids, mask, causal=causal, prefix_mask=prefix), expected)


def test_layouts_without_ranges_take_the_general_formula():
    # A document that comes back after another, and a prefix in the middle of its document.
    ids = torch.tensor([[0, 0, 1, 0, -1]])
    real = ids >= 0
    assert torch.equal(
        attention_pattern(ids, causal=True), general_pattern(ids, real, True, None) | torch.eye(5, dtype=torch.bool)
    )
    prefix = torch.tensor([[0, 1, 1, 0, 0]], dtype=torch.bool)
    ids = torch.tensor([[0, 0, 0, 0, -1]])
    got = attention_pattern(ids, causal=True, prefix_mask=prefix)
    assert torch.equal(got, definition(ids, (ids >= 0).long(), True, prefix))


@pytest.mark.parametrize("implementation, dtype", [("sdpa", torch.bool), ("eager", torch.float32)])
def test_formats(implementation, dtype):
    mask = document_attention_mask(torch.tensor([[0, 0, 1]]), causal=False, implementation=implementation)
    assert mask.shape == (1, 1, 3, 3) and mask.dtype == dtype
    with pytest.raises(ValueError, match="flash"):
        document_attention_mask(torch.tensor([[0]]), causal=True, implementation="flash_attention_2")


@settings(max_examples=60, deadline=None)
@given(packed_rows(), st.booleans(), st.booleans(), st.sampled_from([None, 2]))
def test_the_block_mask_is_the_same_pattern(layout, causal, with_prefix, window):
    """flex_attention's BlockMask: its mask_mod, evaluated on the whole grid, is the pattern of the other formats,
    and no tile it marks empty holds an allowed pair (what the kernel skips is really masked)."""
    ids, mask, prefix = layout
    prefix = prefix if (with_prefix and causal) else None
    expected = attention_pattern(ids, mask, causal=causal, prefix_mask=prefix, sliding_window=window)  # (B, T, T)
    block = document_block_mask(ids, mask, causal=causal, prefix_mask=prefix, sliding_window=window)
    rows, width = ids.shape
    b, q, kv = torch.meshgrid(torch.arange(rows), torch.arange(width), torch.arange(width), indexing="ij")
    assert torch.equal(block.mask_mod(b, torch.zeros_like(b), q, kv), expected)
    tiles = block.to_dense()[:, 0].bool()  # (B, tiles_q, tiles_kv): tiles with any allowed pair
    size_q, size_kv = block.BLOCK_SIZE
    for r in range(rows):
        for i, j in expected[r].nonzero().tolist():
            assert tiles[r, i // size_q, j // size_kv]


def test_a_non_contiguous_layout_gets_the_general_block_mask():
    ids = torch.tensor([[0, 0, 1, 0, -1]])  # document 0 comes back after document 1: no key ranges
    block = document_block_mask(ids, causal=True)
    b, q, kv = torch.meshgrid(torch.arange(1), torch.arange(5), torch.arange(5), indexing="ij")
    assert torch.equal(block.mask_mod(b, torch.zeros_like(b), q, kv), attention_pattern(ids, causal=True))
