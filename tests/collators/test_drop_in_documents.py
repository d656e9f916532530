"""Packed blocks (`document_lengths`) through a plain `transformers.Trainer`: the default collators keep the
documents apart by themselves (`attention_on_device=False`).

No model takes `document_ids`; `model(**batch)` would swallow it in **kwargs and let the documents attend to each
other while their positions restart. So, by default, causal LM sends `position_ids` restarting per document and no
`attention_mask` (transformers' `create_causal_mask` detects the packed rows, when the forward has no KV cache,
which `transformers.Trainer` ensures), or with `attn_implementation` the finished causal 4D mask; masked LM sends
the finished bidirectional 4D mask (transformers detects no packing there), written block by block and equal to
`document_attention_mask` for any layout. Checked: a tiny Llama (CLM) and a tiny BERT and bidirectional Llama
(MLM) fed `model(**collator(features))` give every document the logits it gets run alone (to 1e-5, eager and
sdpa) and merging the documents breaks it; the default form and the device form (`attention_on_device=True`
through `isolate_documents`) give the same outputs; `transformers.Trainer.evaluate` scores a packed row like its
documents; the views of `MultiObjectiveCollator` in both modes; and the errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import one_thread, tiny_llama_config  # noqa: F401  (one_thread: an autouse fixture)
from transformers import BertConfig, BertForMaskedLM, LlamaForCausalLM, Trainer, TrainingArguments

from hf_pretrain.attention_masks import document_attention_mask
from hf_pretrain.collators import DataCollatorForCausalLM, DataCollatorForMaskedLM
from hf_pretrain.collators._documents import block_document_mask
from hf_pretrain.modeling_masked_llama import set_bidirectional
from hf_pretrain.objective_views import MultiObjectiveCollator
from hf_pretrain.training.document_mask import isolate_documents

IMPLEMENTATIONS = ["eager", "sdpa"]


def blocks() -> list[dict]:
    """Three packed rows: [3, 1, 4] (a one-token document), [2, 3] then padding, [5] then padding; no special
    token (the tokenizer's first 108 ids are), so masked LM may select every token."""
    return [
        {"input_ids": [210, 211, 212, 213, 214, 215, 216, 217], "document_lengths": [3, 1, 4]},
        {"input_ids": [220, 221, 222, 223, 224], "document_lengths": [2, 3]},
        {"input_ids": [230, 231, 232, 233, 234], "document_lengths": [5]},
    ]


def documents(features):
    """(row, start, length) of every document of the features."""
    for row, feature in enumerate(features):
        start = 0
        for length in feature["document_lengths"]:
            yield row, start, length
            start += length


def llama(tokenizer, implementation, bidirectional=False):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer), attn_implementation=implementation))
    if bidirectional:
        set_bidirectional(model, True)
    return model.eval()


def bert(tokenizer, implementation):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        attn_implementation=implementation,
    )
    return BertForMaskedLM(config).eval()


def as_trainer_runs_it(model, tmp_path):
    """What `transformers.Trainer` does to the model before any step: `config.use_cache = args.use_cache` (False)."""
    Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    assert model.config.use_cache is False
    return model


def masked_collator(tokenizer, **kwargs):
    return DataCollatorForMaskedLM(tokenizer, mlm_probability=0.4, seed=0, **kwargs)


# ---- the batch forms -----------------------------------------------------------------------------------------


def test_causal_default_form_has_restarting_positions_and_no_mask(tokenizer):
    batch = DataCollatorForCausalLM(tokenizer)(blocks())
    assert sorted(batch) == ["input_ids", "labels", "position_ids"]
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 0, 0, 1, 2, 3],
        [0, 1, 0, 1, 2, 3, 4, 5],  # padding continues the last document: after all its real tokens
        [0, 1, 2, 3, 4, 5, 6, 7],
    ]
    assert batch["labels"].tolist() == [
        [210, 211, 212, -100, -100, 215, 216, 217],
        [220, 221, -100, 223, 224, -100, -100, -100],
        [230, 231, 232, 233, 234, -100, -100, -100],
    ]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_causal_4d_form(tokenizer, implementation):
    batch = DataCollatorForCausalLM(tokenizer, attn_implementation=implementation)(blocks())
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "position_ids"]
    mask = batch["attention_mask"]
    assert mask.shape == (3, 1, 8, 8)
    allowed = mask if implementation == "sdpa" else mask == 0
    assert mask.dtype == (torch.bool if implementation == "sdpa" else torch.float32)
    assert allowed[1, 0, :5, :5].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert not allowed[1, 0, :5, 5:].any()  # no real query sees padding


def test_masked_default_form_is_the_bidirectional_document_mask(tokenizer):
    batch = masked_collator(tokenizer)(blocks())
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "position_ids"]
    mask = batch["attention_mask"]
    assert mask.shape == (3, 1, 8, 8) and mask.dtype == torch.float32  # additive: right under eager and sdpa
    assert (mask[0, 0] == 0).int().tolist() == [
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]
    assert (mask[2, 0] == 0).int().tolist()[5:] == [[0, 0, 0, 0, 0, 1, 0, 0], [0] * 6 + [1, 0], [0] * 7 + [1]]
    sdpa = masked_collator(tokenizer, attn_implementation="sdpa")(blocks())["attention_mask"]
    assert sdpa.dtype == torch.bool and torch.equal(sdpa, mask == 0)
    # the masks drawn are those of the device form, and of the same rows without document_lengths
    on_device = masked_collator(tokenizer, attention_on_device=True)(blocks())
    plain = masked_collator(tokenizer)([{"input_ids": f["input_ids"]} for f in blocks()])
    for key in ("input_ids", "labels"):
        assert torch.equal(batch[key], on_device[key]) and torch.equal(batch[key], plain[key])


def test_device_form_is_the_compact_columns(tokenizer):
    for collator in (
        DataCollatorForCausalLM(tokenizer, attention_on_device=True),
        masked_collator(tokenizer, attention_on_device=True),
    ):
        batch = collator(blocks())
        assert sorted(batch) == ["attention_mask", "document_ids", "input_ids", "labels", "position_ids"]
        assert batch["attention_mask"].shape == (3, 8)
        assert batch["document_ids"][1].tolist() == [0, 0, 1, 1, 1, -1, -1, -1]


def test_numpy_outputs(tokenizer):
    causal = DataCollatorForCausalLM(tokenizer, return_tensors="np")(blocks())
    masked = masked_collator(tokenizer, return_tensors="np")(blocks())
    assert sorted(causal) == ["input_ids", "labels", "position_ids"]
    assert masked["attention_mask"].shape == (3, 1, 8, 8) and masked["attention_mask"].dtype == np.float32


def random_document_ids(rng, rows: int, width: int):
    """(rows, width) int64: contiguous documents of random lengths, then -1 padding (an empty row included)."""
    ids = np.full((rows, width), -1, dtype=np.int64)
    for row in range(rows):
        length, start, document = int(rng.integers(0, width + 1)), 0, 0
        while start < length:
            size = int(rng.integers(1, length - start + 1))
            ids[row, start : start + size] = document
            start, document = start + size, document + 1
    return ids


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("causal", [True, False])
def test_block_mask_is_the_document_attention_mask(implementation, causal):
    """The batch's mask is written block by block for speed; it must be exactly `document_attention_mask`, for
    packed layouts and (through its fallback) for any other: ids repeated apart, tokens hidden before real ones."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        ids = random_document_ids(rng, int(rng.integers(1, 5)), int(rng.integers(1, 24)))
        if trial % 4 == 0:  # not contiguous documents
            ids[rng.integers(0, len(ids)), rng.integers(0, ids.shape[1])] = rng.integers(-1, 2)
        expected = document_attention_mask(torch.from_numpy(ids), causal=causal, implementation=implementation)
        mask = block_document_mask(ids, causal=causal, implementation=implementation)
        assert mask.dtype == expected.dtype and torch.equal(mask, expected), ids.tolist()


# ---- exactness: model(**collator(features)) ----------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("form", ["positions", "4d"])
@torch.no_grad()
def test_causal_documents_score_as_alone(tokenizer, tmp_path, implementation, form):
    model = as_trainer_runs_it(llama(tokenizer, implementation), tmp_path)
    kwargs = {"attn_implementation": implementation} if form == "4d" else {}
    collator = DataCollatorForCausalLM(tokenizer, **kwargs)
    features = blocks()
    batch = collator(features)
    out = model(**batch)
    losses, weights = [], []
    for row, start, length in documents(features):
        ids = torch.tensor([features[row]["input_ids"][start : start + length]])
        alone = model(input_ids=ids, labels=ids)
        torch.testing.assert_close(out.logits[row, start : start + length], alone.logits[0], atol=1e-5, rtol=0)
        if length > 1:
            losses.append(alone.loss)
            weights.append(length - 1)
    expected = (torch.stack(losses) * torch.tensor(weights, dtype=torch.float32)).sum() / sum(weights)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)
    # the same rows without their document lengths: the later documents see the earlier ones
    shared = model(**DataCollatorForCausalLM(tokenizer)([{"input_ids": f["input_ids"]} for f in features])).logits
    assert (shared[0, 3:] - out.logits[0, 3:]).abs().max() > 1e-3


@torch.no_grad()
def test_causal_positions_form_needs_a_forward_without_cache(tokenizer):
    """transformers detects packed rows only without a KV cache: Llama's config defaults to use_cache=True, so a
    loop of one's own must pass use_cache=False (the Trainer sets it). The 4D form does not depend on it."""
    model = llama(tokenizer, "sdpa")
    assert model.config.use_cache is True
    features = blocks()
    ids = torch.tensor([features[0]["input_ids"][3:4]])
    alone = model(input_ids=ids).logits[0]
    batch = DataCollatorForCausalLM(tokenizer)(features)
    leaked = model(**batch).logits[0, 3:4]
    isolated = model(**batch, use_cache=False).logits[0, 3:4]
    four_d = model(**DataCollatorForCausalLM(tokenizer, attn_implementation="sdpa")(features)).logits[0, 3:4]
    assert (leaked - alone).abs().max() > 1e-3  # the documented pitfall: if this ever fails, update the docstring
    torch.testing.assert_close(isolated, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(four_d, alone, atol=1e-5, rtol=0)


MASKED_MODELS = {"bert": bert, "llama-bidirectional": lambda tok, impl: llama(tok, impl, bidirectional=True)}


@pytest.mark.parametrize("mask_format", ["own", "default"])  # the model's own format, or the collator's default
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", list(MASKED_MODELS))
@torch.no_grad()
def test_masked_documents_score_as_alone(tokenizer, implementation, name, mask_format):
    model = MASKED_MODELS[name](tokenizer, implementation)
    features = blocks()
    kwargs = {"attn_implementation": implementation} if mask_format == "own" else {}
    batch = masked_collator(tokenizer, **kwargs)(features)
    labels = batch.pop("labels")
    assert (labels != -100).sum() > 3  # something is masked
    logits = model(**batch).logits  # (B, T, V)
    for row, start, length in documents(features):
        ids = batch["input_ids"][row : row + 1, start : start + length]  # the masked document, alone
        torch.testing.assert_close(
            logits[row, start : start + length], model(input_ids=ids).logits[0], atol=1e-5, rtol=0
        )
    # the same masked rows with a padding mask only: the documents of a row see each other
    padding = masked_collator(tokenizer, attention_on_device=True)(features)["attention_mask"]
    shared = model(input_ids=batch["input_ids"], attention_mask=padding, position_ids=batch["position_ids"]).logits
    assert (shared[0, :3] - logits[0, :3]).abs().max() > 1e-3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("objective", ["clm", "mlm"])
@torch.no_grad()
def test_default_and_device_forms_give_the_same_outputs(tokenizer, tmp_path, implementation, objective):
    features = blocks()
    if objective == "clm":
        model = as_trainer_runs_it(llama(tokenizer, implementation), tmp_path)
        default = DataCollatorForCausalLM(tokenizer)(features)
        device = DataCollatorForCausalLM(tokenizer, attention_on_device=True)(features)
    else:
        model = bert(tokenizer, implementation)
        default = masked_collator(tokenizer, attn_implementation=implementation)(features)
        device = masked_collator(tokenizer, attention_on_device=True)(features)
    real = device["attention_mask"].bool()  # (B, T): padding queries differ between the forms, no label reads them
    inputs = isolate_documents(device, causal=objective == "clm", implementation=implementation, dtype=torch.float32)
    a, b = model(**default), model(**inputs)
    torch.testing.assert_close(a.logits[real], b.logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=0)


def test_plain_trainer_evaluates_a_packed_row_as_its_documents(tokenizer, tmp_path):
    model = llama(tokenizer, "sdpa")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=8,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,  # else the Trainer drops document_lengths (no model input) before the collator
    )

    def loss(features):
        trainer = Trainer(model=model, args=args, data_collator=DataCollatorForCausalLM(tokenizer))
        return trainer.evaluate(features)["eval_loss"]

    features = blocks()
    pieces = [
        {"input_ids": features[row]["input_ids"][start : start + length]}
        for row, start, length in documents(features)
        if length > 1
    ]
    expected = sum(loss([piece]) * (len(piece["input_ids"]) - 1) for piece in pieces)
    expected /= sum(len(piece["input_ids"]) - 1 for piece in pieces)
    assert model.config.use_cache is False  # what the Trainer set
    assert loss(features) == pytest.approx(expected, abs=1e-5)


# ---- MultiObjectiveCollator (CLM→MLM views) -------------------------------------------------------------------


@pytest.mark.parametrize("attention_on_device", [False, True])
def test_multi_objective_views_in_both_modes(tokenizer, attention_on_device):
    masked = masked_collator(tokenizer, attention_on_device=attention_on_device)
    causal = DataCollatorForCausalLM(tokenizer, attention_on_device=attention_on_device)
    batch = MultiObjectiveCollator(masked, causal)(blocks())
    views = {name: {k.split("::")[1]: v for k, v in batch.items() if k.startswith(name)} for name in ("clm", "mlm")}
    alone = {"clm": causal(blocks()), "mlm": masked(blocks())}
    assert views["clm"]["labels"][0].tolist() == [211, 212, -100, -100, 215, 216, 217, -100]  # next-token targets
    for name, view in views.items():
        expected = sorted(alone[name])
        assert sorted(view) == expected, name
        for key in expected:
            if key != "labels" or name == "mlm":
                assert torch.equal(view[key], alone[name][key]), (name, key)
    if attention_on_device:
        assert views["mlm"]["document_ids"][1].tolist() == [0, 0, 1, 1, 1, -1, -1, -1]
    else:
        assert "attention_mask" not in views["clm"] and views["mlm"]["attention_mask"].shape == (3, 1, 8, 8)
        device = MultiObjectiveCollator(
            masked_collator(tokenizer, attention_on_device=True),
            DataCollatorForCausalLM(tokenizer, attention_on_device=True),
        )(blocks())
        mlm = {k.split("::")[1]: v for k, v in device.items() if k.startswith("mlm")}
        assert torch.equal(
            isolate_documents(mlm, causal=False, implementation="eager")["attention_mask"],
            views["mlm"]["attention_mask"],
        )


def test_multi_objective_refuses_mixed_modes(tokenizer):
    with pytest.raises(ValueError, match="attention_on_device differs"):
        MultiObjectiveCollator(
            masked_collator(tokenizer), DataCollatorForCausalLM(tokenizer, attention_on_device=True)
        )


# ---- errors ----------------------------------------------------------------------------------------------------


def test_left_padding_cannot_drop_the_mask(tokenizer):
    feature = {"input_ids": [0, 5, 6, 7], "attention_mask": [0, 1, 1, 1], "document_lengths": [2, 2]}
    with pytest.raises(ValueError, match="attention_mask hides tokens before real ones"):
        DataCollatorForCausalLM(tokenizer)([feature])
    four_d = DataCollatorForCausalLM(tokenizer, attn_implementation="sdpa")([feature])["attention_mask"][0, 0]
    assert not four_d[1:, 0].any()  # no real query sees the hidden token
    assert DataCollatorForCausalLM(tokenizer, attention_on_device=True)([feature])["document_ids"].tolist() == [
        [-1, 0, 1, 1]
    ]


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_errors_name_the_field(tokenizer, kind):
    build = DataCollatorForCausalLM if kind == "causal" else DataCollatorForMaskedLM
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'.*padding-free"):
        build(tokenizer, attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="attention_on_device must be True or False"):
        build(tokenizer, attention_on_device="yes")
    build(tokenizer, attn_implementation="flash_attention_2", padding_free=True)  # flash isolates by cu_seq_lens
