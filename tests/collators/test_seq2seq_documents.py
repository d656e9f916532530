"""Decoder-only prefix LM, span corruption and UL2 on packed rows (`document_lengths`), and the two mask forms.

Hand-checked tensors of a row of three documents [3, 1, 2] (a one-token document included); the worker's 4D mask
(`attention_on_device=False`) and the device-built one (`document_ids` + `prefix_mask` through `isolate_documents`)
give a tiny Llama bit-identical outputs; exactness: a packed batch scores like its documents run alone (loss = the
token-weighted mean, logits to 1e-5, eager and sdpa), and merging the documents' attention breaks it; the trainer
builds the prefix mask causally on the device; errors.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _tiny import one_thread, tiny_llama_config  # noqa: F401  (one_thread: an autouse fixture)
from transformers import LlamaForCausalLM

from hf_pretrain import PretrainingArguments, PretrainingTrainer
from hf_pretrain.collators import DataCollatorForPrefixLM, DataCollatorForSpanCorruption, DataCollatorForUL2, Denoiser
from hf_pretrain.collators._documents import document_keys, padded_document_columns
from hf_pretrain.collators._keyed import sample_keys
from hf_pretrain.collators._padding import pad_flat
from hf_pretrain.training import document_mask
from hf_pretrain.training.attention import probe_attention
from hf_pretrain.training.document_mask import isolate_documents, supports_document_mask

A, B, C, D, E, F = 300, 301, 302, 310, 320, 321
ROW = {"input_ids": [A, B, C, D, E, F], "document_lengths": [3, 1, 2]}


def sentinel(tokenizer, i=0):
    return tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>")


def collators(tokenizer, **kwargs):
    """The three decoder-only collators, with every draw keyed (seed) and the default UL2 mixture. Span corruption
    at density 0.4 and spans of 2: documents of 7+ tokens get 2+ spans, so their segmentation is a keyed draw."""
    return {
        "prefix_lm": DataCollatorForPrefixLM(tokenizer, seed=0, **kwargs),
        "span": DataCollatorForSpanCorruption(tokenizer, 0.4, 2.0, decoder_only=True, seed=0, **kwargs),
        "ul2": DataCollatorForUL2(tokenizer, decoder_only=True, seed=0, **kwargs),
    }


# ---- hand-checked tensors ------------------------------------------------------------------------------------------


def test_prefix_lm_row_of_three_documents_by_hand(tokenizer):
    # Splits floor(n / 2) clipped to [1, n - 1]: 1 of 3, none of 1 (all prefix, unlabelled), 1 of 2.
    collator = DataCollatorForPrefixLM(tokenizer, prefix_fraction_range=(0.5, 0.5), attention_on_device=True)
    batch = collator([ROW, {"input_ids": [A, B], "document_lengths": [2]}])
    assert sorted(batch) == ["attention_mask", "document_ids", "input_ids", "labels", "position_ids", "prefix_mask"]
    assert batch["input_ids"].tolist() == [[A, B, C, D, E, F], [A, B] + [tokenizer.pad_token_id] * 4]
    assert batch["labels"].tolist() == [[-100, B, C, -100, -100, F], [-100, B, -100, -100, -100, -100]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 1, 2, 2], [0, 0, -1, -1, -1, -1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1], [0, 1, 2, 3, 4, 5]]
    assert batch["prefix_mask"].int().tolist() == [[1, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    assert batch["document_ids"].dtype == batch["position_ids"].dtype == torch.int64
    assert batch["prefix_mask"].dtype == torch.bool
    # The worker's mask of the same batch: documents apart, each one's prefix bidirectional (here 1 token each)
    expected = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    worker = DataCollatorForPrefixLM(tokenizer, prefix_fraction_range=(0.5, 0.5), attn_implementation="eager")
    mask = worker([ROW])["attention_mask"]
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.float32
    assert (mask[0, 0] == 0).int().tolist() == expected
    assert (mask[0, 0][mask[0, 0] != 0] == torch.finfo(torch.float32).min).all()


def test_prefix_lm_bidirectional_prefix_stays_inside_its_document(tokenizer):
    collator = DataCollatorForPrefixLM(tokenizer, prefix_fraction_range=(1.0, 1.0))  # prefix = n - 1 tokens
    batch = collator([{"input_ids": [A, B, C, D, E, F], "document_lengths": [3, 3]}])
    assert batch["labels"].tolist() == [[-100, -100, C, -100, -100, F]]
    assert batch["attention_mask"][0, 0].int().tolist() == [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
    ]


def test_span_corruption_row_of_three_documents_by_hand(tokenizer):
    # Density 0.5: 3 tokens -> 2 noise in 1 span, 2 tokens -> 1 noise: T5 keeps the first token, the rest is noise.
    s0, eos = sentinel(tokenizer), tokenizer.eos_token_id
    collator = DataCollatorForSpanCorruption(
        tokenizer, noise_density=0.5, decoder_only=True, attention_on_device=True, seed=0
    )
    batch = collator([ROW])
    assert batch["input_ids"].tolist() == [[A, s0, eos, s0, B, C, eos, D, E, s0, eos, s0, F, eos]]
    assert batch["labels"].tolist() == [[-100] * 3 + [s0, B, C, eos] + [-100] * 3 + [-100, s0, F, eos]]
    assert batch["document_ids"].tolist() == [[0] * 7 + [1] + [2] * 6]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 0, 0, 1, 2, 3, 4, 5]]
    assert batch["prefix_mask"].int().tolist() == [[1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]]
    assert "prefix_lengths" not in batch  # one per row: meaningless for packed rows


def test_ul2_row_of_three_documents_by_hand(tokenizer):
    s0, eos, mode = sentinel(tokenizer), tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("[NLU]")
    collator = DataCollatorForUL2(
        tokenizer, [Denoiser("span", 0.5, 3.0, "[NLU]")], decoder_only=True, return_denoiser_ids=True, seed=0
    )
    batch = collator([ROW])
    assert batch["input_ids"].tolist() == [[mode, A, s0, eos, s0, B, C, eos, D, mode, E, s0, eos, s0, F, eos]]
    assert batch["labels"].tolist() == [[-100] * 4 + [s0, B, C, eos] + [-100] * 5 + [s0, F, eos]]
    assert batch["position_ids"].tolist() == [list(range(8)) + [0] + list(range(7))]
    assert batch["denoiser_ids"].tolist() == [0, -1, 0]  # one per piece; the one-token piece fits none
    allowed = batch["attention_mask"][0, 0]  # (16, 16) bool: the worker's form
    assert allowed[:4, :4].all() and not allowed[:3, 4:].any()  # doc 0's prefix: bidirectional, no target
    assert allowed[8].int().tolist() == [0] * 8 + [1] + [0] * 7  # the one-token document sees itself only
    assert not allowed[9:, :9].any() and allowed[9:13, 9:13].all()  # doc 2: its own prefix, nothing before it


def test_pad_to_multiple_of_keeps_the_document_layout(tokenizer):
    features, documents = packed_features()
    for name, collator in collators(tokenizer, pad_to_multiple_of=8, attention_on_device=True).items():
        batch = collator(features)
        width = batch["input_ids"].shape[1]
        assert width % 8 == 0 and all(batch[key].shape == (2, width) for key in ("document_ids", "position_ids"))
        real = batch["attention_mask"].bool()
        assert not real[:, -1].all()  # some padding to check
        assert (batch["document_ids"][~real] == -1).all() and (batch["labels"][~real] == -100).all()
        assert not batch["prefix_mask"][~real].any()
        assert batch["document_ids"].amax(1).tolist() == [len(docs) - 1 for docs in documents], name
        worker = collators(tokenizer, pad_to_multiple_of=8)[name](features)
        assert worker["attention_mask"].shape == (2, 1, width, width)


# ---- the two forms give the model the same thing --------------------------------------------------------------------


def llama(tokenizer, implementation):
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(tokenizer), attn_implementation=implementation)
    return LlamaForCausalLM(config).eval()


def random_document(n, rng):
    return [rng.randrange(200, 500) for _ in range(n)]


def packed_features(seed=0):
    """Two rows: documents [6, 1, 11, 3], and [4, 13] whose second piece goes on in the next block."""
    rng = random.Random(seed)
    rows = [[6, 1, 11, 3], [4, 13]]
    documents = [[random_document(n, rng) for n in lengths] for lengths in rows]
    features = [{"input_ids": sum(docs, []), "document_lengths": lengths} for docs, lengths in zip(documents, rows)]
    return features, documents


def on_device(batch, implementation):
    return isolate_documents(batch, causal=True, implementation=implementation, dtype=torch.float32)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("documents", [True, False])
@torch.no_grad()
def test_worker_and_device_masks_give_bit_identical_outputs(tokenizer, implementation, documents):
    model = llama(tokenizer, implementation)
    features, _ = packed_features()
    if not documents:  # rows of unequal length: padding in the batch
        features = [{"input_ids": f["input_ids"]} for f in features]
    worker = collators(tokenizer, attn_implementation=implementation)
    device = collators(tokenizer, attn_implementation=implementation, attention_on_device=True)
    for name in worker:
        a, b = worker[name](features), device[name](features)
        assert a["attention_mask"].dim() == 4 and b["attention_mask"].dim() == 2  # no (T, T) object left the worker
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        inputs = on_device(b, implementation)
        assert torch.equal(inputs["position_ids"], a.get("position_ids", inputs["position_ids"]))
        x, y = model(**a), model(**inputs)
        real = b["attention_mask"].bool()  # padding queries differ by design (module docstring of prefix_lm)
        assert torch.equal(x.logits[real], y.logits[real]), name
        assert torch.equal(x.loss, y.loss), name


# ---- exactness: a packed row scores like its documents alone ------------------------------------------------------


def scored(model, batch):
    out = model(**batch)
    predicted = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts: label t is predicted at t - 1
    return out.logits, float(out.loss), predicted


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["prefix_lm", "span", "ul2"])
@torch.no_grad()
def test_packed_rows_score_like_their_documents_alone(tokenizer, name, implementation):
    model = llama(tokenizer, implementation)
    features, documents = packed_features(seed=1)
    worker = collators(tokenizer, attn_implementation=implementation)[name]
    batch = collators(tokenizer, attn_implementation=implementation, attention_on_device=True)[name](features)
    logits, loss, _ = scored(model, on_device(batch, implementation))
    total = count = 0
    for row, docs in enumerate(documents):
        for k, doc in enumerate(docs):
            where = batch["document_ids"][row] == k  # (T,) the document's positions in the packed row
            if len(doc) == 1:  # kept as it is, one unlabelled token
                assert batch["input_ids"][row, where].tolist() == doc and (batch["labels"][row, where] == -100).all()
                continue
            alone = worker([{"input_ids": doc}])  # the worker's staircase mask, default positions
            assert torch.equal(batch["input_ids"][row, where], alone["input_ids"][0])  # the same draws
            assert torch.equal(batch["labels"][row, where], alone["labels"][0])
            alone_logits, alone_loss, predicted = scored(model, alone)
            torch.testing.assert_close(logits[row, where], alone_logits[0], atol=1e-5, rtol=0)
            total, count = total + alone_loss * predicted, count + predicted
    assert loss == pytest.approx(total / count, abs=1e-5)
    # Shared attention (the documents' lengths dropped from the mask, same tokens and positions): every document
    # after a row's first sees the ones before it, and the row no longer scores like its documents.
    shared = dict(batch, document_ids=torch.where(batch["document_ids"] >= 0, 0, -1))
    shared_logits, shared_loss, _ = scored(model, on_device(shared, implementation))
    later = batch["document_ids"] >= 2  # documents 2+ of each row: each has labels and earlier documents
    assert (shared_logits[later] - logits[later]).abs().amax() > 1e-3
    assert abs(shared_loss - loss) > 1e-4


@pytest.mark.parametrize("name", ["span", "ul2"])
def test_many_packed_documents_get_their_draws_alone(tokenizer, name):
    # Every denoiser (R, X long spans, X dense, S) in one vectorized pass over documents of 1..500 tokens cut at
    # block ends: each document's tokens, labels and positions are those of the document alone.
    rng = random.Random(3)
    lengths = [[rng.choice([1, 2, 3, rng.randrange(4, 500)]) for _ in range(rng.randrange(1, 6))] for _ in range(12)]
    features = [
        {"input_ids": random_document(sum(row), rng), "document_lengths": row} for row in lengths if sum(row) >= 1
    ]
    batch = collators(tokenizer, attention_on_device=True)[name](features)
    alone = collators(tokenizer, attention_on_device=True)[name]
    for row, feature in enumerate(features):
        start = 0
        for k, n in enumerate(feature["document_lengths"]):
            doc = feature["input_ids"][start : start + n]
            start += n
            where = batch["document_ids"][row] == k
            if n == 1:
                assert batch["input_ids"][row, where].tolist() == doc and (batch["labels"][row, where] == -100).all()
                continue
            single = alone([{"input_ids": doc}])
            assert torch.equal(batch["input_ids"][row, where], single["input_ids"][0])
            assert torch.equal(batch["labels"][row, where], single["labels"][0])
            assert torch.equal(batch["prefix_mask"][row, where], single["prefix_mask"][0])
            assert batch["position_ids"][row, where].tolist() == list(range(int(where.sum())))


def test_document_keys_are_the_keys_of_the_padded_pieces():
    rng = np.random.default_rng(0)
    for trial in range(50):
        pieces = rng.integers(1, 600, rng.integers(1, 20))
        if trial % 5 == 0:
            pieces[:] = pieces[0]  # equal pieces: the reshaped path
        flat = rng.integers(0, 50000, pieces.sum()).astype(np.int32)
        expected = sample_keys(pad_flat(flat, pieces, 0), pieces, seed=trial, epoch=2)
        assert np.array_equal(document_keys(flat, pieces, seed=trial, epoch=2), expected)


def test_padded_document_columns_of_padded_rows_match_their_definition():
    rng = np.random.default_rng(1)
    for trial in range(200):
        counts = rng.integers(0, 5, rng.integers(1, 6))
        pieces = rng.integers(1, 20, counts.sum())
        rows = np.split(pieces, np.cumsum(counts)[:-1])
        row_lengths = np.array([row.sum() for row in rows], dtype=np.int64)
        if row_lengths.max() == 0:
            continue
        multiple = [None, 4, 7][trial % 3]
        position_ids, document_ids = padded_document_columns(pieces, counts, row_lengths, multiple)
        for b, row in enumerate(rows):
            ids = [k for k, n in enumerate(row) for _ in range(n)]
            positions = [i for n in row for i in range(n)]
            last = row_lengths[b] - (row[-1] if len(row) else 0)  # padding continues the last document
            positions += list(range(len(positions) - last, position_ids.shape[1] - last))
            assert document_ids[b].tolist() == ids + [-1] * (position_ids.shape[1] - len(ids))
            assert position_ids[b].tolist() == positions


# ---- the trainer: causal + prefix_mask on the device, and probes of that form ---------------------------------------


def trainer_for(model, collator, rows, tmp_path, objective):
    args = PretrainingArguments(
        output_dir=str(tmp_path),
        objective=objective,
        per_device_eval_batch_size=8,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,  # else the Trainer drops document_lengths before the collator
    )
    return PretrainingTrainer(model=model, args=args, eval_dataset=rows, data_collator=collator)


@pytest.mark.parametrize(("objective", "name"), [("prefix_lm", "prefix_lm"), ("span_corruption", "span")])
def test_trainer_builds_the_prefix_mask_causally_on_the_device(tokenizer, tmp_path, objective, name):
    model = llama(tokenizer, "sdpa")
    features, _ = packed_features(seed=2)
    device = collators(tokenizer, attention_on_device=True)[name]
    trainer = trainer_for(model, device, features, tmp_path, objective)
    isolated = trainer.evaluate()["eval_loss"]
    assert trainer._documents_probed == trainer.current_objective().attention  # probed before the mask was used
    assert trainer._mask_implementation() == "sdpa"
    # The worker's 4D mask of the same batch, straight to the model: what the device must reproduce
    with torch.no_grad():
        expected = float(model(**collators(tokenizer)[name](features)).loss)
    assert isolated == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_probes_check_the_device_built_prefix_mask(tokenizer, implementation, monkeypatch):
    model = llama(tokenizer, implementation)
    assert supports_document_mask(model, prefix=True) is True
    measured = probe_attention(model, "encoder_decoder", implementation, on_device=True)  # a decoder: prefix LM
    assert measured["future_leak"] == 0 and measured["prefix_reach"] > 0
    if implementation == "eager":  # a bool (sdpa) mask added to eager scores masks nothing: caught
        with pytest.raises(RuntimeError, match="device-built"):
            probe_attention(model, "prefix", "sdpa", on_device=True)
    # A device mask that lost the prefix (plain causal) no longer matches the collators' prefix-LM mask
    original = document_mask.document_attention_mask
    monkeypatch.setattr(
        document_mask, "document_attention_mask", lambda *a, **k: original(*a, **{**k, "prefix_mask": None})
    )
    result = supports_document_mask(model, prefix=True)
    assert isinstance(result, str) and "alone" in result


# ---- errors ----------------------------------------------------------------------------------------------------------


def test_short_and_wrong_inputs_raise_clear_errors(tokenizer):
    for name, collator in collators(tokenizer).items():
        with pytest.raises(ValueError, match="sum to 5"):
            collator([{"input_ids": [A, B, C, D], "document_lengths": [2, 3]}])
        assert collator([{"input_ids": [A], "document_lengths": [1]}])["labels"].tolist() == [[-100]], name
        with pytest.raises(ValueError, match="at least 2 tokens"):
            collator([{"input_ids": [A]}])  # without document_lengths a row is one example, as before
    encoder_decoder = [
        DataCollatorForSpanCorruption(tokenizer),
        DataCollatorForUL2(tokenizer),
        DataCollatorForPrefixLM(tokenizer, decoder_only=False),
    ]
    for collator in encoder_decoder:
        with pytest.raises(ValueError, match="documents cannot be kept apart in encoder-decoder.*document_attention"):
            collator([ROW])
        with pytest.raises(ValueError, match="attention_on_device"):
            type(collator)(tokenizer, decoder_only=False, attention_on_device=True)
    with pytest.raises(ValueError, match="inputs_length"):
        DataCollatorForSpanCorruption(tokenizer, inputs_length=12, decoder_only=True)([ROW])
    with pytest.raises(ValueError, match="prefix_length"):
        DataCollatorForPrefixLM(tokenizer)([{**ROW, "prefix_length": 2}])
