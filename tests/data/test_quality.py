"""Quality filters on hand-made documents: each rule removes what it should, and every drop is counted."""

import json

import pytest
from datasets import Dataset

from hf_pretrain import DataArguments
from hf_pretrain.data.quality import UNDECODABLE, DocumentFilter, document_problem, filter_documents, normalize_text
from hf_pretrain.data.sources import load_documents

GOOD = (
    "The river town grew slowly over two centuries. Farmers brought grain to the market on the square, and the "
    "mill by the bridge ground it for bakers in three villages. In the spring of 1820 a flood carried away the old "
    "wooden bridge, so the council built a stone one with four arches. It still stands today, and visitors cross it "
    "to reach the museum that was once the miller's house. Inside, letters and tools tell the story of the families "
    "who worked there."
)
SHORT = "Buy now. Great prices."
REPEATED_LINES = "\n".join(["Click here to subscribe to the newsletter of our shop today."] * 12)
HASHES = " ".join(f"#tag{i} #more{i} word{i}" for i in range(40))
NUMBERS = " ".join(str(1000 + i) for i in range(80)) + " and the end of the list."
NO_STOP_WORDS = " ".join(f"alpha{i} beta{i} gamma{i} delta{i}" for i in range(20))
BULLETS = "\n".join(f"- item number {i} in a long list without much else" for i in range(30))


def reasons_for(texts, filters=("gopher_quality", "gopher_repetition"), settings=None):
    return DocumentFilter(filters=filters, settings=settings)(texts)[1]


def test_a_natural_paragraph_passes_every_rule():
    assert reasons_for([GOOD], filters=("gopher_quality", "gopher_repetition", "c4")) == [""]


@pytest.mark.parametrize(
    "text, reason",
    [
        (SHORT, "gopher_quality:gopher_short_doc"),
        (HASHES, "gopher_quality:gopher_too_many_hashes"),
        (NUMBERS, "gopher_quality:gopher_below_alpha_threshold"),
        (NO_STOP_WORDS, "gopher_quality:gopher_enough_stop_words"),
        (BULLETS, "gopher_quality:gopher_too_many_bullets"),
    ],
)
def test_gopher_quality_rules(text, reason):
    assert reasons_for([text], filters=("gopher_quality",)) == [reason]


def test_gopher_repetition_rules():
    assert reasons_for([REPEATED_LINES], filters=("gopher_repetition",)) == ["gopher_repetition:dup_line_frac"]
    looping = GOOD + " " + " ".join(["the same phrase again and again"] * 12)
    assert reasons_for([looping], filters=("gopher_repetition",))[0].startswith("gopher_repetition:")


def test_c4_rules_drop_documents_and_lines():
    keep = DocumentFilter(filters=("c4",))
    texts, reasons = keep([GOOD + "\nlorem ipsum dolor sit amet.", GOOD.replace("stone", "{stone}"), GOOD])
    assert reasons == ["c4:lorem_ipsum", "c4:curly_bracket", ""]
    texts, reasons = keep([GOOD + "\nPlease enable javascript to view this page.\nMenu"])
    assert reasons == [""] and "javascript" not in texts[0] and "Menu" not in texts[0]  # lines removed, doc kept


def test_thresholds_are_settings_of_each_filter():
    assert reasons_for([SHORT], ("gopher_quality",), {"gopher_quality": {"min_doc_words": 2}}) != [
        "gopher_quality:gopher_short_doc"
    ]
    with pytest.raises(ValueError, match="filter_settings for 'gopher_quality'"):
        DocumentFilter(filters=("gopher_quality",), settings={"gopher_quality": {"min_words": 2}})
    with pytest.raises(ValueError, match="Unknown quality filter"):
        DocumentFilter(filters=("perplexity",))


def test_unusable_documents_are_named():
    assert [document_problem(t) for t in [None, "", " \n\t", f"bad {UNDECODABLE}", 3, "ok", "valid \ufffd"]] == [
        "missing", "empty", "whitespace", "invalid_utf8", "not_text", None, None,
    ]  # fmt: skip
    assert normalize_text("  e\u0301te\r\nline  ") == "\u00e9te\nline"  # NFC composes, CRLF becomes LF, stripped


def test_filter_documents_counts_every_drop_in_parallel_workers():
    texts = [
        GOOD,
        SHORT,
        "",
        None,
        f"bad {UNDECODABLE} byte",
        REPEATED_LINES,
        GOOD.replace("river", "harbour"),
        HASHES,
    ] * 3
    documents = Dataset.from_dict({"body": texts, "id": list(range(len(texts)))})
    kept, dropped = filter_documents(documents, DocumentFilter(), "body", num_proc=2)
    assert kept.column_names == ["text"] and len(kept) == 6  # GOOD and its twin: dedup is a later step
    assert dropped == {
        "empty": 3,
        "gopher_quality:gopher_short_doc": 3,
        "gopher_quality:gopher_too_many_hashes": 3,
        "gopher_repetition:dup_line_frac": 3,
        "invalid_utf8": 3,
        "missing": 3,
    }
    assert len(kept) + sum(dropped.values()) == len(texts)  # nothing lost without a count


def test_non_utf8_documents_in_files_are_skipped_not_fatal(tmp_path):
    text_file = tmp_path / "corpus.txt"
    text_file.write_bytes(b"first paragraph\n\nbroken \xff\xfe bytes\n\nlast paragraph\n")
    train, _ = load_documents(DataArguments(data_files=[str(text_file)], validation_fraction=0.0))
    assert [t.strip() for t in train["text"]] == ["first paragraph", "last paragraph"]
    lines = tmp_path / "corpus.jsonl"
    lines.write_bytes(json.dumps({"text": "good"}).encode() + b'\n{"text": "bad \xff"}\n' + b'{"text": "fine"}\n')
    train, _ = load_documents(DataArguments(data_files=[str(lines)], validation_fraction=0.0))
    assert train["text"] == ["good", "fine"]
