"""DataCollatorForCausalLM: labels are the inputs with -100 only on real padding; padding-free batches."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening

from hf_pretrain.collators import DataCollatorForCausalLM


@pytest.fixture(scope="module")
def pad_is_eos(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token
    return tok


def test_pad_equal_to_eos_keeps_eos_labels(pad_is_eos):
    eos = pad_is_eos.eos_token_id
    assert pad_is_eos.pad_token_id == eos
    features = [{"input_ids": [300, 301, eos]}, {"input_ids": [302, eos]}, {"input_ids": [eos]}]
    batch = DataCollatorForCausalLM(pad_is_eos)(features)
    assert batch["input_ids"].tolist() == [[300, 301, eos], [302, eos, eos], [eos, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert batch["labels"].tolist() == [[300, 301, eos], [302, eos, -100], [eos, -100, -100]]
    assert batch["labels"].dtype == batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.int64
    # The transformers baseline drops every eos from the labels here.
    baseline = DataCollatorForLanguageModeling(pad_is_eos, mlm=False)(features)
    assert baseline["labels"].tolist() == [[300, 301, -100], [302, -100, -100], [-100, -100, -100]]


def test_packed_blocks_keep_every_document_separator(pad_is_eos):
    eos = pad_is_eos.eos_token_id
    blocks = [
        {"input_ids": [300, 301, eos, 302, 303, eos, 304, 305]},
        {"input_ids": [306, eos, 307, 308, 309, eos, 310, 311]},
    ]
    batch = DataCollatorForCausalLM(pad_is_eos)(blocks)
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert (batch["attention_mask"] == 1).all()


def test_given_attention_mask_and_labels_are_honoured(tokenizer):
    pad = tokenizer.pad_token_id
    features = [
        {"input_ids": [300, 301, 302, pad], "attention_mask": [1, 1, 1, 0], "labels": [-100, 301, 302, -100]},
        {"input_ids": [303, 304], "attention_mask": [1, 1], "labels": [-100, -100]},
    ]
    batch = DataCollatorForCausalLM(tokenizer)(features)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 301, 302, -100], [-100, -100, -100, -100]]
    no_labels = DataCollatorForCausalLM(tokenizer)([{k: v for k, v in f.items() if k != "labels"} for f in features])
    assert no_labels["labels"].tolist() == [[300, 301, 302, -100], [303, 304, -100, -100]]


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
def test_input_types_and_pad_to_multiple_of(tokenizer, kind):
    convert = {"list": list, "numpy": np.array, "tensor": torch.tensor}[kind]
    features = [{"input_ids": convert([300, 301, 302])}, {"input_ids": convert([303])}]
    batch = DataCollatorForCausalLM(tokenizer, pad_to_multiple_of=4)(features)
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[300, 301, 302, pad], [303, pad, pad, pad]]
    assert batch["labels"].tolist() == [[300, 301, 302, -100], [303, -100, -100, -100]]


def test_padding_free_layout_matches_transformers_flattening(pad_is_eos):
    eos = pad_is_eos.eos_token_id
    features = [{"input_ids": [300, 301, eos]}, {"input_ids": [302, eos]}, {"input_ids": [303, 304, 305, eos]}]
    batch = DataCollatorForCausalLM(pad_is_eos, padding_free=True)(features)
    assert batch["input_ids"].tolist() == [[300, 301, eos, 302, eos, 303, 304, 305, eos]]
    assert batch["labels"].tolist() == [[-100, 301, eos, -100, eos, -100, 304, 305, eos]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 9]
    assert batch["max_length_q"] == 4
    reference = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(features)
    assert sorted(batch) == sorted(reference)  # no attention_mask in this mode
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            assert batch[key].dtype == value.dtype and batch[key].shape == value.shape, key
            assert torch.equal(batch[key], value), key
        else:
            assert batch[key] == value and type(batch[key]) is type(value), key


def test_padding_free_without_tokenizer_and_with_given_labels():
    features = [{"input_ids": [5, 6, 7], "labels": [-100, -100, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    batch = DataCollatorForCausalLM(padding_free=True)(features)
    assert batch["labels"].tolist() == [[-100, -100, 7, -100, 9]]  # first token of each document never a target


def test_padding_free_drops_pre_padding(tokenizer):
    pad = tokenizer.pad_token_id
    features = [{"input_ids": [300, 301, pad], "attention_mask": [1, 1, 0]}, {"input_ids": [302, 303, 304]}]
    features[1]["attention_mask"] = [1, 1, 1]
    batch = DataCollatorForCausalLM(tokenizer, padding_free=True)(features)
    assert batch["input_ids"].tolist() == [[300, 301, 302, 303, 304]]
    assert batch["cu_seq_lens_k"].tolist() == [0, 2, 5]
    assert batch["labels"].tolist() == [[-100, 301, -100, 303, 304]]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(1, 20), min_size=1, max_size=6), seed=st.integers(0, 2**31))
def test_padded_and_padding_free_agree(pad_is_eos, lengths, seed):
    rng = np.random.default_rng(seed)
    features = [{"input_ids": rng.integers(0, len(pad_is_eos), n).tolist()} for n in lengths]
    padded = DataCollatorForCausalLM(pad_is_eos)(features)
    packed = DataCollatorForCausalLM(pad_is_eos, padding_free=True)(features)
    bounds = packed["cu_seq_lens_q"].tolist()
    assert bounds == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    for i, n in enumerate(lengths):
        row = features[i]["input_ids"]
        assert padded["labels"][i, :n].tolist() == row
        assert (padded["labels"][i, n:] == -100).all()
        assert packed["labels"][0, bounds[i] : bounds[i + 1]].tolist() == [-100, *row[1:]]
        assert packed["position_ids"][0, bounds[i] : bounds[i + 1]].tolist() == list(range(n))


def test_collate_then_add_labels_equals_call(tokenizer):
    features = [{"input_ids": [300, 301, 302]}, {"input_ids": [303]}]
    collator = DataCollatorForCausalLM(tokenizer)
    collated = collator.collate(features)
    assert "labels" not in collated
    one, two = collator(features), collator.add_labels(collated)
    for key in one:
        assert torch.equal(one[key], two[key])


def test_errors(tokenizer):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="pad_token"):
        DataCollatorForCausalLM(no_pad)
    with pytest.raises(ValueError, match="pad_token"):
        DataCollatorForCausalLM()
    DataCollatorForCausalLM(no_pad, padding_free=True)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        DataCollatorForCausalLM(tokenizer, pad_to_multiple_of=-8)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        DataCollatorForCausalLM(tokenizer, pad_to_multiple_of=8, padding_free=True)
    for padding_free in (False, True):
        collator = DataCollatorForCausalLM(tokenizer, padding_free=padding_free)
        with pytest.raises(ValueError, match="input_ids"):
            collator([{"text": "hello"}])
        with pytest.raises(ValueError, match="attention_mask"):
            collator([{"input_ids": [1, 2], "attention_mask": [1]}])
        with pytest.raises(ValueError, match="labels"):
            collator([{"input_ids": [1, 2], "labels": [1, 2, 3]}])


# ---------------------------------------------------------------------------------------------------------------
# Keys beyond input_ids / attention_mask / labels: padded or stacked and passed through, never dropped silently
# ---------------------------------------------------------------------------------------------------------------


def test_extra_keys_are_padded_or_stacked(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok._pad_token_type_id = 1  # token_type_ids pad with the tokenizer's value
    pad = tok.pad_token_id
    features = [
        {"input_ids": [300, 301, 302], "token_type_ids": [0, 0, 1], "weights": [0.5, 1.0, 2.0], "keep": [True] * 3,
         "label": 3, "score": 0.25, "target": [1, 2], "offsets": [[0, 1], [1, 3], [4, 5]]},
        {"input_ids": [303], "token_type_ids": [0], "weights": [1.5], "keep": [False],
         "label": torch.tensor(4), "score": np.float64(0.5), "target": (3, 4), "offsets": [[0, 2]]},
    ]  # fmt: skip
    batch = DataCollatorForCausalLM(tok, pad_to_multiple_of=4)(features)
    assert batch["input_ids"].tolist() == [[300, 301, 302, pad], [303, pad, pad, pad]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert batch["weights"].dtype == torch.float32
    assert batch["weights"].tolist() == [[0.5, 1.0, 2.0, 0.0], [1.5, 0.0, 0.0, 0.0]]
    assert batch["keep"].dtype == torch.bool and batch["keep"].tolist() == [[True] * 3 + [False], [False] * 4]
    assert batch["label"].tolist() == [3, 4] and batch["label"].dtype == torch.int64
    assert batch["score"].tolist() == [0.25, 0.5] and batch["score"].dtype == torch.float32
    assert batch["target"].tolist() == [[1, 2], [3, 4]]  # one fixed-size value per example: (B, 2)
    assert batch["offsets"].shape == (2, 4, 2)  # per token with a trailing dimension
    assert batch["offsets"].tolist()[1] == [[0, 2], [0, 0], [0, 0], [0, 0]]
    assert batch["labels"].tolist() == [[300, 301, 302, -100], [303, -100, -100, -100]]
    assert sorted(features[0]) == sorted(["input_ids", "token_type_ids", "weights", "keep", "label", "score",
                                          "target", "offsets"])  # fmt: skip


def test_extra_keys_in_padding_free_batches(tokenizer):
    pad = tokenizer.pad_token_id
    features = [
        {"input_ids": [300, 301, pad], "attention_mask": [1, 1, 0], "token_type_ids": [0, 1, 1], "label": 1},
        {"input_ids": [302, 303], "attention_mask": [1, 1], "token_type_ids": [0, 0], "label": 0},
    ]
    batch = DataCollatorForCausalLM(tokenizer, padding_free=True, return_tensors="np")(features)
    assert isinstance(batch["input_ids"], np.ndarray) and isinstance(batch["max_length_q"], int)
    assert batch["input_ids"].tolist() == [[300, 301, 302, 303]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 0, 0]]  # flattened like input_ids, pre-padding dropped
    assert batch["label"].tolist() == [1, 0]  # one per document (D,)
    with pytest.raises(ValueError, match="'position_ids', which padding_free=True builds itself"):
        DataCollatorForCausalLM(tokenizer, padding_free=True)([{"input_ids": [1, 2], "position_ids": [0, 1]}])


def test_tokenizer_only_outputs_are_dropped_as_in_transformers(tokenizer):
    encodings = [tokenizer(t, return_special_tokens_mask=True, return_offsets_mapping=True) for t in ("ab", "a")]
    batch = DataCollatorForCausalLM(tokenizer)(encodings)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ([{"input_ids": [1, 2], "text": "ab"}, {"input_ids": [3], "text": "c"}], "'text' holds strings"),
        ([{"input_ids": [1, 2], "x": None}, {"input_ids": [3], "x": None}], "'x' holds None"),
        ([{"input_ids": [1, 2], "x": [1, None]}, {"input_ids": [3], "x": [2]}], "'x' holds None"),
        (
            [{"input_ids": [1, 2], "x": [1, 2, 3]}, {"input_ids": [3], "x": [1, 2]}],
            "'x' is neither one value per token",
        ),
        ([{"input_ids": [1, 2], "x": [1, 2]}, {"input_ids": [3], "x": 4}], "'x' is neither one value per token"),
        ([{"input_ids": [1, 2], "x": 1}, {"input_ids": [3]}], "Only some features have a 'x' entry"),
        ([{"input_ids": [1, 2], "x": [[1], [2, 3]]}, {"input_ids": [3], "x": [[4]]}], "'x'"),
        ([{"input_ids": [1, 2]}, [3]], "all of one kind"),
        ([{"input_ids": [1, 2]}, "text"], "all of one kind"),
    ],
)
def test_extra_keys_that_cannot_be_batched_are_named(tokenizer, features, message):
    for padding_free in (False, True):
        with pytest.raises(ValueError, match=message):
            DataCollatorForCausalLM(tokenizer, padding_free=padding_free)(features)


def test_return_tensors_np_for_every_step(tokenizer):
    features = [[300, 301, 302], [303]]
    collator = DataCollatorForCausalLM(tokenizer, return_tensors="np")
    collated = collator.collate(features)
    assert isinstance(collated["input_ids"], np.ndarray) and "labels" not in collated
    labelled = collator.add_labels(collated)
    assert isinstance(labelled["labels"], np.ndarray) and labelled["labels"].dtype == np.int64
    assert labelled["labels"].tolist() == collator(features)["labels"].tolist() == [[300, 301, 302], [303, -100, -100]]
    torch_batch = DataCollatorForCausalLM(tokenizer)(features)
    for key, value in torch_batch.items():
        assert value.dtype == torch.from_numpy(labelled[key]).dtype and torch.equal(
            value, torch.from_numpy(labelled[key])
        )
