"""UL2: denoiser frequencies follow the weights, mode tokens, round trip per denoiser, both model layouts, errors."""

import random

import numpy as np
import pytest
import torch

from hf_pretrain.collators._span_draw import noise_counts
from hf_pretrain.collators.prefix_lm import prefix_lm_attention_mask
from hf_pretrain.collators.ul2 import UL2_DENOISERS, DataCollatorForUL2, Denoiser


def random_rows(count, lengths, seed=0, vocab=500):
    rng = random.Random(seed)
    lengths = [lengths] * count if isinstance(lengths, int) else lengths
    return [[rng.randrange(200, vocab) for _ in range(n)] for n in lengths]


def restore(source, target, denoiser, sentinels, eos):
    """The raw tokens back from one example's source (mode token removed) and target, both ending in EOS."""
    assert source[-1] == eos and target[-1] == eos
    source, target = source[:-1], target[:-1]
    if denoiser.kind == "prefix":
        return source + target
    spans, current = {}, None
    for token in target:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    out = []
    for token in source:
        out.extend(spans.pop(token) if token in sentinels else [token])
    assert not spans
    return out


def test_denoiser_frequencies_follow_the_weights(tokenizer):
    weights = [1.0, 2.0, 3.0, 4.0]
    collator = DataCollatorForUL2(tokenizer, weights=weights, return_denoiser_ids=True)
    rows = random_rows(4000, 12, seed=1)
    counts = np.bincount(collator([{"input_ids": r} for r in rows])["denoiser_ids"].numpy(), minlength=4)
    p = np.array(weights) / sum(weights)
    bound = 4.5 * np.sqrt(4000 * p * (1 - p))  # binomial, ~4.5 sigma
    assert np.all(np.abs(counts - 4000 * p) < bound), counts
    zero = DataCollatorForUL2(tokenizer, weights=[0, 1, 0, 0], return_denoiser_ids=True)
    assert (zero([{"input_ids": r} for r in rows[:200]])["denoiser_ids"] == 1).all()


@pytest.mark.parametrize("decoder_only", [False, True])
def test_round_trip_and_mode_tokens_per_denoiser(tokenizer, decoder_only):
    collator = DataCollatorForUL2(tokenizer, decoder_only=decoder_only, return_denoiser_ids=True)
    rows = random_rows(64, [random.Random(i).randrange(2, 120) for i in range(64)], seed=2)
    batch = collator([{"input_ids": r} for r in rows])
    sentinels = set(collator.sentinel_ids.tolist())
    eos = tokenizer.eos_token_id
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.int64
    seen = set()
    for b, row in enumerate(rows):
        d = int(batch["denoiser_ids"][b])
        seen.add(d)
        denoiser = UL2_DENOISERS[d]
        ids = batch["input_ids"][b].tolist()
        assert ids[0] == tokenizer.convert_tokens_to_ids(denoiser.mode_token)
        labels = [t for t in batch["labels"][b].tolist() if t != -100]
        if decoder_only:
            prefix = int(batch["prefix_lengths"][b])
            source = ids[1:prefix]
            assert ids[prefix : prefix + len(labels)] == labels
            assert (batch["labels"][b, :prefix] == -100).all()
        else:
            length = int(batch["attention_mask"][b].sum())
            source = ids[1:length]
            assert all(t == tokenizer.pad_token_id for t in ids[length:])
        assert restore(source, labels, denoiser, sentinels, eos) == row
    assert seen == {0, 1, 2, 3}
    if decoder_only:
        lengths = (batch["labels"] != -100).sum(1) + batch["prefix_lengths"]
        expected = prefix_lm_attention_mask(lengths, batch["prefix_lengths"], batch["input_ids"].shape[1])
        assert torch.equal(batch["attention_mask"], expected)


def test_each_span_denoiser_keeps_its_own_counts_in_the_shared_pass(tokenizer):
    # All span denoisers' examples are corrupted in one vectorized pass (density and span length per example):
    # every example has exactly its own denoiser's T5 noise and span counts.
    collator = DataCollatorForUL2(tokenizer, return_denoiser_ids=True, seed=0)
    rows = random_rows(96, [random.Random(i).randrange(40, 400) for i in range(96)], seed=7)
    batch = collator([{"input_ids": r} for r in rows])
    sentinels = set(collator.sentinel_ids.tolist())
    seen = set()
    for b, row in enumerate(rows):
        denoiser = UL2_DENOISERS[int(batch["denoiser_ids"][b])]
        if denoiser.kind != "span":
            continue
        seen.add(int(batch["denoiser_ids"][b]))
        target = [t for t in batch["labels"][b].tolist() if t != -100][:-1]  # without EOS
        spans = sum(t in sentinels for t in target)
        noise, expected_spans = noise_counts(
            np.array([len(row)]), denoiser.noise_density, denoiser.mean_noise_span_length
        )
        assert (len(target) - spans, spans) == (noise[0], expected_spans[0])
    assert seen == {0, 1, 2}


def test_custom_denoisers_without_mode_tokens(tokenizer):
    denoisers = [Denoiser("span", 0.3, 2.0), Denoiser("prefix", prefix_fraction_range=(0.5, 0.5))]
    collator = DataCollatorForUL2(tokenizer, denoisers, add_mode_tokens=True, return_denoiser_ids=True)
    rows = random_rows(40, 20, seed=3)
    batch = collator([{"input_ids": r} for r in rows])
    for b, row in enumerate(rows):
        ids = batch["input_ids"][b].tolist()
        assert ids[0] == row[0]  # no mode token to prepend
        if int(batch["denoiser_ids"][b]) == 1:
            assert ids[:11] == row[:10] + [tokenizer.eos_token_id]


def test_choice_and_corruption_do_not_depend_on_the_batch(tokenizer):
    collator = DataCollatorForUL2(tokenizer, return_denoiser_ids=True, seed=0)
    rows = random_rows(8, 40, seed=4)
    together = collator([{"input_ids": r} for r in rows])
    for b in (0, 5):
        alone = collator([{"input_ids": rows[b]}])
        assert alone["denoiser_ids"][0] == together["denoiser_ids"][b]
        n = int(alone["attention_mask"][0].sum())
        assert torch.equal(alone["input_ids"][0, :n], together["input_ids"][b, :n])


def test_tiny_t5_takes_the_batch(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    batch = DataCollatorForUL2(tokenizer)([{"input_ids": r} for r in random_rows(4, 30, seed=5)])
    assert torch.isfinite(T5ForConditionalGeneration(config)(**batch).loss)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"weights": [0, 0, 0, 0]}, "weights"),
        ({"weights": [1, -1, 1, 1]}, "weights"),
        ({"weights": [1, 1]}, "weights"),
        ({"denoisers": []}, "denoisers"),
        ({"denoisers": [Denoiser(mode_token="[NOPE]")]}, "mode_token"),
        ({"decoder_only": True, "attn_implementation": "flash_attention_2"}, "attn_implementation"),
    ],
)
def test_bad_arguments_raise(tokenizer, kwargs, name):
    with pytest.raises(ValueError, match=name):
        DataCollatorForUL2(tokenizer, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"kind": "causal"}, "kind"),
        ({"noise_density": 1.5}, "noise_density"),
        ({"mean_noise_span_length": 0.0}, "mean_noise_span_length"),
        ({"kind": "prefix", "prefix_fraction_range": (0.9, 0.1)}, "prefix_fraction_range"),
    ],
)
def test_bad_denoisers_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Denoiser(**kwargs)


def test_decoder_only_attention_on_device_matches_the_worker_mask(tokenizer):
    from hf_pretrain.attention_masks import document_attention_mask

    rows = random_rows(12, [random.Random(i).randrange(2, 60) for i in range(12)], seed=6)
    features = [{"input_ids": r} for r in rows]
    worker = DataCollatorForUL2(tokenizer, decoder_only=True, seed=0)(features)
    device = DataCollatorForUL2(tokenizer, decoder_only=True, seed=0, attention_on_device=True)(features)
    for key in ("input_ids", "labels", "prefix_lengths"):
        assert torch.equal(worker[key], device[key])
    real = device["attention_mask"].bool()  # (B, T)
    assert torch.equal(device["document_ids"], torch.where(real, 0, -1))
    built = document_attention_mask(
        device["document_ids"], causal=True, implementation="sdpa", prefix_mask=device["prefix_mask"]
    )
    assert torch.equal(built[:, 0][real], worker["attention_mask"][:, 0][real])
