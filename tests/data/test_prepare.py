"""The preparation pipeline end to end on a small planted corpus: counts per step and per source, blocks on disk."""

import json

import numpy as np
import pytest

from hf_pretrain.data.mixing import MixingSchedule
from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus
from hf_pretrain.data.shards import load_prepared

NOUNS = ["river", "stone", "garden", "window", "letter", "market", "bridge", "valley", "harbour", "lantern", "meadow", "forest", "castle", "tower"]  # fmt: skip


def sentence(rng) -> str:
    a, b, c, d = rng.choice(NOUNS, 4)
    return f"The {a} of the {b} and the {c} went to the {d} with {rng.choice(NOUNS)}."


def document(rng, sentences=12) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    web = [document(rng) for _ in range(30)]
    web += [web[0].replace(" ", "   ").replace(".", ";"), web[1].replace(".", " !")]  # 2 exact (normalised)
    words = web[2].split()
    words[30] = "changed"
    web += [" ".join(words)]  # 1 near duplicate
    web += ["", "   ", "Too short."]  # empty, whitespace, filtered by length
    books = [document(rng) for _ in range(12)] + [web[3]]  # a cross-source duplicate: the earlier source keeps it
    web_file = tmp_path / "web.jsonl"
    web_file.write_bytes(
        b"\n".join(json.dumps({"content": t}).encode() for t in web) + b'\n{"content": "bad \xff bytes here"}\n'
    )
    books_file = tmp_path / "books.txt"
    books_file.write_text("\n\n".join(books))
    return str(web_file), str(books_file)


def arguments(tmp_path, corpus, **overrides):
    web, books = corpus
    settings = {
        "sources": [
            {"name": "web", "data_files": [web], "text_column": "content", "weight": 0.75},
            {"name": "books", "data_files": [books], "weight": 0.25},
        ],
        "output_dir": str(tmp_path / "prepared"),
        "block_size": 64,
        "quality_filters": ["gopher_quality"],
        "filter_settings": {"gopher_quality": {"min_doc_words": 5}},
        "near_dedup_threshold": 0.7,
        "validation_fraction": 0.1,
        **overrides,
    }
    return PrepareArguments(**settings)


def test_every_document_is_accounted_for_per_step_and_source(tmp_path, corpus, tokenizer):
    stats = prepare_corpus(arguments(tmp_path, corpus), tokenizer=tokenizer)
    web, books = stats["sources"]["web"], stats["sources"]["books"]
    assert web["documents"]["read"] == 37
    assert web["dropped"] == {
        "empty": 1,
        "whitespace": 1,
        "invalid_utf8": 1,
        "gopher_quality:gopher_short_doc": 1,
        "exact_duplicate": 2,
        "near_duplicate": 1,
    }
    assert web["documents"]["after_filters"] == 33 and web["documents"]["after_near_dedup"] == 30
    assert books["documents"]["read"] == 13 and books["dropped"]["exact_duplicate"] == 1
    assert web["documents"]["train"] + web["documents"]["validation"] == 30 and books["documents"]["train"] == 10
    assert stats["duplicates"]["exact_duplicate"] == {"removed": 3, "clusters": 3, "cluster_sizes": {2: 3}}
    assert stats["duplicates"]["near_duplicate"]["removed"] == 1
    totals = stats["totals"]
    assert totals["documents_in"] == 50 and totals["documents_out"] == 42
    assert totals["padding_baseline_efficiency"] < totals["packing_efficiency"] and totals["packing_efficiency"] > 0.97

    splits, stored = load_prepared(str(tmp_path / "prepared"))
    assert stored == json.loads(json.dumps(stats, default=str))
    train = splits["train"]
    assert train.column_names == ["input_ids", "document_lengths", "source_id"]
    assert np.array_equal(np.asarray(train["source_id"]), MixingSchedule([0.75, 0.25]).sources(0, len(train)))
    assert all(sum(lengths) == 64 for lengths in train["document_lengths"])
    assert web["blocks"]["passes"] == 1 and books["blocks"]["passes"] == 1
    assert abs(web["mixture_fraction"]["actual"] - 0.75) <= 1 / len(train)
    assert (tmp_path / "prepared" / "tokenizer" / "tokenizer.json").is_file()


def test_an_existing_output_is_not_overwritten_silently(tmp_path, corpus, tokenizer):
    prepare_corpus(arguments(tmp_path, corpus, near_dedup=False), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="already holds a prepared dataset"):
        arguments(tmp_path, corpus)
    assert arguments(tmp_path, corpus, overwrite_output_dir=True).overwrite_output_dir


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sources": []}, "give at least one source"),
        ({"sources": [{"name": "x", "default_corpus": True, "weight": 0}]}, "weight of 'x' must be a positive"),
        ({"sources": [{"name": "x", "data_files": ["/nope.txt"]}]}, "no such file '/nope.txt'"),
        ({"sources": [{"name": "x"}]}, "exactly one of data_files, dataset_name or default_corpus"),
        ({"sources": [{"name": "x", "default_corpus": True, "wieght": 2}]}, r"unknown key\(s\) \['wieght'\]"),
        ({"quality_filters": ["spam"]}, "Unknown quality filter"),
        ({"near_dedup_threshold": 0}, "near_dedup_threshold must be in"),
    ],
)
def test_bad_arguments_are_named(tmp_path, corpus, overrides, message):
    with pytest.raises(ValueError, match=message):
        arguments(tmp_path, corpus, **overrides)


def test_a_missing_text_column_names_the_source(tmp_path, corpus, tokenizer):
    args = arguments(tmp_path, corpus)
    args.source_specs[0].text_column = "body"
    with pytest.raises(ValueError, match="text_column='body' is not a column of source 'web'"):
        prepare_corpus(args, tokenizer=tokenizer)
