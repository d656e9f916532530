"""T5 span corruption: round trip, T5's lengths and statistics, keyed reproducibility, errors, a T5 that learns."""

import copy
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_pretrain.collators import _span_draw
from hf_pretrain.collators._keyed import _stream_keys, keyed_bits, sample_keys
from hf_pretrain.collators._span_draw import corrupted_lengths, noise_counts, segment_lengths
from hf_pretrain.collators.span_corruption import (
    DataCollatorForSpanCorruption,
    add_sentinel_tokens,
    compute_span_corruption_lengths,
    sentinel_ids,
)
from hf_pretrain.data.tokenizer import train_tokenizer

VOCAB_LOW = 200  # ordinary tokens of the fixture vocab (above the specials, sentinels and mode tokens)


def random_rows(count, length, seed=0, vocab=500):
    rng = random.Random(seed)
    lengths = [length] * count if isinstance(length, int) else length
    return [[rng.randrange(VOCAB_LOW, vocab) for _ in range(n)] for n in lengths]


def parse_targets(labels, sentinels, eos):
    """labels row → {sentinel id: span tokens}, in order; checks the layout sentinel, span, ..., EOS."""
    labels = [t for t in labels if t != -100]
    assert labels[-1] == eos and labels[0] in sentinels
    spans, current = {}, None
    for token in labels[:-1]:
        if token in sentinels:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    return spans


def reinsert(inputs, labels, sentinels, eos, pad):
    """Put every span back at its sentinel: must give the raw sequence."""
    spans = parse_targets(labels, sentinels, eos)
    inputs = list(inputs)
    while inputs and inputs[-1] == pad:
        inputs.pop()
    assert inputs[-1] == eos
    out = []
    for token in inputs[:-1]:
        out.extend(spans.pop(token) if token in sentinels else [token])
    assert not spans, "every span must have its sentinel in the inputs"
    return out


def sentinel_numbers(row, tokenizer):
    return [int(t[len("<extra_id_") : -1]) for t in tokenizer.convert_ids_to_tokens(row) if t.startswith("<extra_id_")]


# ---------------------------------------------------------------------------------------------------------------
# Round trip and layout
# ---------------------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 90), min_size=1, max_size=6),
    noise_density=st.floats(0.02, 0.95),
    mean_noise_span_length=st.floats(1.0, 12.0),
    decoder_only=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_round_trip_restores_the_raw_tokens(
    tokenizer, lengths, noise_density, mean_noise_span_length, decoder_only, seed
):
    rows = random_rows(len(lengths), lengths, seed=seed)
    collator = DataCollatorForSpanCorruption(
        tokenizer, noise_density, mean_noise_span_length, decoder_only=decoder_only, seed=seed
    )
    batch = collator([{"input_ids": r} for r in rows])
    sentinels = set(collator.sentinel_ids.tolist())
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    expected_inputs, expected_targets = corrupted_lengths(np.array(lengths), noise_density, mean_noise_span_length)
    for b, row in enumerate(rows):
        if decoder_only:
            prefix = int(batch["prefix_lengths"][b])
            sequence = batch["input_ids"][b].tolist()
            inputs, labels = sequence[:prefix], batch["labels"][b, prefix:].tolist()
            assert (batch["labels"][b, :prefix] == -100).all()
            assert labels[: expected_targets[b]] == sequence[prefix : prefix + expected_targets[b]]
        else:
            inputs, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
            assert batch["attention_mask"][b].sum() == expected_inputs[b]
        assert len([t for t in inputs if t != pad]) == expected_inputs[b]
        assert len([t for t in labels if t != -100]) == expected_targets[b]
        assert reinsert(inputs, labels, sentinels, eos, pad) == row
        # Sentinels count up from <extra_id_0> in both parts, one per span.
        numbers = sentinel_numbers(inputs, tokenizer)
        assert numbers == list(range(len(numbers))) == sentinel_numbers([t for t in labels if t >= 0], tokenizer)


def test_worked_example_layout(tokenizer):
    collator = DataCollatorForSpanCorruption(tokenizer, noise_density=0.3, mean_noise_span_length=2.0)
    row = list(range(300, 320))
    batch = collator([{"input_ids": row}])
    inputs = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    labels = tokenizer.convert_ids_to_tokens(batch["labels"][0])
    # 20 tokens at 30%: 6 noise tokens in 3 spans; T5 starts with kept tokens and ends with a noise span.
    assert len(inputs) == 14 + 3 + 1 and len(labels) == 6 + 3 + 1
    assert inputs[0] != "<extra_id_0>" and inputs[-2:] == ["<extra_id_2>", "</s>"]
    assert labels[0] == "<extra_id_0>" and labels[-1] == "</s>"
    assert batch["labels"][0, -2] == row[-1]  # the last raw token is always noise
    assert "decoder_input_ids" not in batch
    assert all(batch[k].dtype == torch.int64 for k in ("input_ids", "attention_mask", "labels"))


def test_decoder_input_ids_are_labels_shifted_right(tokenizer):
    collator = DataCollatorForSpanCorruption(tokenizer, return_decoder_input_ids=True)
    batch = collator([{"input_ids": r} for r in random_rows(3, [40, 25, 33])])
    labels, decoder = batch["labels"], batch["decoder_input_ids"]
    assert (decoder[:, 0] == tokenizer.pad_token_id).all()
    expected = torch.where(labels[:, :-1] == -100, tokenizer.pad_token_id, labels[:, :-1])
    assert torch.equal(decoder[:, 1:], expected)


def test_non_contiguous_sentinel_ids_come_from_the_tokenizer(tiny_corpus):
    # Sentinels added after training sit at the vocab end in ascending order (T5 counts down): ids are looked up.
    tok = train_tokenizer(tiny_corpus, vocab_size=400, num_sentinels=0, min_frequency=1)
    assert add_sentinel_tokens(tok, 8) == 8 and add_sentinel_tokens(tok, 8) == 0
    ids = sentinel_ids(tok)
    assert np.all(np.diff(ids) == 1)
    batch = DataCollatorForSpanCorruption(tok, noise_density=0.5)([{"input_ids": list(range(100, 130))}])
    used = [t for t in batch["labels"][0].tolist() if t in set(ids.tolist())]
    assert used == ids[: len(used)].tolist() and len(used) == 5


# ---------------------------------------------------------------------------------------------------------------
# Lengths and statistics
# ---------------------------------------------------------------------------------------------------------------


def test_compute_lengths_matches_t5():
    assert compute_span_corruption_lengths(512, 0.15, 3.0) == (568, 114)  # T5 / run_t5_mlm_flax defaults
    assert compute_span_corruption_lengths(128, 0.15, 3.0) == (141, 29)


@pytest.mark.parametrize("noise_density", [0.05, 0.15, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("mean_noise_span_length", [1.0, 3.0, 8.0, 32.0])
def test_every_batch_has_the_promised_shape(tokenizer, noise_density, mean_noise_span_length):
    with pytest.raises(ValueError, match="too short: even 2 raw tokens corrupt to 3"):
        compute_span_corruption_lengths(2, noise_density, mean_noise_span_length)  # inputs, sentinel, EOS
    sentinels = set(sentinel_ids(tokenizer).tolist())
    for inputs_length in (3, 4, 9, 33, 128, 200):
        raw, targets = compute_span_corruption_lengths(inputs_length, noise_density, mean_noise_span_length)
        assert corrupted_lengths(np.array([raw]), noise_density, mean_noise_span_length)[1][0] == targets
        assert corrupted_lengths(np.array([raw + 1]), noise_density, mean_noise_span_length)[0][0] > inputs_length
        collator = DataCollatorForSpanCorruption(
            tokenizer, noise_density, mean_noise_span_length, inputs_length=inputs_length
        )
        rows = random_rows(3, raw, seed=inputs_length)
        batch = collator([{"input_ids": r} for r in rows])
        assert batch["input_ids"].shape == (3, inputs_length) and batch["labels"].shape == (3, targets)
        for row, inputs, labels in zip(rows, batch["input_ids"].tolist(), batch["labels"].tolist()):
            assert reinsert(inputs, labels, sentinels, tokenizer.eos_token_id, tokenizer.pad_token_id) == row
        short = collator([{"input_ids": r} for r in random_rows(2, [raw, max(2, raw // 2)])])
        assert short["input_ids"].shape == (2, inputs_length) and short["labels"].shape == (2, targets)
        decoder_only = DataCollatorForSpanCorruption(
            tokenizer, noise_density, mean_noise_span_length, inputs_length=inputs_length, decoder_only=True
        )
        assert decoder_only([{"input_ids": r} for r in random_rows(2, raw)])["input_ids"].shape == (
            2,
            inputs_length + targets,
        )


def test_realized_noise_density_and_span_length_match_targets(tokenizer):
    collator = DataCollatorForSpanCorruption(tokenizer, inputs_length=512)
    rows = random_rows(64, 568, seed=3)
    batch = collator([{"input_ids": r} for r in rows])
    sentinels = set(collator.sentinel_ids.tolist())
    span_lengths, noise = [], 0
    for b in range(64):
        spans = parse_targets(batch["labels"][b].tolist(), sentinels, tokenizer.eos_token_id)
        span_lengths += [len(s) for s in spans.values()]
        noise += sum(len(s) for s in spans.values())
    assert noise / (64 * 568) == pytest.approx(0.15, abs=0.002)
    assert np.mean(span_lengths) == pytest.approx(3.0, abs=0.1)
    assert np.std(span_lengths) > 1.0  # random lengths, not all equal to the mean
    assert max(span_lengths) > 8


def test_segmentation_is_uniform_over_compositions():
    # 6 items in 3 non-empty segments: C(5, 2) = 10 compositions, each with probability 1/10 (T5's shuffle).
    count = 20000
    keys = sample_keys(np.arange(count)[:, None], np.ones(count, dtype=np.int64), seed=1)
    lengths = segment_lengths(np.full(count, 6), np.full(count, 3), _stream_keys(keys, 1)).reshape(count, 3)
    assert (lengths >= 1).all() and (lengths.sum(1) == 6).all()
    _, frequencies = np.unique(lengths, axis=0, return_counts=True)
    assert len(frequencies) == 10
    bound = 4.5 * np.sqrt(count * 0.1 * 0.9)
    assert np.all(np.abs(frequencies - count / 10) < bound), frequencies


def test_ragged_segmentation_respects_each_row():
    items, segments = np.array([10, 3, 7, 2, 1]), np.array([4, 2, 1, 2, 1])
    keys = sample_keys(np.arange(5)[:, None], np.ones(5, dtype=np.int64), seed=0)
    lengths = segment_lengths(items, segments, _stream_keys(keys, 2))
    rows = np.split(lengths, np.cumsum(segments)[:-1])
    assert [row.sum() for row in rows] == items.tolist() and [len(row) for row in rows] == segments.tolist()
    assert (lengths > 0).all()


def reference_segments(items, segments, keys, stream):
    """Segment lengths by brute force: each piece's k - 1 gaps of smallest `keyed_bits` draw (ties to the lower
    gap), sorted."""
    out = []
    for n, k, key in zip(items, segments, keys):
        gaps = np.arange(n - 1)
        draws = keyed_bits(np.array([key]), max(n - 1, 1), stream)[0, : n - 1]
        cuts = np.sort(gaps[np.lexsort((gaps, draws))][: k - 1]) + 1
        out.append(np.diff(np.concatenate([[0], cuts, [n]])))
    return np.concatenate(out)


@pytest.mark.parametrize("margin", ["default", "none"])
def test_segmentation_is_exactly_the_smallest_draws(monkeypatch, margin):
    # The threshold pass must never change the result: with no margin most pieces lack candidates and are redone.
    if margin == "none":
        monkeypatch.setattr(_span_draw, "_MARGIN_SIGMAS", 0.0)
        monkeypatch.setattr(_span_draw, "_MARGIN_EXTRA", 0.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        items = rng.integers(1, 700, 12)
        segments = np.minimum(rng.integers(1, 250, 12), items)
        keys = rng.integers(0, 2**32, 12, dtype=np.uint64).astype(np.uint32)
        expected = reference_segments(items, segments, keys, stream=3)
        assert np.array_equal(segment_lengths(items, segments, _stream_keys(keys, 3)), expected)
        # A piece's segments depend on its own key and counts only, not on the pieces around it
        alone = [
            segment_lengths(items[i : i + 1], segments[i : i + 1], _stream_keys(keys[i : i + 1], 3)) for i in range(12)
        ]
        assert np.array_equal(np.concatenate(alone), expected)


def test_noise_counts_follow_t5_rounding():
    noise, spans = noise_counts(np.array([2, 10, 568, 100]), 0.15, 3.0)
    assert noise.tolist() == [1, 2, 85, 15] and spans.tolist() == [1, 1, 28, 5]


# ---------------------------------------------------------------------------------------------------------------
# Keyed randomness
# ---------------------------------------------------------------------------------------------------------------


def test_corruption_is_the_same_in_any_batch(tokenizer):
    collator = DataCollatorForSpanCorruption(tokenizer, inputs_length=64, seed=0)
    raw, _ = compute_span_corruption_lengths(64)
    rows = random_rows(6, raw, seed=5)
    alone = collator([{"input_ids": rows[2]}])
    mixed = collator([{"input_ids": r} for r in [rows[4], rows[2], rows[0]]])
    assert torch.equal(alone["input_ids"][0], mixed["input_ids"][1])
    assert torch.equal(alone["labels"][0], mixed["labels"][1])
    # Ragged company (padding) does not change it either.
    ragged = DataCollatorForSpanCorruption(tokenizer, seed=0)([{"input_ids": rows[2]}, {"input_ids": rows[3][:20]}])
    assert torch.equal(ragged["input_ids"][0], alone["input_ids"][0])


def test_epochs_and_seeds_change_the_corruption(tokenizer):
    features = [{"input_ids": r} for r in random_rows(4, 100, seed=6)]
    collator = DataCollatorForSpanCorruption(tokenizer, seed=1)
    first = collator(features)["labels"]
    assert torch.equal(first, collator(features)["labels"])
    collator.set_epoch(1)
    assert not torch.equal(first, collator(features)["labels"])
    fresh = DataCollatorForSpanCorruption(tokenizer, seed=None)
    assert not torch.equal(fresh(features)["labels"], fresh(features)["labels"])


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_density": 0.0}, "noise_density"),
        ({"noise_density": 1.0}, "noise_density"),
        ({"noise_density": -0.2}, "noise_density"),
        ({"mean_noise_span_length": 0.5}, "mean_noise_span_length"),
        ({"inputs_length": 2}, "inputs_length"),
        ({"decoder_only": True, "attn_implementation": "flash_attention_2"}, "attn_implementation"),
    ],
)
def test_bad_arguments_raise(tokenizer, kwargs, name):
    with pytest.raises(ValueError, match=name):
        DataCollatorForSpanCorruption(tokenizer, **kwargs)


def test_missing_tokens_raise(tiny_corpus, tokenizer):
    no_sentinels = train_tokenizer(tiny_corpus, vocab_size=400, num_sentinels=0, min_frequency=1)
    with pytest.raises(ValueError, match="add_sentinel_tokens"):
        DataCollatorForSpanCorruption(no_sentinels)
    few = train_tokenizer(tiny_corpus, vocab_size=400, num_sentinels=4, min_frequency=1)
    with pytest.raises(ValueError, match="needs 28"):
        DataCollatorForSpanCorruption(few, inputs_length=512)
    with pytest.raises(ValueError, match="needs 28"):  # without a fixed shape, checked per batch
        DataCollatorForSpanCorruption(few)([{"input_ids": list(range(100, 668))}])
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="eos_token"):
        DataCollatorForSpanCorruption(no_eos)


def test_bad_features_raise(tokenizer):
    collator = DataCollatorForSpanCorruption(tokenizer, inputs_length=64)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        collator([{"input_ids": [5]}])
    with pytest.raises(ValueError, match="compute_span_corruption_lengths"):
        collator([{"input_ids": list(range(200, 300))}])


# ---------------------------------------------------------------------------------------------------------------
# A tiny T5 learns from the batches
# ---------------------------------------------------------------------------------------------------------------


def test_tiny_t5_loss_falls(tokenizer, tiny_corpus):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    inputs_length = 32
    raw, _ = compute_span_corruption_lengths(inputs_length)
    stream = tokenizer(" ".join(tiny_corpus))["input_ids"]
    rows = [stream[i : i + raw] for i in range(0, len(stream) - raw, raw)][:16]
    collator = DataCollatorForSpanCorruption(tokenizer, inputs_length=inputs_length)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = T5ForConditionalGeneration(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(20):
        collator.set_epoch(step)  # fresh corruption every step
        batch = collator([{"input_ids": r} for r in rows])
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:2]), losses


def test_lists_arrays_and_tensors_give_the_same_batch(tokenizer):
    rows = random_rows(3, [30, 30, 12], seed=8)
    collator = DataCollatorForSpanCorruption(tokenizer)
    expected = collator([{"input_ids": r} for r in rows])
    for convert in (np.array, torch.tensor, tuple):
        batch = collator([{"input_ids": convert(r)} for r in rows])
        assert all(torch.equal(batch[k], expected[k]) for k in expected)


def test_decoder_only_attention_on_device_keeps_the_fixed_shape(tokenizer):
    raw, _ = compute_span_corruption_lengths(24, 0.3)
    features = [{"input_ids": r} for r in random_rows(3, [raw, raw, raw - 5], seed=7)]
    kwargs = {"noise_density": 0.3, "inputs_length": 24, "decoder_only": True, "seed": 0}
    worker = DataCollatorForSpanCorruption(tokenizer, **kwargs)(features)
    device = DataCollatorForSpanCorruption(tokenizer, attention_on_device=True, **kwargs)(features)
    width = worker["input_ids"].shape[1]
    assert device["input_ids"].shape == (3, width) and device["attention_mask"].shape == (3, width)
    assert torch.equal(worker["input_ids"], device["input_ids"]) and torch.equal(worker["labels"], device["labels"])
    cols = torch.arange(width)[None, :]
    assert torch.equal(device["prefix_mask"], cols < worker["prefix_lengths"][:, None])
    assert torch.equal(device["document_ids"] >= 0, device["attention_mask"].bool())
    assert ((device["labels"] != -100) <= (device["attention_mask"].bool() & ~device["prefix_mask"])).all()
