"""Technical text under datatrove's filters and word tokenizer: the `technical` preset keeps specifications with
code, markup, lists and math, and still removes junk; per-source settings; warnings for a rule that removes much."""

import numpy as np
import pytest

from hf_pretrain.data.quality import DEFAULT_FILTERS, filter_warnings, source_filter
from hf_pretrain.data.sources import SourceSpec

NOUNS = ["buffer", "request", "header", "stream", "token", "record", "field", "socket", "frame", "index", "cache", "schema"]  # fmt: skip
VERBS = ["parses", "returns", "writes", "validates", "encodes", "stores", "rejects", "reads"]


def specification(rng: np.random.Generator, number: int) -> str:
    """A section of a made-up specification: prose, a code block, an option list, a table, markup and math."""
    noun, other = rng.choice(NOUNS, 2, replace=False)
    verb = rng.choice(VERBS)
    prose = (
        f"The {noun} module {verb} each {other} before it is passed to the caller, and it raises an error when the "
        f"{other} is larger than the limit that was configured. Version {number} of the format adds a checksum to "
        f"the end of every {noun}, so that a reader can detect a truncated file with the same code path."
    )
    code = "\n".join([
        "```python",
        f"def {verb}_{noun}(data: bytes, limit: int = {int(rng.integers(64, 4096))}) -> list[int]:",
        f'    """Split `data` into {other}s of at most `limit` bytes."""',
        "    if len(data) > limit:",
        f"        raise ValueError(f'{noun} too large: {{len(data)}} > {{limit}}')",
        f"    return [b ^ 0x{int(rng.integers(16, 255)):02x} for b in data]",
        "```",
    ])  # fmt: skip
    options = "\n".join(
        f"- `--{n}-{int(rng.integers(1, 99))}`: the {n} to use with the {noun}." for n in rng.choice(NOUNS, 4)
    )
    table = "\n".join([
        "| Field | Type | Default |", "|-------|------|---------|",
        *(f"| {n}_{i} | u{8 * int(rng.integers(1, 5))} | {int(rng.integers(0, 100))} |" for i, n in enumerate(rng.choice(NOUNS, 4)))
    ])  # fmt: skip
    markup = f'<{noun} id="{number}" version="{number}.{int(rng.integers(0, 9))}"><{other}>value</{other}></{noun}>'
    math = (
        f"The size of a {noun} is $n = \\sum_{{i=1}}^{{k}} 2^{{b_i}}$ bytes, with $k \\le {int(rng.integers(2, 9))}$."
    )
    return "\n\n".join(
        [f"## {number}. The {noun} {other}", prose, code, options, table, markup, math, prose[:120] + "."]
    )


LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo. "
)
JUNK = {
    "repeated lines": "\n".join(["Click here to subscribe to the newsletter of our shop today."] * 12),
    "repeated paragraphs": "\n\n".join(
        ["The server reads the file once, and the values in it override the defaults."] * 8
    ),
    "lorem ipsum": "\n\n".join([LOREM * 3] * 3),
    "tiny": "Buy now. Great prices.",
    "tiny code": "```\nx = 1\n```",
    "numbers": " ".join(str(1000 + i) for i in range(300)) + " and the end of the list.",
}


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = np.random.default_rng(0)
    return [specification(rng, number) for number in range(1, 41)]


def kept_share(document_filter, texts) -> float:
    return np.mean([text is not None for text in document_filter(texts)[0]])


def test_the_technical_preset_keeps_specifications_and_still_removes_junk(corpus):
    technical = source_filter(SourceSpec("spec", default_corpus=True, quality="technical"), "NFC", DEFAULT_FILTERS)
    prose = source_filter(SourceSpec("spec", default_corpus=True), "NFC", DEFAULT_FILTERS)
    assert kept_share(technical, corpus) >= 0.95
    assert kept_share(prose, corpus) <= 0.5  # datatrove's thresholds, set on web prose
    texts, reasons = technical(list(JUNK.values()))
    assert texts == [None] * len(JUNK), dict(zip(JUNK, reasons))


def test_per_source_settings_override_the_run_and_the_preset(corpus):
    run = {"gopher_quality": {"min_doc_words": 20, "min_stop_words": 2}}
    spec = SourceSpec(
        "spec", default_corpus=True, quality="technical", filter_settings={"gopher_quality": {"min_doc_words": 500}}
    )
    document_filter = source_filter(spec, "NFKC", ["gopher_quality"], run)
    assert document_filter.names == ("gopher_quality",) and document_filter.normalization == "NFKC"
    settings = document_filter.settings["gopher_quality"]
    assert settings["min_doc_words"] == 500 and settings["min_stop_words"] == 2  # source > preset > run, by key
    assert settings["max_bullet_lines_ratio"] is None  # from the preset
    assert document_filter(corpus[:1])[1] == ["gopher_quality:gopher_short_doc"]
    listed = source_filter(SourceSpec("s", default_corpus=True, quality_filters=["c4"]), "NFC", DEFAULT_FILTERS)
    assert listed.names == ("c4",)
    assert source_filter(SourceSpec("s", default_corpus=True, quality="none"), "NFC", DEFAULT_FILTERS).names == ()
    with pytest.raises(ValueError, match="Source 'bad': filter_settings for 'gopher_quality'"):
        source_filter(SourceSpec("bad", default_corpus=True, filter_settings={"gopher_quality": {"typo": 1}}))


@pytest.mark.parametrize(
    "item, message",
    [
        ({"quality": "code"}, "quality must be one of"),
        ({"quality_filters": ["perplexity"]}, "quality_filters has unknown"),
        ({"filter_settings": {"gopher": {}}}, "filter_settings has unknown"),
        ({"quality": "none", "quality_filters": ["c4"]}, "quality: none runs no filter"),
    ],
)
def test_bad_quality_settings_of_a_source_name_it(item, message):
    with pytest.raises(ValueError, match=f"Source 'docs': {message}"):
        SourceSpec("docs", default_corpus=True, **item)


def test_a_rule_removing_much_of_a_source_is_a_warning():
    dropped = {"gopher_quality:gopher_below_alpha_threshold": 30, "gopher_repetition:dup_line_frac": 5, "empty": 50}
    warnings = filter_warnings("code", 100, dropped)
    assert warnings == [
        "source 'code': gopher_quality:gopher_below_alpha_threshold removed 30 of 100 documents (> 20%); check its "
        "quality preset or filter_settings."
    ]
    assert filter_warnings("code", 100, dropped, max_share=0.04)[1].startswith("source 'code': gopher_repetition")
    assert filter_warnings("empty", 0, {}) == []
