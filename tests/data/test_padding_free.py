"""Padding-free rows of whole documents (`packing: false`) and `document_lengths` on every data path under
`document_attention: isolated`: training and held-out rows alike, and `held_out_blocks` rebuilding the run's."""

import contextlib
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_pretrain import DataArguments
from hf_pretrain.data import packing
from hf_pretrain.data.build import build_data, held_out_blocks
from hf_pretrain.data.mixing import mix_rows, tokens_per_source
from hf_pretrain.data.packing import pack, pack_blocks, pack_documents, tokenize_documents
from hf_pretrain.data.sources import load_documents

WORDS = ["the", "a", "of", "and", "to", "river", "stone", "light", "quiet", "north", "wind", "carries", "seeds", "over", "old", "walls", "fields"]  # fmt: skip


def _documents(lengths):
    """Documents of distinct non-zero tokens, each ending with an EOS (0), as `tokenize_documents` frames them."""
    documents, start = [], 1
    for length in lengths:
        documents.append([*range(start, start + length - 1), 0])
        start += length - 1
    return documents


def test_three_documents_in_rows_of_eight_checked_by_hand(caplog):
    # Lengths 3, 1, 9 with block_size 4: pieces 3 | 1 | 4 4 1. Greedily in rows of 8: [3 1 4] (8), then [4 1] (5).
    documents = _documents([3, 1, 9])
    with caplog.at_level(logging.INFO, logger="hf_pretrain.data.packing"):
        rows = pack_documents(Dataset.from_dict({"input_ids": documents}), block_size=4, max_tokens=8)
    assert list(rows["input_ids"]) == [[1, 2, 0, 0, 3, 4, 5, 6], [7, 8, 9, 10, 0]]
    assert list(rows["document_lengths"]) == [[3, 1, 4], [4, 1]]
    assert "3 documents in 5 pieces of at most 4 tokens, 2 rows of at most 8 tokens, 13 tokens (fill 0.812" in (
        caplog.text
    )  # 13 / (2 * 8)
    # A row as long as one block holds one piece at a time; the 1-token document still fills a row of its own.
    narrow = pack_documents(Dataset.from_dict({"input_ids": documents}), block_size=4, max_tokens=4)
    assert list(narrow["document_lengths"]) == [[3, 1], [4], [4], [1]]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=25),
    block_size=st.integers(1, 12),
    extra=st.integers(0, 30),
)
def test_rows_give_back_the_documents_in_order_within_both_limits(lengths, block_size, extra):
    max_tokens = block_size + extra
    documents = _documents(lengths)
    rows = pack_documents(Dataset.from_dict({"input_ids": documents}), block_size, max_tokens)
    ids, pieces = list(rows["input_ids"]), list(rows["document_lengths"])
    assert [t for row in ids for t in row] == [t for doc in documents for t in doc]  # nothing dropped, in order
    assert all(0 < len(row) <= max_tokens for row in ids)
    assert all(sum(p) == len(row) for p, row in zip(pieces, ids))
    flat_pieces = [p for row in pieces for p in row]
    assert all(0 < p <= block_size for p in flat_pieces)
    # Pieces are cut only at block_size inside a document: each document is full pieces, then its remainder.
    expected = [
        p for n in lengths for p in [block_size] * ((n - 1) // block_size) + [n - (n - 1) // block_size * block_size]
    ]
    assert flat_pieces == expected
    # Greedy: a row ends only when the next piece would not fit in it.
    assert all(len(row) + nxt[0] > max_tokens for row, nxt in zip(ids, pieces[1:]))


def test_long_token_columns_are_split_into_arrow_chunks(monkeypatch):
    documents = Dataset.from_dict({"input_ids": _documents([3, 1, 9, 7, 2, 5])})
    whole = pack_documents(documents, block_size=4, max_tokens=8)
    monkeypatch.setattr(packing, "MAX_LIST_VALUES", 9)  # int32 offsets stand in for the 2**31 - 1 limit
    chunked = pack_documents(documents, block_size=4, max_tokens=8)
    assert chunked.data.column("input_ids").num_chunks > 1
    assert chunked.to_dict() == whole.to_dict()


def test_padding_free_rows_refuse_what_they_cannot_build():
    documents = Dataset.from_dict({"input_ids": _documents([3, 4])})
    with pytest.raises(ValueError, match="max_tokens_per_batch=3 is below block_size=4"):
        pack_documents(documents, block_size=4, max_tokens=3)
    with pytest.raises(ValueError, match="map-style documents"):
        pack_documents(documents.to_iterable_dataset(), block_size=4, max_tokens=8)


def test_streamed_blocks_carry_the_same_document_lengths(tokenizer, tiny_corpus):
    docs = Dataset.from_dict({"text": tiny_corpus})
    expected = pack_blocks(tokenize_documents(docs, tokenizer), 16, document_lengths=True).to_dict()
    streamed = pack(tokenize_documents(docs.to_iterable_dataset(num_shards=3), tokenizer), 16, document_lengths=True)
    rows = list(streamed)
    assert [r["input_ids"] for r in rows] == expected["input_ids"]
    assert [r["document_lengths"] for r in rows] == expected["document_lengths"]


def test_rows_of_unequal_length_are_mixed_by_tokens_not_by_count():
    rng = np.random.default_rng(0)
    long_rows = Dataset.from_dict({"input_ids": [[1] * int(n) for n in rng.integers(20, 41, 60)]})
    short_rows = Dataset.from_dict({"input_ids": [[2] * int(n) for n in rng.integers(1, 6, 600)]})
    mixed, info = mix_rows([long_rows, short_rows], [0.5, 0.5], ["long", "short"], seed=1)
    lengths = np.array([len(r) for r in mixed["input_ids"]])
    source = np.asarray(mixed["source_id"])
    assert all(len(set(r)) == 1 and r[0] == s + 1 for r, s in zip(mixed["input_ids"], source))
    running = np.stack([np.cumsum(lengths * (source == j)) for j in (0, 1)], axis=1)  # (n, 2) tokens so far
    # Within 1.5 rows of an even split at every prefix; by count the long source would have ~8x the tokens.
    assert (np.abs(running - running.sum(1, keepdims=True) / 2) <= 1.5 * 40).all()
    assert info["long"]["rows_used"] == 60 or info["short"]["rows_used"] == 600  # stops at the first source's end
    for j, name in enumerate(["long", "short"]):
        assert info[name]["tokens_used"] == running[-1, j]
    assert tokens_per_source(mixed, 37, 2).tolist() == running[36].tolist()
    assert tokens_per_source(mixed, len(mixed) + 5, 2).tolist() == (running[-1] + running[4]).tolist()  # 2nd pass


def _write_text(path, count, seed) -> str:
    """`count` paragraphs of random words (one document each with text_sample_by: paragraph)."""
    rng = np.random.default_rng(seed)
    path.write_text("\n\n".join(" ".join(rng.choice(WORDS, rng.integers(3, 60))) for _ in range(count)))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("padding_free")
    tokenizer.save_pretrained(folder / "tokenizer")
    return SimpleNamespace(
        tokenizer=str(folder / "tokenizer"),
        output_dir=str(folder / "run"),
        train=_write_text(folder / "train.txt", 60, 1),
        other=_write_text(folder / "other.txt", 40, 2),
        held=_write_text(folder / "held.txt", 12, 3),
    )


def _build(corpus, **data):
    data_args = DataArguments(block_size=16, **data)
    model_args = SimpleNamespace(tokenizer_name_or_path=corpus.tokenizer, model_name_or_path=None)
    training_args = SimpleNamespace(
        seed=0, output_dir=corpus.output_dir, process_index=0, main_process_first=lambda desc: contextlib.nullcontext()
    )
    return data_args, build_data(model_args, data_args, training_args)


LAYOUTS = {"packed": {}, "padding-free": {"packing": False, "max_tokens_per_batch": 48}}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("path", ["classic", "mixed", "validation_files"])
def test_every_path_carries_document_lengths_under_isolated_attention(corpus, path, layout):
    sources = [
        {"name": "web", "data_files": [corpus.train], "weight": 3},
        {"name": "books", "data_files": [corpus.other]},
    ]
    data = {
        "classic": {"data_files": [corpus.train], "validation_fraction": 0.2},
        "mixed": {"data_sources": json.dumps(sources), "validation_fraction": 0.2},
        "validation_files": {"data_sources": json.dumps(sources), "validation_files": [corpus.held]},
    }[path]
    data_args, built = _build(corpus, **data, **LAYOUTS[layout])
    limit = 48 if layout == "padding-free" else 16
    for rows in (built.train, built.evaluation):
        assert "document_lengths" in rows.column_names and len(rows) > 0
        for ids, pieces in zip(rows["input_ids"], rows["document_lengths"]):
            assert sum(pieces) == len(ids) and max(pieces) <= 16
            assert len(ids) == 16 if layout == "packed" else len(ids) <= limit
    assert held_out_blocks(data_args, built.tokenizer, seed=0).to_dict() == built.evaluation.to_dict()


def test_classic_padding_free_rows_are_the_training_documents_whole(corpus):
    data_args, built = _build(corpus, data_files=[corpus.train], validation_fraction=0.2, packing=False,
                              max_tokens_per_batch=48)  # fmt: skip
    train_docs, _ = load_documents(data_args, seed=0)  # the training documents, split as the run split them
    stream = [t for ids in tokenize_documents(train_docs, built.tokenizer)["input_ids"] for t in ids]
    assert [t for ids in built.train["input_ids"] for t in ids] == stream  # no token dropped, none reordered
    assert any(len(ids) < 48 for ids in built.train["input_ids"]) and max(map(len, built.train["input_ids"])) <= 48


def test_shared_attention_keeps_todays_columns(corpus):
    _, classic = _build(corpus, data_files=[corpus.train], validation_fraction=0.2, document_attention="shared")
    assert classic.train.column_names == classic.evaluation.column_names == ["input_ids"]
    sources = [{"name": "web", "data_files": [corpus.train]}, {"name": "books", "data_files": [corpus.other]}]
    _, mixed = _build(corpus, data_sources=json.dumps(sources), document_attention="shared")
    assert "document_lengths" in mixed.train.column_names  # per-source blocks always carried them
