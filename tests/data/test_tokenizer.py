import pytest
from transformers import AutoTokenizer

from hf_pretrain.data.tokenizer import UL2_MODE_TOKENS, check_special_tokens, sentinel_token, train_tokenizer
from hf_pretrain.objectives import get_objective


def test_trained_tokenizer_has_every_special_token(tokenizer):
    for name in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token"):
        assert getattr(tokenizer, name) is not None, name
    ids = tokenizer.convert_tokens_to_ids([sentinel_token(i) for i in range(100)] + list(UL2_MODE_TOKENS))
    assert len(set(ids)) == 103 and tokenizer.unk_token_id not in ids
    assert len(tokenizer) <= 512  # an upper bound: the tiny corpus runs out of merges first


def test_vocabulary_size_is_reached_on_a_real_corpus():
    from hf_pretrain.data.sources import default_corpus

    assert len(train_tokenizer(default_corpus()["text"], vocab_size=2048)) == 2048


def test_round_trip_through_save_and_load(tokenizer, tmp_path, tiny_corpus):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = tiny_corpus[1]
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text  # byte-level BPE is lossless
    assert loaded.mask_token_id == tokenizer.mask_token_id
    assert loaded.convert_tokens_to_ids(sentinel_token(7)) == tokenizer.convert_tokens_to_ids(sentinel_token(7))


def test_special_tokens_are_single_tokens_in_text(tokenizer):
    ids = tokenizer("a <mask> b <extra_id_3>", add_special_tokens=False)["input_ids"]
    assert tokenizer.mask_token_id in ids and tokenizer.convert_tokens_to_ids("<extra_id_3>") in ids


def test_vocabulary_too_small_is_an_error():
    with pytest.raises(ValueError, match="vocab_size=300 is too small"):
        train_tokenizer(["some text"], vocab_size=300)


def test_missing_tokens_are_named_per_objective(tokenizer):
    check_special_tokens(tokenizer, get_objective("ul2"))
    without_mask = train_tokenizer(["x y z"] * 4, vocab_size=400, num_sentinels=0, mode_tokens=())
    without_mask.mask_token = None
    with pytest.raises(ValueError, match="lacks mask_token, which objective 'mlm'"):
        check_special_tokens(without_mask, get_objective("mlm"))
    with pytest.raises(ValueError, match="sentinel tokens"):
        check_special_tokens(without_mask, get_objective("span_corruption"))
    check_special_tokens(without_mask, get_objective("clm"))  # eos and pad are all causal LM needs
    with pytest.raises(ValueError, match="objective must be one of"):
        get_objective("nope")


def test_mask_token_strips_the_space_before_it_and_survives_save_and_load(tmp_path):
    tok = train_tokenizer(["The first statement", "the second statement"] * 4, vocab_size=400, num_sentinels=2)
    text = "The <mask> statement"
    expected = ["The", "<mask>", "\u0120statement"]  # not The, Ġ, <mask>, Ġstatement
    assert tok.convert_ids_to_tokens(tok(text)["input_ids"]) == expected
    # tokenize() spells an added token by the text it matched: tokenizers 0.23 includes the stripped space.
    assert [token.strip() for token in tok.tokenize(text)] == expected
    assert tok.added_tokens_decoder[tok.mask_token_id].lstrip
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.added_tokens_decoder[loaded.mask_token_id].lstrip
    assert loaded.convert_ids_to_tokens(loaded(text)["input_ids"]) == expected
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    # Only the mask strips: other special tokens keep the space before them as a token.
    sentinel = loaded.convert_ids_to_tokens(loaded("The <extra_id_0>")["input_ids"])
    assert sentinel == ["The", "\u0120", "<extra_id_0>"]
