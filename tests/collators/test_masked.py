"""DataCollatorForMaskedLM: exact small cases, statistics of the 80/10/10 scheme, whole words, exact counts,
padding-free equivalence, reproducibility across batches and DataLoader workers, the shared masking rate, and the
masks pinned by checksum (recorded before the speed-ups of the draw)."""

from __future__ import annotations

import copy
import hashlib
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from hf_pretrain.collators import DataCollatorForMaskedLM
from hf_pretrain.collators._words import word_start_table

SIGMAS = 5.0


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids)


def plain_ids(tokenizer) -> np.ndarray:
    return np.array([i for i in range(len(tokenizer)) if i not in special_ids(tokenizer)])


def random_features(tokenizer, count: int, low: int, high: int, seed: int = 0) -> list[dict]:
    """Features framed by bos ... eos with non-special tokens in between; ragged lengths in [low, high]."""
    rng = np.random.default_rng(seed)
    vocab = plain_ids(tokenizer)
    return [
        {
            "input_ids": [
                tokenizer.bos_token_id,
                *rng.choice(vocab, int(rng.integers(low, high + 1))).tolist(),
                tokenizer.eos_token_id,
            ]
        }
        for _ in range(count)
    ]


def text_features(tokenizer, texts: list[str], with_word_ids: bool = False) -> list[dict]:
    features = []
    for text in texts:
        encoding = tokenizer(text)
        feature = {"input_ids": encoding["input_ids"]}
        if with_word_ids:
            feature["word_ids"] = encoding.word_ids()
        features.append(feature)
    return features


def within(count: int, total: int, p: float) -> bool:
    """count / total lies within SIGMAS binomial standard deviations of p."""
    return abs(count - total * p) <= SIGMAS * math.sqrt(total * p * (1 - p)) + 1


def assert_binomial(count: int, total: int, p: float, what: str) -> None:
    assert within(count, total, p), f"{what}: {count}/{total} = {count / total:.4f}, expected {p}"


def per_document(batch: dict, key: str) -> list[list[int]]:
    """Split a padded (attention_mask) or padding-free (cu_seq_lens_q) batch into per-document lists."""
    if "cu_seq_lens_q" in batch:
        bounds = batch["cu_seq_lens_q"].tolist()
        row = batch[key][0].tolist()
        return [row[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    lengths = batch["attention_mask"].sum(1).tolist()
    return [row[:n] for row, n in zip(batch[key].tolist(), lengths)]


# ---------------------------------------------------------------------------------------------------------------
# Exact small cases
# ---------------------------------------------------------------------------------------------------------------


def test_small_batch_by_hand(tokenizer):
    bos, eos, pad, mask = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.mask_token_id,
    )
    a, b = plain_ids(tokenizer)[:2].tolist()
    features = [{"input_ids": [bos, a, b, a, eos]}, {"input_ids": [bos, b, eos]}]
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0)
    batch = collator(features)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]
    assert batch["input_ids"].tolist() == [[bos, mask, mask, mask, eos], [bos, mask, eos, pad, pad]]
    assert batch["labels"].tolist() == [[-100, a, b, a, -100], [-100, b, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["attention_mask"].dtype == torch.int64

    nothing = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.0)(features)
    assert nothing["input_ids"].tolist() == [[bos, a, b, a, eos], [bos, b, eos, pad, pad]]
    assert (nothing["labels"] == -100).all()

    kept = DataCollatorForMaskedLM(tokenizer, mlm_probability=1.0, mask_replace_prob=0.0, random_replace_prob=0.0)
    batch = kept(features)  # all selected, all left unchanged: labels are the inputs
    assert batch["input_ids"].tolist() == [[bos, a, b, a, eos], [bos, b, eos, pad, pad]]
    assert batch["labels"].tolist() == [[-100, a, b, a, -100], [-100, b, -100, -100, -100]]


def test_seeded_output_is_fixed_and_consistent(tokenizer):
    features = random_features(tokenizer, 4, 20, 40, seed=1)
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=123)
    first, second = collator(features), collator(features)
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    original = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.0)(features)["input_ids"]
    selected = first["labels"] != -100
    assert selected.any()
    # Labels hold the original id exactly where selected; unselected inputs are untouched.
    assert torch.equal(first["labels"][selected], original[selected])
    assert torch.equal(first["input_ids"][~selected], original[~selected])
    # Selected inputs are the mask token, the original, or a non-special token.
    changed = first["input_ids"][selected]
    assert all(t == tokenizer.mask_token_id or t not in special_ids(tokenizer) for t in changed.tolist())
    assert (
        DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=124)(features)["labels"].ne(first["labels"]).any()
    )


def test_seed_none_gives_fresh_masks_and_epoch_changes_masks(tokenizer):
    features = random_features(tokenizer, 4, 100, 100)
    unseeded = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5)
    assert not torch.equal(unseeded(features)["labels"], unseeded(features)["labels"])
    seeded = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=0)
    epoch0 = seeded(features)["labels"]
    seeded.set_epoch(1)
    assert seeded.epoch == 1
    assert not torch.equal(seeded(features)["labels"], epoch0)
    seeded.epoch = 0
    assert torch.equal(seeded(features)["labels"], epoch0)


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor", "int32"])
def test_input_types_give_the_same_batch(tokenizer, kind):
    features = random_features(tokenizer, 5, 3, 30, seed=2)
    convert = {
        "list": lambda x: x,
        "numpy": np.array,
        "tensor": torch.tensor,
        "int32": lambda x: np.array(x, dtype=np.int32),
    }[kind]
    converted = [{"input_ids": convert(f["input_ids"])} for f in features]
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.3, seed=7)
    expected, got = collator(features), collator(converted)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_given_special_tokens_mask_and_attention_mask_are_honoured(tokenizer):
    a, b, c = plain_ids(tokenizer)[:3].tolist()
    features = [
        {"input_ids": [a, b, c, a], "special_tokens_mask": [0, 1, 0, 0], "attention_mask": [1, 1, 1, 0]},
        {"input_ids": [b, c, a, b], "special_tokens_mask": [1, 0, 0, 0], "attention_mask": [1, 1, 1, 1]},
    ]
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0)
    batch = collator(features)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[a, -100, c, -100], [-100, c, a, b]]
    assert "special_tokens_mask" not in batch


def test_padding_and_specials_never_selected_even_at_rate_one(tokenizer):
    features = random_features(tokenizer, 16, 1, 40, seed=3)
    for f in features[::2]:  # sprinkle sentinels and mode tokens inside the text
        f["input_ids"][len(f["input_ids"]) // 2] = tokenizer.convert_tokens_to_ids("<extra_id_5>")
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=1.0, pad_to_multiple_of=16, seed=0)
    batch = collator(features)
    assert batch["input_ids"].shape[1] % 16 == 0
    original = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.0, pad_to_multiple_of=16)(features)["input_ids"]
    is_special = torch.tensor([[t in special_ids(tokenizer) for t in row] for row in original.tolist()])
    padding = batch["attention_mask"] == 0
    selected = batch["labels"] != -100
    assert not (selected & (is_special | padding)).any()
    assert torch.equal(selected, ~is_special & ~padding)  # rate 1: every other token
    assert torch.equal(batch["input_ids"][~selected], original[~selected])


def test_collate_then_mask_tokens_equals_call_and_works_on_foreign_batches(tokenizer):
    features = random_features(tokenizer, 6, 5, 25, seed=4)
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.4, seed=3)
    collated = collator.collate(features)
    assert collated["special_tokens_mask"].dtype == torch.bool
    assert collated["special_tokens_mask"][:, 0].all()  # bos
    two_step = collator.mask_tokens(collated)
    one_step = collator(features)
    assert sorted(two_step) == sorted(one_step) == ["attention_mask", "input_ids", "labels"]
    for key in one_step:
        assert torch.equal(one_step[key], two_step[key])
    assert "special_tokens_mask" in collated  # the transform does not mutate its input
    # A batch padded by the tokenizer itself (no special_tokens_mask): the same masks.
    foreign = tokenizer.pad(features, return_tensors="pt")
    from_foreign = collator.mask_tokens(foreign)
    assert torch.equal(from_foreign["labels"], one_step["labels"])
    assert torch.equal(from_foreign["input_ids"], one_step["input_ids"])


# ---------------------------------------------------------------------------------------------------------------
# Statistics over many tokens
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "m", "r"), [(0.15, 0.8, 0.1), (0.3, 0.5, 0.3), (0.5, 0.0, 1.0)])
def test_selection_rate_and_split_within_binomial_bounds(tokenizer, p, m, r):
    features = random_features(tokenizer, 256, 200, 400, seed=5)
    original = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.0)(features)["input_ids"]
    batch = DataCollatorForMaskedLM(tokenizer, mlm_probability=p, mask_replace_prob=m, random_replace_prob=r, seed=1)(
        features
    )
    maskable = (batch["attention_mask"] == 1) & ~torch.isin(original, torch.tensor(sorted(special_ids(tokenizer))))
    selected = batch["labels"] != -100
    n_maskable, n_selected = int(maskable.sum()), int(selected.sum())
    assert_binomial(n_selected, n_maskable, p, "selection")
    inputs = batch["input_ids"][selected]
    masked = int((inputs == tokenizer.mask_token_id).sum())
    unchanged = int((inputs == original[selected]).sum())
    randomised = n_selected - masked - unchanged
    # A random draw equal to the original looks unchanged: expected r / K of the selected, K ~ 400.
    vocab = len(plain_ids(tokenizer))
    assert_binomial(masked, n_selected, m, "mask share")
    assert_binomial(randomised, n_selected, r * (1 - 1 / vocab), "random share")
    assert_binomial(unchanged, n_selected, 1 - m - r + r / vocab, "unchanged share")


def test_random_replacements_are_non_special_and_cover_the_vocabulary(tokenizer):
    features = random_features(tokenizer, 64, 300, 300, seed=6)
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=1.0, mask_replace_prob=0.0, random_replace_prob=1.0)
    batch = collator(features)
    replaced = batch["input_ids"][batch["labels"] != -100]
    assert not set(replaced.tolist()) & special_ids(tokenizer)
    vocab = plain_ids(tokenizer)
    counts = np.bincount(replaced.numpy(), minlength=len(tokenizer))[vocab]
    assert (counts > 0).all()  # ~48 draws per id: every non-special id appears
    expected = len(replaced) / len(vocab)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = len(vocab) - 1
    assert abs(chi2 - dof) < SIGMAS * math.sqrt(2 * dof)


# ---------------------------------------------------------------------------------------------------------------
# Whole-word masking
# ---------------------------------------------------------------------------------------------------------------

TEXTS = [
    "The quick brown fox jumps over the lazy dog, and pretraining language models needs patience.",
    "Masked language modelling hides tokens; causal language modelling predicts the next one.",
    "Span corruption replaces spans of tokens with sentinels and asks the decoder to restore them.",
    "Unbelievably, xylophonists quizzically juxtaposed zephyrs.",
]


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Distinct sentences of words from TEXTS (identical samples share a key and hence a mask, by design)."""
    rng = np.random.default_rng(seed)
    words = " ".join(TEXTS).split()
    return [" ".join(rng.choice(words, int(rng.integers(5, 40)))) for _ in range(count)]


def vocab_words(tokenizer, ids: list[int]) -> list[int]:
    """Word index per token by the byte-level rule, computed token by token (the slow, obvious way)."""
    specials = special_ids(tokenizer)
    words, current, previous_special = [], -1, True
    for i, (token_id, token) in enumerate(zip(ids, tokenizer.convert_ids_to_tokens(ids))):
        special = token_id in specials
        if i == 0 or special or previous_special or token.startswith("\u0120"):
            current += 1
        words.append(current)
        previous_special = special
    return words


def assert_whole_words(ids: list[int], labels: list[int], inputs: list[int], words: list[int], mask_id: int):
    groups: dict[int, list[int]] = {}
    for position, word in enumerate(words):
        groups.setdefault(word, []).append(position)
    for positions in groups.values():
        chosen = {labels[p] != -100 for p in positions}
        assert len(chosen) == 1, f"word at {positions} partly selected"
        if chosen == {True}:
            masked = {inputs[p] == mask_id for p in positions}
            assert len(masked) == 1, f"word at {positions} partly replaced by the mask token"


def test_whole_word_groups_are_masked_together(tokenizer):
    features = text_features(tokenizer, random_texts(32, seed=2))
    for f, extra in zip(features, range(len(features))):
        f["input_ids"] = [tokenizer.bos_token_id, *f["input_ids"][extra % 3 :], tokenizer.eos_token_id]
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.4, whole_word_mask=True, seed=0)
    batch = collator(features)
    multi_token_words = 0
    for f, labels, inputs in zip(features, batch["labels"].tolist(), batch["input_ids"].tolist()):
        ids = f["input_ids"]
        words = vocab_words(tokenizer, ids)
        multi_token_words += len(words) - len(set(words))
        assert_whole_words(ids, labels[: len(ids)], inputs[: len(ids)], words, tokenizer.mask_token_id)
        assert labels[0] == labels[len(ids) - 1] == -100
    assert multi_token_words > 50  # the test exercises words of several tokens


def test_whole_word_mask_from_word_ids_feature(tokenizer):
    features = text_features(tokenizer, random_texts(32, seed=3), with_word_ids=True)
    for f in features:  # frame with special tokens marked None, as a tokenizer's post-processor would
        f["input_ids"] = [tokenizer.bos_token_id, *f["input_ids"], tokenizer.eos_token_id]
        f["word_ids"] = [None, *f["word_ids"], None]
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, whole_word_mask=True, seed=1)
    batch = collator(features)
    for f, labels, inputs in zip(features, batch["labels"].tolist(), batch["input_ids"].tolist()):
        n = len(f["input_ids"])
        words = [w if w is not None else -1 - i for i, w in enumerate(f["word_ids"])]
        assert_whole_words(f["input_ids"], labels[:n], inputs[:n], words, tokenizer.mask_token_id)
        assert labels[0] == labels[n - 1] == -100
    # The pre-tokenizer splits "dog," into two words; the vocabulary rule keeps them together: word_ids were used.
    encoding = tokenizer(TEXTS[0])
    assert len(set(encoding.word_ids())) > len(set(vocab_words(tokenizer, encoding["input_ids"])))


def test_whole_word_rates_and_split_per_word(tokenizer):
    features = text_features(tokenizer, random_texts(300, seed=1))
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.2, whole_word_mask=True, seed=2)
    batch = collator(features)
    starts = word_start_table(tokenizer)
    n_words = n_selected = n_masked = n_random = 0
    for f, labels, inputs in zip(features, batch["labels"].tolist(), batch["input_ids"].tolist()):
        ids = f["input_ids"]
        for position, token in enumerate(ids):
            if position == 0 or starts[token]:  # first token of each word
                n_words += 1
                if labels[position] != -100:
                    n_selected += 1
                    n_masked += inputs[position] == tokenizer.mask_token_id
                    n_random += inputs[position] not in (tokenizer.mask_token_id, token)
    assert_binomial(n_selected, n_words, 0.2, "word selection")
    assert_binomial(n_masked, n_selected, 0.8, "word mask share")  # 80/10/10 kept under whole-word masking
    assert n_random > 0.5 * 0.1 * n_selected


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", mask_token="[MASK]")


def test_word_start_table_for_wordpiece_and_metaspace():
    vocab = {"[PAD]": 0, "[MASK]": 1, "[UNK]": 2, "play": 3, "##ing": 4, "##ed": 5, "run": 6, ".": 7}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece = _wrap(backend)
    assert word_start_table(wordpiece).tolist() == [True, True, True, True, False, False, True, True]

    vocab = {"[PAD]": 0, "[MASK]": 1, "\u2581play": 2, "ing": 3, "\u2581run": 4, "s": 5}
    backend = Tokenizer(models.BPE(vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    metaspace = _wrap(backend)
    assert word_start_table(metaspace).tolist() == [True, True, True, False, True, False]

    collator = DataCollatorForMaskedLM(wordpiece, mlm_probability=1.0, whole_word_mask=True, exact_count=True)
    collator.mlm_probability = 0.5  # 4 words: "play ##ing", "run", "play ##ed", "." → exactly 2 whole words
    labels = collator([{"input_ids": [3, 4, 6, 3, 5, 7]}])["labels"][0].tolist()
    selected = [label != -100 for label in labels]
    assert selected[0] == selected[1] and selected[3] == selected[4]
    assert sum([selected[0], selected[2], selected[3], selected[5]]) == 2


def test_whole_word_mask_unknown_convention_needs_word_ids():
    vocab = {"[PAD]": 0, "[MASK]": 1, "a": 2, "b": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = _wrap(backend)
    collator = DataCollatorForMaskedLM(tok, whole_word_mask=True, seed=0)
    with pytest.raises(ValueError, match="word_ids"):
        collator([{"input_ids": [2, 3]}])
    batch = collator([{"input_ids": [2, 3, 2], "word_ids": [0, 0, 1]}])  # works with word_ids
    assert batch["labels"].shape == (1, 3)


# ---------------------------------------------------------------------------------------------------------------
# Exact counts
# ---------------------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(0, 60), min_size=1, max_size=6),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_exact_count_selects_round_p_n_tokens(tokenizer, lengths, p, seed):
    rng = np.random.default_rng(seed)
    vocab = plain_ids(tokenizer)
    features = [{"input_ids": [tokenizer.bos_token_id, *rng.choice(vocab, n).tolist()]} for n in lengths]
    batch = DataCollatorForMaskedLM(tokenizer, mlm_probability=p, exact_count=True, seed=seed)(features)
    counts = (batch["labels"] != -100).sum(1).tolist()
    assert counts == [round(p * n) for n in lengths]
    assert (batch["labels"][:, 0] == -100).all()


def test_exact_count_whole_words_counts_words(tokenizer):
    features = text_features(tokenizer, random_texts(16, seed=4))
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.3, whole_word_mask=True, exact_count=True, seed=0)
    batch = collator(features)
    for f, labels, inputs in zip(features, batch["labels"].tolist(), batch["input_ids"].tolist()):
        ids = f["input_ids"]
        words = vocab_words(tokenizer, ids)
        chosen_words = {w for w, label in zip(words, labels) if label != -100}
        assert len(chosen_words) == round(0.3 * len(set(words)))
        assert_whole_words(ids, labels[: len(ids)], inputs[: len(ids)], words, tokenizer.mask_token_id)


# ---------------------------------------------------------------------------------------------------------------
# Padding-free (packed) batches
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [{}, {"whole_word_mask": True}, {"exact_count": True}, {"whole_word_mask": True, "exact_count": True}]
)
def test_padding_free_matches_padded_per_document(tokenizer, options):
    features = text_features(tokenizer, random_texts(12, seed=5)) + random_features(tokenizer, 4, 0, 50, seed=8)
    padded = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.4, seed=5, pad_to_multiple_of=64, **options)
    packed = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.4, seed=5, padding_free=True, **options)
    a, b = padded(features), packed(features)
    assert per_document(a, "labels") == per_document(b, "labels")
    assert per_document(a, "input_ids") == per_document(b, "input_ids")
    assert any(label != -100 for doc in per_document(b, "labels") for label in doc)


def test_padding_free_layout(tokenizer):
    a, b, c = plain_ids(tokenizer)[:3].tolist()
    features = [{"input_ids": [a, b, c]}, {"input_ids": [c]}, {"input_ids": [b, a]}]
    batch = DataCollatorForMaskedLM(
        tokenizer, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0, padding_free=True
    )(features)
    assert sorted(batch) == sorted(
        ["input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"]
    )
    mask = tokenizer.mask_token_id
    assert batch["input_ids"].tolist() == [[mask] * 6]
    assert batch["labels"].tolist() == [[a, b, c, c, b, a]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 4, 6]
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and batch["position_ids"].dtype == torch.int64
    assert batch["max_length_q"] == batch["max_length_k"] == 3 and isinstance(batch["max_length_q"], int)


def test_padding_free_drops_pre_padding_by_attention_mask(tokenizer):
    features = random_features(tokenizer, 3, 5, 9, seed=9)
    width = max(len(f["input_ids"]) for f in features)
    prepadded = [
        {
            "input_ids": f["input_ids"] + [tokenizer.eos_token_id] * (width - len(f["input_ids"])),
            "attention_mask": [1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])),
        }
        for f in features
    ]
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=0, padding_free=True)
    a, b = collator(features), collator(prepadded)
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q"):
        assert torch.equal(a[key], b[key]), key
    padded = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=0)(prepadded)  # keys ignore padding
    assert per_document(padded, "labels") == per_document(a, "labels")


# ---------------------------------------------------------------------------------------------------------------
# Reproducibility across batch compositions and DataLoader workers
# ---------------------------------------------------------------------------------------------------------------


def test_same_mask_in_any_batch_composition(tokenizer):
    features = random_features(tokenizer, 12, 10, 80, seed=10)
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.3, seed=11)
    alone = [per_document(collator([f]), "labels")[0] for f in features]
    together = per_document(collator(features), "labels")
    shuffled_order = [7, 3, 11, 0, 5, 1, 9, 2, 10, 4, 8, 6]
    shuffled = per_document(collator([features[i] for i in shuffled_order]), "labels")
    assert together == alone
    assert [shuffled[shuffled_order.index(i)] for i in range(12)] == alone


def _labels_by_sample(loader) -> dict[int, list[int]]:
    out = {}
    for batch in loader:
        for sample_id, labels in zip(batch["sample_id"], per_document(batch, "labels")):
            out[int(sample_id)] = labels
    return out


class _Tagged:
    """Collate with a collator and pass the sample ids through, to match samples across loaders."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator([{"input_ids": f["input_ids"]} for f in features])
        batch["sample_id"] = [f["sample_id"] for f in features]
        return batch


def test_same_masks_with_zero_or_two_workers(tokenizer):
    features = random_features(tokenizer, 24, 5, 60, seed=12)
    for i, f in enumerate(features):
        f["sample_id"] = i
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.3, seed=4)
    serial = _labels_by_sample(DataLoader(features, batch_size=4, collate_fn=_Tagged(collator)))
    parallel = _labels_by_sample(
        DataLoader(features, batch_size=5, shuffle=True, collate_fn=_Tagged(collator), num_workers=2)
    )
    assert serial == parallel
    assert sum(label != -100 for labels in serial.values() for label in labels) > 50


# ---------------------------------------------------------------------------------------------------------------
# Changing the rate during training
# ---------------------------------------------------------------------------------------------------------------


def _selected_count(loader) -> int:
    return sum(int((batch["labels"] != -100).sum()) for batch in loader)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_rate_change_reaches_persistent_workers(tokenizer, context):
    features = random_features(tokenizer, 8, 10, 10, seed=13)
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.0, seed=0)
    loader = DataLoader(
        features,
        batch_size=4,
        collate_fn=collator,
        num_workers=1,
        persistent_workers=True,
        multiprocessing_context=context,
    )
    assert _selected_count(loader) == 0
    collator.mlm_probability = 1.0  # set in the main process, read by the already-running worker
    assert _selected_count(loader) == 8 * 10
    collator.mlm_probability = 0.0
    assert _selected_count(loader) == 0


def test_masking_rate_callback(tokenizer):
    from transformers import TrainerCallback, TrainerControl, TrainerState
    from transformers.trainer_callback import CallbackHandler

    from hf_pretrain.training.callbacks import MaskingRateCallback

    collator = DataCollatorForMaskedLM(tokenizer, seed=0)
    callback = MaskingRateCallback(collator, lambda step: 0.3 if step < 10 else 0.1)
    assert isinstance(callback, TrainerCallback)
    handler = CallbackHandler([callback], model=None, processing_class=None, optimizer=None, lr_scheduler=None)
    state, control = TrainerState(), TrainerControl()
    handler.on_train_begin(None, state, control)
    assert collator.mlm_probability == pytest.approx(0.3)
    state.global_step = 12
    handler.on_step_begin(None, state, control)
    assert collator.mlm_probability == pytest.approx(0.1)
    state.epoch = 2.0
    handler.on_epoch_begin(None, state, control)
    assert collator.epoch == 2
    with pytest.raises(ValueError, match="mlm_probability"):
        MaskingRateCallback(collator, lambda step: 1.5).on_step_begin(None, state, control)


def test_pickle_round_trip_keeps_settings(tokenizer):
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.25, seed=3, epoch=2)
    clone = pickle.loads(pickle.dumps(collator))
    assert clone.mlm_probability == 0.25 and clone.epoch == 2 and clone.seed == 3
    features = random_features(tokenizer, 3, 20, 30)
    assert torch.equal(clone(features)["labels"], collator(features)["labels"])
    assert "mlm_probability=0.25" in repr(collator)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mlm_probability": -0.1}, "mlm_probability"),
        ({"mlm_probability": 1.5}, "mlm_probability"),
        ({"mlm_probability": float("nan")}, "mlm_probability"),
        ({"mlm_probability": "high"}, "mlm_probability"),
        ({"mask_replace_prob": 1.2}, "mask_replace_prob"),
        ({"random_replace_prob": -0.5}, "random_replace_prob"),
        ({"mask_replace_prob": 0.8, "random_replace_prob": 0.3}, "mask_replace_prob \\+ random_replace_prob"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"),
        ({"pad_to_multiple_of": 8, "padding_free": True}, "pad_to_multiple_of"),
        ({"seed": "abc"}, "seed"),
        ({"epoch": -1}, "epoch"),
    ],
)
def test_bad_arguments_raise(tokenizer, kwargs, name):
    with pytest.raises(ValueError, match=name):
        DataCollatorForMaskedLM(tokenizer, **kwargs)


def test_rate_setter_validates(tokenizer):
    collator = DataCollatorForMaskedLM(tokenizer)
    with pytest.raises(ValueError, match="mlm_probability"):
        collator.mlm_probability = 2.0
    assert collator.mlm_probability == pytest.approx(0.15)


def test_tokenizer_without_mask_or_pad_token(tokenizer):
    no_mask = copy.deepcopy(tokenizer)
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="mask_token"):
        DataCollatorForMaskedLM(no_mask)
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="pad_token"):
        DataCollatorForMaskedLM(no_pad)
    DataCollatorForMaskedLM(no_pad, padding_free=True)  # nothing to pad: fine


@pytest.mark.parametrize(
    ("features", "name"),
    [
        ([{"ids": [5, 6]}], "input_ids"),
        ([], "empty"),
        ([{"input_ids": [5, 6], "attention_mask": [1]}], "attention_mask"),
        ([{"input_ids": [5, 6], "special_tokens_mask": [0, 0, 0]}], "special_tokens_mask"),
        ([{"input_ids": [5, 10**6]}], "input_ids"),
        ([{"input_ids": [[5, 6]]}], "1-dimensional"),
    ],
)
def test_bad_features_raise(tokenizer, features, name):
    for padding_free in (False, True):
        with pytest.raises(ValueError, match=name):
            DataCollatorForMaskedLM(tokenizer, padding_free=padding_free)(features)


# ---------------------------------------------------------------------------------------------------------------
# Keys beyond the masking ones: passed through, consumed, or replaced; never dropped silently
# ---------------------------------------------------------------------------------------------------------------


def test_extra_keys_pass_through_padded_and_packed(tokenizer):
    a, b, c = plain_ids(tokenizer)[:3].tolist()
    features = [
        {"input_ids": [a, b, c], "token_type_ids": [0, 1, 1], "next_sentence_label": 1, "labels": [7, 7, 7]},
        {"input_ids": [c], "token_type_ids": [1], "next_sentence_label": 0, "labels": [7]},
    ]
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0)
    batch = collator(features)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "next_sentence_label", "token_type_ids"]
    assert batch["token_type_ids"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert batch["next_sentence_label"].tolist() == [1, 0]
    assert batch["labels"].tolist() == [[a, b, c], [c, -100, -100]]  # given labels replaced by the masking's
    packed = DataCollatorForMaskedLM(
        tokenizer, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0, padding_free=True
    )(features)
    assert packed["token_type_ids"].tolist() == [[0, 1, 1, 1]]
    assert packed["next_sentence_label"].tolist() == [1, 0]  # one per document (D,)
    assert packed["labels"].tolist() == [[a, b, c, c]]


def test_block_index_is_consumed_with_or_without_a_schedule(tokenizer):
    features = [
        {"input_ids": f["input_ids"], "block_index": i} for i, f in enumerate(random_features(tokenizer, 2, 7, 7))
    ]
    collator = DataCollatorForMaskedLM(tokenizer, seed=0)
    assert "block_index" not in collator(features)  # no model input; without a schedule it selects nothing
    assert "block_index" not in collator.collate(features)
    collator.set_masking_schedule(lambda step: 1.0)
    assert collator.collate(features)["block_index"].tolist() == [0, 1]
    batch = collator(features)
    assert "block_index" not in batch and (batch["labels"][:, 1:-1] != -100).all()  # the schedule's rate 1


def test_return_tensors_np_for_every_step(tokenizer):
    features = random_features(tokenizer, 3, 4, 12, seed=20)
    np_collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=1, return_tensors="np")
    pt_collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=1)
    collated = np_collator.collate(features)
    assert isinstance(collated["special_tokens_mask"], np.ndarray) and collated["special_tokens_mask"].dtype == bool
    masked = np_collator.mask_tokens(collated)  # a numpy batch in, numpy out
    expected = pt_collator(features)
    assert sorted(masked) == sorted(expected)
    for key, value in expected.items():
        assert isinstance(masked[key], np.ndarray) and masked[key].dtype == value.numpy().dtype, key
        assert masked[key].tolist() == value.tolist(), key
    assert torch.equal(pt_collator.mask_tokens(collated)["labels"], expected["labels"])  # numpy in, torch out
    packed = DataCollatorForMaskedLM(tokenizer, padding_free=True, seed=1, return_tensors="np")(features)
    assert packed["cu_seq_lens_q"].dtype == np.int32 and isinstance(packed["max_length_k"], int)


# ---------------------------------------------------------------------------------------------------------------
# The masks are fixed: speed-ups must not change a single draw
# ---------------------------------------------------------------------------------------------------------------

# sha256 (first 16 hex digits) of the (input_ids, labels) int64 bytes of `_pinned_features` collated at seed 7,
# recorded with the collator as it was before the sparse split / replacement draws and the integer comparisons
# (`_mlm_draw`); the keyed masks of a sample are part of a run's reproducibility (resume, any worker count).
PINNED_DIGESTS = {
    "default": "c369606bf25a94bd",
    "whole_word": "5ec47304ed9e0984",
    "exact": "dbaff37d69542502",
    "padding_free": "2f5c3d20bfc621d6",
    "rate_0.4_split_50_50": "2109a9b6b622d2d8",
}
PINNED_OPTIONS = {
    "default": {},
    "whole_word": {"whole_word_mask": True},
    "exact": {"exact_count": True},
    "padding_free": {"padding_free": True},
    "rate_0.4_split_50_50": {"mlm_probability": 0.4, "mask_replace_prob": 0.5, "random_replace_prob": 0.5},
}


def _pinned_features(tokenizer) -> list[dict]:
    """12 rows of 1..199 ids drawn over the whole vocabulary (special ones included), cut into 1-5 documents."""
    rng = np.random.default_rng(1234)
    features = []
    for _ in range(12):
        n = int(rng.integers(1, 200))
        ids = rng.integers(0, len(tokenizer), n).tolist()
        cuts = (
            np.sort(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 5))), replace=False))
            if n > 1
            else []
        )
        lengths = np.diff(np.concatenate([[0], cuts, [n]])).astype(int).tolist()
        features.append({"input_ids": ids, "document_lengths": lengths})
    return features


def _digest(batch) -> str:
    digest = hashlib.sha256()
    for key in ("input_ids", "labels"):
        digest.update(np.ascontiguousarray(batch[key].numpy(), dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("attention_on_device", [True, False])
@pytest.mark.parametrize("name", list(PINNED_OPTIONS))
def test_masks_are_pinned(tokenizer, name, attention_on_device):
    collator = DataCollatorForMaskedLM(
        tokenizer, seed=7, **PINNED_OPTIONS[name], attention_on_device=attention_on_device
    )
    assert _digest(collator(_pinned_features(tokenizer))) == PINNED_DIGESTS[name]


def test_per_row_rates_are_pinned(tokenizer):
    collator = DataCollatorForMaskedLM(tokenizer, seed=7, attention_on_device=True)
    batch = collator.mask_tokens(collator.collate(_pinned_features(tokenizer)), mlm_probability=np.linspace(0, 1, 12))
    assert _digest(batch) == "6da91e7ec58017f1"
