"""Prefix LM: the 4D mask rule element by element, a tiny Llama that honours it (eager and sdpa), labels, splits."""

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_pretrain.collators._rows import assemble_rows
from hf_pretrain.collators.prefix_lm import DataCollatorForPrefixLM, prefix_lm_attention_mask

MIN = torch.finfo(torch.float32).min


def random_rows(count, lengths, seed=0, vocab=500):
    rng = random.Random(seed)
    lengths = [lengths] * count if isinstance(lengths, int) else lengths
    return [[rng.randrange(200, vocab) for _ in range(n)] for n in lengths]


def reference_mask(lengths, prefixes, width):
    allowed = np.zeros((len(lengths), 1, width, width), dtype=bool)
    for b, (length, prefix) in enumerate(zip(lengths, prefixes)):
        for i in range(width):
            for j in range(width):
                allowed[b, 0, i, j] = (j < prefix or j <= i) and j < length
    return allowed


@settings(max_examples=40, deadline=None)
@given(data=st.data(), width=st.integers(1, 12))
def test_mask_matches_the_rule_elementwise(data, width):
    lengths = data.draw(st.lists(st.integers(1, width), min_size=1, max_size=4))
    prefixes = [data.draw(st.integers(0, n)) for n in lengths]
    expected = reference_mask(lengths, prefixes, width)
    sdpa = prefix_lm_attention_mask(lengths, prefixes, width, "sdpa")
    assert sdpa.dtype == torch.bool and sdpa.shape == (len(lengths), 1, width, width)
    assert np.array_equal(sdpa.numpy(), expected)
    eager = prefix_lm_attention_mask(lengths, prefixes, width, "eager")
    assert eager.dtype == torch.float32
    assert np.array_equal(eager.numpy(), np.where(expected, 0.0, MIN).astype(np.float32))


def test_collator_outputs(tokenizer):
    rows = random_rows(3, [10, 6, 8], seed=1)
    features = [{"input_ids": r, "prefix_length": p} for r, p in zip(rows, [4, 1, 7])]
    batch = DataCollatorForPrefixLM(tokenizer, pad_to_multiple_of=4)(features)
    assert batch["input_ids"].shape == (3, 12)
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["prefix_lengths"].dtype == torch.int64
    assert batch["prefix_lengths"].tolist() == [4, 1, 7]
    for b, (row, prefix) in enumerate(zip(rows, [4, 1, 7])):
        labels = batch["labels"][b].tolist()
        assert labels == [-100] * prefix + row[prefix:] + [-100] * (12 - len(row))
        assert batch["input_ids"][b, : len(row)].tolist() == row
    assert np.array_equal(batch["attention_mask"].numpy(), reference_mask([10, 6, 8], [4, 1, 7], 12))


def test_encoder_decoder_mode_splits_into_inputs_and_labels(tokenizer):
    rows = random_rows(3, [10, 6, 8], seed=2)
    features = [{"input_ids": r, "prefix_length": p} for r, p in zip(rows, [4, 1, 7])]
    collator = DataCollatorForPrefixLM(tokenizer, decoder_only=False, return_decoder_input_ids=True)
    batch = collator(features)
    assert all(v.dtype == torch.int64 for v in batch.values())
    pad = tokenizer.pad_token_id
    for b, (row, prefix) in enumerate(zip(rows, [4, 1, 7])):
        width = batch["input_ids"].shape[1]
        assert batch["input_ids"][b].tolist() == row[:prefix] + [pad] * (width - prefix)
        assert batch["attention_mask"][b].tolist() == [1] * prefix + [0] * (width - prefix)
        target = [t for t in batch["labels"][b].tolist() if t != -100]
        assert target == row[prefix:]
        assert batch["decoder_input_ids"][b, : len(target)].tolist() == [pad] + target[:-1]


def test_drawn_split_points_lie_in_the_range_and_are_keyed(tokenizer):
    rows = random_rows(400, 50, seed=3)
    collator = DataCollatorForPrefixLM(tokenizer, prefix_fraction_range=(0.2, 0.6), seed=0)
    prefix = collator([{"input_ids": r} for r in rows])["prefix_lengths"].numpy()
    assert prefix.min() >= 10 and prefix.max() < 30
    assert len(np.unique(prefix)) > 15  # spread over the range, not one value
    again = collator([{"input_ids": r} for r in rows[200:] + rows[:200]])["prefix_lengths"].numpy()
    assert np.array_equal(np.concatenate([prefix[200:], prefix[:200]]), again)  # any batch, same split
    full = DataCollatorForPrefixLM(tokenizer)([{"input_ids": r[:2]} for r in rows])["prefix_lengths"]
    assert (full == 1).all()  # clipped so both parts keep a token


def test_assemble_rows_places_pieces_in_output_rows():
    pieces = [(np.array([1, 2, 3, 4]), np.array([3, 1])), (9, np.array([1, 0])), (np.array([7, 8]), np.array([1, 1]))]
    out, totals = assemble_rows(pieces, pad_value=0, rows=np.array([1, 0]))
    assert out.tolist() == [[4, 8, 0, 0, 0], [1, 2, 3, 9, 7]] and totals.tolist() == [2, 5]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_tiny_llama_sees_the_prefix_bidirectionally(tokenizer, attn_implementation):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        attn_implementation=attn_implementation,
    )
    model = LlamaForCausalLM(config).eval()
    collator = DataCollatorForPrefixLM(tokenizer, attn_implementation=attn_implementation)
    row, prefix = random_rows(1, 12, seed=4)[0], 5
    short = random_rows(1, 4, seed=5)[0]  # a padded row in the same batch

    def logits(tokens):
        batch = collator([{"input_ids": tokens, "prefix_length": prefix}, {"input_ids": short, "prefix_length": 2}])
        with torch.no_grad():
            out = model(**batch)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)  # padding rows do not produce NaN
        return out.logits[0]

    base = logits(row)
    in_prefix = list(row)
    in_prefix[prefix - 1] = row[prefix - 1] + 1
    after_prefix = list(row)
    after_prefix[prefix] = row[prefix] + 1
    assert not torch.allclose(logits(in_prefix)[0], base[0], atol=1e-5)  # position 0 sees the whole prefix
    assert torch.allclose(logits(after_prefix)[0], base[0], atol=1e-6)  # ... and nothing after it
    assert torch.allclose(logits(after_prefix)[:prefix], base[:prefix], atol=1e-6)
    # The 2D causal path (no prefix) would not let position 0 see position 4.
    with torch.no_grad():
        causal = model(input_ids=torch.tensor([row, in_prefix])).logits
    assert torch.allclose(causal[0, 0], causal[1, 0], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prefix_fraction_range": (0.5, 0.2)}, "prefix_fraction_range"),
        ({"prefix_fraction_range": (-0.1, 0.5)}, "prefix_fraction_range"),
        ({"attn_implementation": "flash_attention_2"}, "attn_implementation"),
    ],
)
def test_bad_arguments_raise(tokenizer, kwargs, name):
    with pytest.raises(ValueError, match=name):
        DataCollatorForPrefixLM(tokenizer, **kwargs)


def test_bad_features_raise(tokenizer):
    collator = DataCollatorForPrefixLM(tokenizer)
    with pytest.raises(ValueError, match="prefix_length"):
        collator([{"input_ids": [300, 301, 302], "prefix_length": 3}])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        collator([{"input_ids": [300]}])
    with pytest.raises(ValueError, match="lengths"):
        prefix_lm_attention_mask([0, 2], [0, 1], 2)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_on_device_sends_columns_instead_of_the_mask(tokenizer, attn_implementation):
    from hf_pretrain.attention_masks import document_attention_mask

    rows = random_rows(3, [10, 6, 8], seed=6)
    features = [{"input_ids": r, "prefix_length": p} for r, p in zip(rows, [4, 1, 7])]
    worker = DataCollatorForPrefixLM(tokenizer, attn_implementation=attn_implementation, pad_to_multiple_of=4)
    device = DataCollatorForPrefixLM(
        tokenizer, attn_implementation=attn_implementation, pad_to_multiple_of=4, attention_on_device=True
    )
    a, b = worker(features), device(features)
    assert sorted(b) == ["attention_mask", "document_ids", "input_ids", "labels", "prefix_lengths", "prefix_mask"]
    for key in ("input_ids", "labels", "prefix_lengths"):
        assert torch.equal(a[key], b[key])
    real = torch.arange(12)[None, :] < torch.tensor([10, 6, 8])[:, None]  # (3, 12)
    assert torch.equal(b["attention_mask"], real.long())
    assert torch.equal(b["document_ids"], torch.where(real, 0, -1))
    assert torch.equal(b["prefix_mask"], torch.arange(12)[None, :] < torch.tensor([[4], [1], [7]]))
    # The device builds the worker's pattern on every real query (padding queries keep only their own key there)
    built = document_attention_mask(
        b["document_ids"], causal=True, implementation=attn_implementation, prefix_mask=b["prefix_mask"]
    )
    assert torch.equal(built[:, 0][real], a["attention_mask"][:, 0][real])
