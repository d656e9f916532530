"""Our collators as a drop-in for transformers' `DataCollatorForLanguageModeling`: its own tests, ported.

The cases come from transformers' tests/trainer/test_data_collator.py (`DataCollatorIntegrationTest`,
`NumpyDataCollatorIntegrationTest`, `DataCollatorImmutabilityTest`, `NumpyDataCollatorImmutabilityTest`); each
test names the upstream test it ports. Upstream builds a BertTokenizer from a 5-token vocabulary and feeds ids
0..9, most of them outside it; ours reject ids outside the vocabulary, so the WordPiece vocabulary here has real
words after the same 5 special tokens, and the features use them. Upstream mostly checks shapes; where the
outcome is deterministic (rate 1 or 0, no random replacement) these tests assert exact tensors, and compare with
transformers' collator itself.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import BertTokenizerFast, DataCollatorForLanguageModeling, PreTrainedTokenizerFast

from hf_pretrain.collators import DataCollatorForCausalLM, DataCollatorForMaskedLM
from hf_pretrain.collators._words import word_start_table

# Upstream's special tokens, in upstream's order ([UNK] 0, [CLS] 1, [SEP] 2, [PAD] 3, [MASK] 4), then words.
VOCAB = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
VOCAB += ["the", "quick", "brown", "fox", "jump", "##s", "##ed", "over", "lazy", "dog", "play", "##ing", "run", "."]
UNK, CLS, SEP, PAD, MASK = range(5)
WORDS = list(range(5, len(VOCAB)))  # 5 .. 18, none special


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A WordPiece BertTokenizerFast from a vocab.txt, as upstream's setUp writes one."""
    folder = tmp_path_factory.mktemp("bert")
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("".join(token + "\n" for token in VOCAB), encoding="utf-8")
    tokenizer = BertTokenizerFast(str(vocab_file))
    assert tokenizer.pad_token_id == PAD and tokenizer.mask_token_id == MASK and len(tokenizer) == len(VOCAB)
    return tokenizer


def as_lists(batch: dict) -> dict:
    return {key: value.tolist() if hasattr(value, "tolist") else value for key, value in batch.items()}


def assert_container(batch: dict, return_tensors: str) -> None:
    kind = torch.Tensor if return_tensors == "pt" else np.ndarray
    for key, value in batch.items():
        if not key.startswith("max_length"):
            assert isinstance(value, kind), (key, type(value))


def deterministic_mlm(tokenizer, **kwargs) -> DataCollatorForMaskedLM:
    """Every maskable token selected and replaced by the mask token: the outcome transformers' collator gives too."""
    return DataCollatorForMaskedLM(
        tokenizer, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0, **kwargs
    )


def hf_deterministic_mlm(tokenizer, **kwargs) -> DataCollatorForLanguageModeling:
    return DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0, **kwargs
    )


NO_PAD = [WORDS[:10], WORDS[2:12]]  # two features of length 10
PAD_FEATURES = [WORDS[:5], WORDS[:10]]  # lengths 5 and 10


def feature_kinds(rows: list[list[int]], kind: str) -> list:
    # Upstream test_data_collator_for_language_modeling runs every case with dicts and with plain lists of ids.
    return [{"input_ids": list(row)} for row in rows] if kind == "dict" else [list(row) for row in rows]


# ---------------------------------------------------------------------------------------------------------------
# DataCollatorIntegrationTest / NumpyDataCollatorIntegrationTest .test_data_collator_for_language_modeling
# (its helper _test_no_pad_and_pad), causal half (mlm=False)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
@pytest.mark.parametrize("kind", ["dict", "list"])
def test_causal_no_pad_and_pad(bert, kind, return_tensors):
    collator = DataCollatorForCausalLM(bert, return_tensors=return_tensors)
    batch = collator(feature_kinds(NO_PAD, kind))
    assert_container(batch, return_tensors)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 10)
    assert batch["labels"].tolist() == NO_PAD

    batch = collator(feature_kinds(PAD_FEATURES, kind))
    assert batch["input_ids"].tolist() == [WORDS[:5] + [PAD] * 5, WORDS[:10]]
    assert batch["labels"].tolist() == [WORDS[:5] + [-100] * 5, WORDS[:10]]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 5, [1] * 10]
    assert batch["labels"].dtype == batch["input_ids"].dtype == (torch.int64 if return_tensors == "pt" else np.int64)

    multiple = DataCollatorForCausalLM(bert, pad_to_multiple_of=8, return_tensors=return_tensors)
    assert multiple(feature_kinds(NO_PAD, kind))["input_ids"].shape == (2, 16)
    batch = multiple(feature_kinds(PAD_FEATURES, kind))
    assert batch["labels"].shape == (2, 16)
    assert batch["labels"].tolist() == [WORDS[:5] + [-100] * 11, WORDS[:10] + [-100] * 6]

    # The same input_ids and labels as transformers' collator (pad is no real token here, so its pad-id rule agrees).
    reference = DataCollatorForLanguageModeling(bert, mlm=False, pad_to_multiple_of=8, return_tensors=return_tensors)
    expected = reference(feature_kinds(PAD_FEATURES, kind))
    for key in ("input_ids", "labels"):
        assert batch[key].tolist() == expected[key].tolist(), key


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_causal_without_pad_token_is_an_error(bert, kind):
    # Upstream: tokenizer._pad_token = None, then padding raises a ValueError; ours says so at construction.
    no_pad = copy.deepcopy(bert)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="pad token"):
        DataCollatorForCausalLM(no_pad)(feature_kinds(PAD_FEATURES, kind))
    with pytest.raises(ValueError, match="pad token"):
        DataCollatorForMaskedLM(no_pad)(feature_kinds(PAD_FEATURES, kind))


def test_per_call_return_tensors(bert):
    # NumpyDataCollatorIntegrationTest._test_no_pad_and_pad calls `data_collator(pad_features, return_tensors="np")`.
    for collator in (DataCollatorForCausalLM(bert), deterministic_mlm(bert)):
        as_np, as_pt = collator(PAD_FEATURES, return_tensors="np"), collator(PAD_FEATURES)
        assert_container(as_np, "np")
        assert_container(as_pt, "pt")
        assert as_lists(as_np) == as_lists(as_pt)
        with pytest.raises(ValueError, match="return_tensors"):
            collator(PAD_FEATURES, return_tensors="jax")


@pytest.mark.parametrize("collator_class", [DataCollatorForCausalLM, DataCollatorForMaskedLM])
def test_return_tensors_tf_and_unknown_are_errors(bert, collator_class):
    with pytest.raises(ValueError, match="return_tensors='tf' is not supported"):
        collator_class(bert, return_tensors="tf")
    with pytest.raises(ValueError, match="return_tensors must be one of"):
        collator_class(bert, return_tensors="torch")


# ---------------------------------------------------------------------------------------------------------------
# ... .test_data_collator_for_language_modeling, masked half (mlm=True)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
@pytest.mark.parametrize("kind", ["dict", "list"])
def test_masked_no_pad_and_pad(bert, kind, return_tensors):
    # Upstream asserts mask tokens appear and that labels are -100 wherever the input is not the mask token; that
    # holds exactly when every selected token becomes the mask token (mask_replace_prob=1).
    collator = DataCollatorForMaskedLM(
        bert,
        mlm_probability=0.5,
        mask_replace_prob=1.0,
        random_replace_prob=0.0,
        seed=42,
        return_tensors=return_tensors,
    )
    multiple = DataCollatorForMaskedLM(
        bert,
        mlm_probability=0.5,
        mask_replace_prob=1.0,
        random_replace_prob=0.0,
        seed=42,
        pad_to_multiple_of=8,
        return_tensors=return_tensors,
    )
    for features, make, width in [
        (NO_PAD, collator, 10),
        (PAD_FEATURES, collator, 10),
        (NO_PAD, multiple, 16),
        (PAD_FEATURES, multiple, 16),
    ]:
        batch = make(feature_kinds(features, kind))
        assert_container(batch, return_tensors)
        assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
        inputs, labels = np.asarray(batch["input_ids"]), np.asarray(batch["labels"])
        masked = inputs == MASK
        assert masked.any()
        assert (labels[~masked] == -100).all()
        original = np.full((2, width), PAD)
        for i, row in enumerate(features):
            original[i, : len(row)] = row
        assert (labels[masked] == original[masked]).all()  # the label of a masked position is its original id
        assert (inputs[~masked] == original[~masked]).all()  # nothing else changed, padding included
        assert not masked[original == PAD].any()


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_masked_rate_one_equals_transformers(bert, return_tensors):
    # Exact parity where transformers' outcome is deterministic: every non-special, non-padding token masked.
    features = [{"input_ids": [CLS, *WORDS[:6], SEP]}, {"input_ids": [CLS, WORDS[7], SEP]}]
    ours = deterministic_mlm(bert, pad_to_multiple_of=8, return_tensors=return_tensors)(features)
    theirs = hf_deterministic_mlm(bert, pad_to_multiple_of=8, return_tensors=return_tensors)(features)
    assert sorted(ours) == sorted(theirs) == ["attention_mask", "input_ids", "labels"]
    assert as_lists(ours) == as_lists(theirs)
    assert ours["input_ids"].tolist() == [[CLS, *[MASK] * 6, SEP], [CLS, MASK, SEP, *[PAD] * 5]]
    assert ours["labels"].tolist() == [[-100, *WORDS[:6], -100], [-100, WORDS[7], *[-100] * 6]]


# ---------------------------------------------------------------------------------------------------------------
# .test_nsp and .test_sop (torch and numpy): token_type_ids padded, next_sentence_label / sentence_order_label
# stacked to (B,). Upstream's ids 0..4 are all special tokens: nothing may be masked, even at rate 1.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
@pytest.mark.parametrize(
    ("label_key", "convert"),
    [
        ("next_sentence_label", list),  # test_nsp: lists
        ("sentence_order_label", torch.tensor),  # test_sop: torch tensors
        ("sentence_order_label", np.array),  # NumpyDataCollatorIntegrationTest.test_sop: numpy arrays
    ],
)
def test_nsp_and_sop(bert, label_key, convert, return_tensors):
    features = [
        {"input_ids": convert([0, 1, 2, 3, 4]), "token_type_ids": convert([0, 1, 2, 3, 4]), label_key: i}
        for i in range(2)
    ]
    batch = deterministic_mlm(bert, return_tensors=return_tensors)(features)
    assert_container(batch, return_tensors)
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == batch["labels"].shape == (2, 5)
    assert batch[label_key].shape == (2,)
    assert batch[label_key].tolist() == [0, 1] and batch[label_key].dtype == batch["input_ids"].dtype  # int64
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3, 4]] * 2  # all special: never masked
    assert batch["labels"].tolist() == [[-100] * 5] * 2

    batch = deterministic_mlm(bert, pad_to_multiple_of=8, return_tensors=return_tensors)(features)
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == batch["labels"].shape == (2, 8)
    assert batch[label_key].shape == (2,)
    assert batch["token_type_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 0, 0]] * 2  # pad_token_type_id 0
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3, 4, PAD, PAD, PAD]] * 2
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 3] * 2

    # The same batch as transformers' collator, key for key.
    reference = hf_deterministic_mlm(bert, pad_to_multiple_of=8, return_tensors=return_tensors)(features)
    assert as_lists(batch) == as_lists(reference)


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_bert_sentence_pairs_equal_transformers(bert, return_tensors):
    # test_nsp with real sentence pairs from the tokenizer: token_type_ids 0/1, ragged lengths, words to mask.
    pairs = [("the quick fox", "jumps over the lazy dog."), ("the dog", "played")]
    features = [{**bert(a, b), "next_sentence_label": label} for (a, b), label in zip(pairs, (0, 1))]
    ours = deterministic_mlm(bert, return_tensors=return_tensors)(features)
    theirs = hf_deterministic_mlm(bert, return_tensors=return_tensors)(features)
    assert sorted(ours) == sorted(theirs)
    assert as_lists(ours) == as_lists(theirs)
    n = len(features[0]["input_ids"])
    # [CLS] the dog [SEP] play ##ed [SEP], then padding with pad_token_type_id 0
    assert ours["token_type_ids"][1].tolist() == [0, 0, 0, 0, 1, 1, 1] + [0] * (n - 7)
    causal = DataCollatorForCausalLM(bert, return_tensors=return_tensors)(features)
    assert causal["token_type_ids"].tolist() == ours["token_type_ids"].tolist()
    assert causal["next_sentence_label"].tolist() == [0, 1]


def test_given_special_tokens_mask_is_consumed_as_in_transformers(bert):
    # transformers' tip: tokenize with return_special_tokens_mask=True; the collator pops the mask.
    features = [bert(text, return_special_tokens_mask=True) for text in ("the quick brown fox", "run")]
    ours, theirs = deterministic_mlm(bert)(features), hf_deterministic_mlm(bert)(features)
    assert "special_tokens_mask" not in ours and "special_tokens_mask" not in theirs
    assert as_lists(ours) == as_lists(theirs)


# ---------------------------------------------------------------------------------------------------------------
# .test_data_collator_for_whole_word_mask (torch and numpy): dict features, then numpy-array features
# ---------------------------------------------------------------------------------------------------------------

TEXTS = ["the quick fox jumps over the lazy dog", "the brown dog played", "running dogs jumped"]


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_whole_word_mask_shapes_and_array_features(bert, return_tensors):
    collator = DataCollatorForMaskedLM(bert, whole_word_mask=True, seed=0, return_tensors=return_tensors)
    features = [{"input_ids": WORDS[:10]}, {"input_ids": WORDS[:10]}]
    batch = collator(features)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 10)
    # "Features can already be tensors": numpy arrays give the same batch.
    arrays = collator([{"input_ids": np.arange(5, 15)}, {"input_ids": np.arange(5, 15)}])
    assert as_lists(arrays) == as_lists(batch)


def _words(tokenizer, ids: list[int]) -> list[list[int]]:
    """Positions of each word (a token and its ## continuations), special tokens excluded: the slow, obvious way."""
    words: list[list[int]] = []
    for position, token in enumerate(tokenizer.convert_ids_to_tokens(ids)):
        if ids[position] in tokenizer.all_special_ids:
            continue
        if token.startswith("##") and words and words[-1][-1] == position - 1:
            words[-1].append(position)
        else:
            words.append([position])
    return words


@pytest.mark.parametrize("source", ["vocabulary", "word_ids", "offset_mapping"])
def test_whole_word_mask_groups_wordpiece_words(bert, source):
    # Upstream 5.x derives words from `offset_mapping` (return_offsets_mapping=True). Ours take `word_ids` first,
    # then the vocabulary's ## rule (offsets are only consumed here); without punctuation all three agree.
    texts = TEXTS * 4
    features = []
    for i, text in enumerate(texts):
        encoding = bert(text, return_offsets_mapping=source == "offset_mapping")
        feature = {"input_ids": encoding["input_ids"][: len(encoding["input_ids"]) - i % 3]}  # distinct keys
        n = len(feature["input_ids"])
        if source == "word_ids":
            feature["word_ids"] = encoding.word_ids()[:n]
        if source == "offset_mapping":
            feature["offset_mapping"] = encoding["offset_mapping"][:n]
        features.append(feature)
    collator = DataCollatorForMaskedLM(bert, mlm_probability=0.4, whole_word_mask=True, seed=3)
    batch = collator(features)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]  # offset_mapping / word_ids consumed
    multi_token_words = 0
    for feature, labels, inputs in zip(features, batch["labels"].tolist(), batch["input_ids"].tolist()):
        ids = feature["input_ids"]
        for word in _words(bert, ids):
            multi_token_words += len(word) > 1
            assert len({labels[p] != -100 for p in word}) == 1, (ids, word, labels)
            assert len({inputs[p] == MASK for p in word}) == 1
        assert all(labels[p] == -100 for p, t in enumerate(ids) if t in bert.all_special_ids)
    assert multi_token_words >= 8
    vocabulary = DataCollatorForMaskedLM(bert, mlm_probability=0.4, whole_word_mask=True, seed=3)(
        [{"input_ids": f["input_ids"]} for f in features]
    )
    assert as_lists(batch) == as_lists(vocabulary)


def test_whole_word_mask_with_offsets_equals_transformers_at_rate_one(bert):
    # transformers' tokenizer.pad does not pad offset_mapping: give it features of one length (pre-padded).
    features = [bert(text, return_offsets_mapping=True, padding="max_length", max_length=14) for text in TEXTS]
    ours = deterministic_mlm(bert, whole_word_mask=True)(features)
    theirs = hf_deterministic_mlm(bert, whole_word_mask=True)(features)
    assert "offset_mapping" not in ours and "offset_mapping" not in theirs
    assert as_lists(ours) == as_lists(theirs)


def test_a_known_vocabulary_convention_wins_over_offsets(bert):
    # Offsets say "dog." is one word (no gap before "."); BERT's ## rule, as in its original whole-word masking,
    # says two. The vocabulary rule is used, and offset_mapping only consumed.
    encoding = bert("the lazy dog.", return_offsets_mapping=True)
    for seed in range(10):
        collator = DataCollatorForMaskedLM(bert, mlm_probability=0.5, whole_word_mask=True, seed=seed)
        with_offsets = collator([{"input_ids": encoding["input_ids"], "offset_mapping": encoding["offset_mapping"]}])
        assert as_lists(with_offsets) == as_lists(collator([encoding["input_ids"]]))


@pytest.fixture(scope="module")
def chars():
    """One token per letter (WordLevel): no known word-start convention, so words come from offsets or word_ids."""
    vocab = {"[PAD]": 0, "[MASK]": 1, "[UNK]": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", mask_token="[MASK]", unk_token="[UNK]"
    )
    assert word_start_table(tokenizer) is None
    return tokenizer


def _char_features(chars, texts: list[str]) -> tuple[list[dict], list[list[int]]]:
    """Features with offset_mapping, and the whitespace word of each token (the words the offsets must give)."""
    features, words = [], []
    for text in texts:
        encoding = chars(text, return_offsets_mapping=True)
        features.append({"input_ids": encoding["input_ids"], "offset_mapping": encoding["offset_mapping"]})
        words.append([i for i, word in enumerate(text.split()) for _ in word])
    return features, words


def test_offset_mapping_gives_words_without_a_known_convention(chars):
    texts = ["the quick brown fox", "jumps over the lazy dog", "pack my box with five dozen jugs", "a bc def"]
    features, words = _char_features(chars, texts)
    collator = DataCollatorForMaskedLM(chars, mlm_probability=0.5, whole_word_mask=True, seed=2)
    batch = collator(features)
    assert "offset_mapping" not in batch
    for labels, row_words in zip(batch["labels"].tolist(), words):
        groups: dict[int, set[bool]] = {}
        for label, word in zip(labels, row_words):
            groups.setdefault(word, set()).add(label != -100)
        assert all(len(chosen) == 1 for chosen in groups.values()), (labels, row_words)
        assert {True} in groups.values() and {False} in groups.values()
    # Exactly the masks of the same words given as word_ids.
    by_word_ids = collator([{"input_ids": f["input_ids"], "word_ids": w} for f, w in zip(features, words)])
    assert as_lists(batch) == as_lists(by_word_ids)
    # Padding-free: each document masked as in the padded batch.
    packed = DataCollatorForMaskedLM(chars, mlm_probability=0.5, whole_word_mask=True, seed=2, padding_free=True)(
        features
    )
    assert "offset_mapping" not in packed
    bounds = packed["cu_seq_lens_q"].tolist()
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        assert packed["labels"][0, bounds[i] : bounds[i + 1]].tolist() == batch["labels"][i, :n].tolist()
    with pytest.raises(ValueError, match="offset_mapping"):
        collator([f["input_ids"] for f in features])  # no word boundaries at all


# ---------------------------------------------------------------------------------------------------------------
# DataCollatorImmutabilityTest / NumpyDataCollatorImmutabilityTest: test_language_modelling_collator_immutability,
# test_next_sentence_prediction_collator_immutability, test_sentence_order_prediction_collator_immutability
# ---------------------------------------------------------------------------------------------------------------


def _lm_collators(tokenizer, return_tensors: str) -> list:
    return [
        DataCollatorForCausalLM(tokenizer, return_tensors=return_tensors),
        DataCollatorForCausalLM(tokenizer, pad_to_multiple_of=8, return_tensors=return_tensors),
        DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=0, return_tensors=return_tensors),
        DataCollatorForMaskedLM(tokenizer, pad_to_multiple_of=8, mlm_probability=0.5, return_tensors=return_tensors),
        DataCollatorForMaskedLM(tokenizer, whole_word_mask=True, mlm_probability=0.5, return_tensors=return_tensors),
        DataCollatorForMaskedLM(tokenizer, padding_free=True, mlm_probability=0.5, return_tensors=return_tensors),
    ]


def _snapshot(features: list[dict]) -> list[dict]:
    return [{k: v.tolist() if hasattr(v, "tolist") else copy.deepcopy(v) for k, v in f.items()} for f in features]


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
@pytest.mark.parametrize("convert", [tuple, list, torch.tensor, np.array])
def test_collators_do_not_mutate_features(bert, convert, return_tensors):
    no_pad = [{"input_ids": convert(WORDS[:10])}, {"input_ids": convert(WORDS[:10])}]
    pad = [{"input_ids": convert(WORDS[:5])}, {"input_ids": convert(WORDS[2:7])}, {"input_ids": convert(WORDS[:9])}]
    nsp = [
        {
            "input_ids": convert([CLS, *WORDS[:3], SEP]),
            "token_type_ids": convert([0, 0, 0, 1, 1]),
            "next_sentence_label": i,
        }
        for i in range(2)
    ]
    sop = [{**f, "sentence_order_label": torch.tensor(i)} for i, f in enumerate(nsp)]
    for features in (no_pad, pad, nsp, sop):
        before = _snapshot(features)
        for collator in _lm_collators(bert, return_tensors):
            batch = collator(features)
            assert _snapshot(features) == before, type(collator).__name__
            # Writing to the batch must not reach the features either (no shared memory with them).
            ids = batch["input_ids"]
            ids[...] = 0
            assert _snapshot(features) == before


# ---------------------------------------------------------------------------------------------------------------
# The same contract with our trained byte-level BPE tokenizer (conftest `tokenizer`)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_byte_level_bpe_equals_transformers(tokenizer, tiny_corpus, return_tensors):
    encodings = [tokenizer(text, return_special_tokens_mask=True) for text in tiny_corpus[:4]]
    features = [{**e, "token_type_ids": [0] * len(e["input_ids"]), "sentence_order_label": i % 2} for i, e in
                enumerate(encodings)]  # fmt: skip
    for ours_class, theirs_kwargs in [(DataCollatorForCausalLM, {"mlm": False}), (None, {})]:
        if ours_class is None:
            ours = deterministic_mlm(tokenizer, pad_to_multiple_of=8, return_tensors=return_tensors)(features)
            theirs = hf_deterministic_mlm(tokenizer, pad_to_multiple_of=8, return_tensors=return_tensors)(features)
        else:
            ours = ours_class(tokenizer, pad_to_multiple_of=8, return_tensors=return_tensors)(features)
            theirs = DataCollatorForLanguageModeling(
                tokenizer, pad_to_multiple_of=8, return_tensors=return_tensors, **theirs_kwargs
            )(features)
        assert_container(ours, return_tensors)
        assert sorted(ours) == sorted(theirs)
        assert as_lists(ours) == as_lists(theirs)
    plain = deterministic_mlm(tokenizer)([e["input_ids"] for e in encodings])  # plain lists of ids
    assert plain["labels"].tolist() == deterministic_mlm(tokenizer)(encodings)["labels"].tolist()


def test_plain_lists_in_padding_free_batches(tokenizer):
    rows = [[300, 301, 302], [303, 304]]
    for collator in (
        DataCollatorForCausalLM(tokenizer, padding_free=True),
        deterministic_mlm(tokenizer, padding_free=True),
    ):
        from_lists = collator(rows)
        from_dicts = collator([{"input_ids": row} for row in rows])
        from_tensors = collator([torch.tensor(row) for row in rows])
        assert as_lists(from_lists) == as_lists(from_dicts) == as_lists(from_tensors)
        assert from_lists["cu_seq_lens_q"].tolist() == [0, 3, 5]
