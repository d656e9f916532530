"""Document normalisation and quality filters: the Gopher and C4 heuristic rules, each drop counted by reason.

The rules are datatrove's, used as they are (`GopherQualityFilter`: length, mean word length, symbol/word ratios,
bullets and ellipses, alphabetic words, stop words; `GopherRepetitionFilter`: duplicated lines and paragraphs, top
n-gram and duplicated n-gram character fractions; `C4QualityFilter`: terminal punctuation, words per line,
sentences, "lorem ipsum", curly brackets, javascript and policy lines), with datatrove's own word tokenizer for
their default language (English: spaCy's blank tokenizer, which needs the `spacy` package and no model download).
Their thresholds were set on web prose: code, markup and math lose most of their documents to them, so each source
picks a `quality` preset (`QUALITY_PRESETS`: `prose`, `technical`, `none`) and may override the run's filters and
settings (`source_filter`); `filter_warnings` flags a rule that removes more than `FILTER_WARNING_SHARE` of a source.

Before any rule, a document that is missing, empty, whitespace-only or was not valid UTF-8 when read (the readers
mark undecodable bytes with `UNDECODABLE`, see `sources.py`) is dropped and counted under its own reason: nothing
disappears without a count. A U+FFFD that is part of valid text is text like any other.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Value

NORMALIZATIONS = ("NFC", "NFKC", "none")
FILTERS = {
    "gopher_quality": "GopherQualityFilter",
    "gopher_repetition": "GopherRepetitionFilter",
    "c4": "C4QualityFilter",
}
DEFAULT_FILTERS = ("gopher_quality", "gopher_repetition")  # length first: the n-gram rules misjudge tiny texts
# What the readers put where bytes could not be decoded: a Unicode noncharacter (reserved for a program's internal
# use, never interchanged) before U+FFFD, so valid text, U+FFFD included, is never mistaken for it.
UNDECODABLE = "\ufdd0\ufffd"
REASON_COLUMN = "_drop_reason"
KEPT = ""
FILTER_WARNING_SHARE = 0.2  # a rule removing more than this share of a source's documents is flagged in stats.json

# Per-source presets: settings laid over the run's `filter_settings` (None: no quality filter at all). `technical`
# is for code, markup and math (specifications, documentation, papers): it keeps the rules that catch junk (too
# short, too long, no stop words, lorem ipsum, duplicated lines and paragraphs, long repeated passages) and relaxes
# the ones that read normal technical writing as junk.
TECHNICAL_SETTINGS = {
    "gopher_quality": {
        "max_avg_word_length": 15,  # identifiers, URLs and paths are long words
        "max_symbol_word_ratio": 0.5,  # '#' starts markdown headings and preprocessor lines
        "max_bullet_lines_ratio": None,  # lists and option tables are most of a reference page
        "max_ellipsis_lines_ratio": None,  # '...' is Python's prompt and an elided argument list
        "max_non_alpha_words_ratio": 0.3,  # datatrove's words include every bracket, operator and number
    },
    "gopher_repetition": {
        "dup_line_frac": 0.5,  # fences, closing braces, imports and table rules repeat in any code or markup
        "dup_para_frac": 0.5,
        "dup_line_char_frac": 0.4,
        "dup_para_char_frac": 0.3,
        "top_n_grams": ((2, 0.3), (3, 0.3), (4, 0.3)),  # `) ;`, `= =`, `| --- |`
        "dup_n_grams": ((5, 0.4), (6, 0.4), (7, 0.4), (8, 0.4), (9, 0.4), (10, 0.4)),  # signatures, examples
    },
    "c4": {  # the line rules would delete every code line; lorem ipsum and policy lines still go
        "filter_no_terminal_punct": False,
        "min_words_per_line": -1,
        "min_num_sentences": -1,
        "filter_curly_bracket": False,
        "filter_javascript": False,
    },
}
QUALITY_PRESETS: dict[str, dict | None] = {"prose": {}, "technical": TECHNICAL_SETTINGS, "none": None}


def document_problem(text) -> str | None:
    """Why a raw document cannot be used at all ('missing', 'empty', 'whitespace', 'invalid_utf8'), or None."""
    if text is None:
        return "missing"
    if not isinstance(text, str):
        return "not_text"
    if not text:
        return "empty"
    if text.isspace():
        return "whitespace"
    if UNDECODABLE in text:
        return "invalid_utf8"
    return None


def normalize_text(text: str, form: str = "NFC") -> str:
    """Unicode normal form, Unix newlines, no leading or trailing whitespace."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _check_word_tokenizer() -> None:
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    try:
        load_word_tokenizer("eng").word_tokenize("probe")  # the language every filter defaults to
    except ImportError as error:
        raise ValueError(
            f"quality_filters need datatrove's English word tokenizer: pip install spacy ({error})."
        ) from None


def build_filter(name: str, settings: Mapping | None = None):
    """One datatrove filter by our name, with its settings (the filter's own keyword arguments, `language`
    included: datatrove picks that language's word tokenizer)."""
    if name not in FILTERS:
        raise ValueError(f"Unknown quality filter {name!r}; choose from {sorted(FILTERS)}.")
    from datatrove.pipeline import filters

    try:
        return getattr(filters, FILTERS[name])(**dict(settings or {}))
    except TypeError as error:
        raise ValueError(f"filter_settings for {name!r}: {error}") from None


def merge_settings(*layers: Mapping[str, Mapping] | None) -> dict[str, dict]:
    """Per-filter settings, each later layer overriding the earlier ones key by key."""
    merged: dict[str, dict] = {}
    for layer in layers:
        for name, values in (layer or {}).items():
            merged[name] = {**merged.get(name, {}), **dict(values)}
    return merged


def source_filter(
    spec, normalization: str = "NFC", filters: Sequence[str] = DEFAULT_FILTERS, settings: Mapping | None = None
) -> DocumentFilter:
    """The filter of one source (a `SourceSpec`): the run's `filters` and `settings`, then the source's `quality`
    preset over the settings, then its own `quality_filters` and `filter_settings` over both."""
    preset = QUALITY_PRESETS[spec.quality]
    if preset is None:
        return DocumentFilter(normalization, filters=())
    names = filters if spec.quality_filters is None else spec.quality_filters
    try:
        return DocumentFilter(normalization, names, merge_settings(settings, preset, spec.filter_settings))
    except ValueError as error:
        raise ValueError(f"Source {spec.name!r}: {error}") from None


def filter_warnings(
    source: str, documents_read: int, dropped: Mapping[str, int], max_share: float = FILTER_WARNING_SHARE
) -> list[str]:
    """One line for stats.json per quality rule that removed more than `max_share` of a source's documents (the
    validity reasons, e.g. 'empty', are not rules and are not flagged)."""
    return [
        f"source {source!r}: {reason} removed {count} of {documents_read} documents (> {max_share:.0%}); check "
        "its quality preset or filter_settings."
        for reason, count in sorted(dropped.items())
        if ":" in reason and documents_read and count > max_share * documents_read
    ]


class DocumentFilter:
    """Normalise a batch of documents and apply the quality filters; say why each dropped one was dropped.

    Picklable (datasets.map with num_proc, datatrove tasks): the datatrove objects are built lazily per process.

    >>> keep = DocumentFilter(filters=())
    >>> keep(["  fine text \\r\\n", "", None, "kept \\ufffd", "bad \\ufdd0\\ufffd byte"])
    (['fine text', None, None, 'kept \\ufffd', None], ['', 'empty', 'missing', '', 'invalid_utf8'])
    """

    def __init__(
        self,
        normalization: str = "NFC",
        filters: Sequence[str] = DEFAULT_FILTERS,
        settings: Mapping[str, Mapping] | None = None,
    ):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        unknown = sorted(set(filters) - set(FILTERS)) + sorted(set(settings or {}) - set(FILTERS))
        if unknown:
            raise ValueError(f"Unknown quality filter(s) {unknown}; choose from {sorted(FILTERS)}.")
        self.normalization = normalization
        self.names = tuple(filters)
        self.settings = {name: dict(value) for name, value in (settings or {}).items()}
        self._filters = None
        if self.names:
            _check_word_tokenizer()
            self._build()  # fail now on bad settings, not in a worker process

    def _build(self):
        self._filters = [(name, build_filter(name, self.settings.get(name))) for name in self.names]

    def __getstate__(self):
        return {**self.__dict__, "_filters": None}

    def __call__(self, texts: Sequence) -> tuple[list[str | None], list[str]]:
        """(kept text or None, reason: '' when kept) for each document."""
        from datatrove.data import Document

        if self.names and self._filters is None:
            self._build()
        out, reasons = [], []
        for index, text in enumerate(texts):
            problem = document_problem(text)
            if problem is None:
                text = normalize_text(text, self.normalization)
                problem = None if text else "empty"
            for name, rule in self._filters or ():
                if problem is not None:
                    break
                document = Document(text=text, id=str(index))
                verdict = rule.filter(document)
                kept, why = verdict if isinstance(verdict, tuple) else (verdict, None)
                if not kept:
                    problem = f"{name}:{why or 'rejected'}"
                text = document.text  # C4 removes lines it rejects
                if not text:
                    problem = problem or f"{name}:empty_after_filter"
            out.append(None if problem else text)
            reasons.append(problem or KEPT)
        return out, reasons


def count_reasons(reasons: pa.ChunkedArray | Sequence[str]) -> dict[str, int]:
    """{reason: documents dropped for it}, without the kept ones."""
    if isinstance(reasons, (pa.Array, pa.ChunkedArray)):
        counts = pc.value_counts(reasons).to_pylist()
        found = {entry["values"]: entry["counts"] for entry in counts}
    else:
        found = Counter(reasons)
    return {reason: int(count) for reason, count in sorted(found.items()) if reason != KEPT}


def filter_documents(
    documents: Dataset,
    document_filter: DocumentFilter,
    text_column: str = "text",
    num_proc: int | None = None,
    keep_columns: bool = False,
) -> tuple[Dataset, dict[str, int]]:
    """Normalised, filtered documents and the count of drops per reason: only a 'text' column, or with
    `keep_columns` every column, the text column replaced by the kept text."""
    if text_column not in documents.column_names:
        raise ValueError(
            f"text_column={text_column!r} is not a column of the documents; they have {documents.column_names}."
        )
    out_column = text_column if keep_columns else "text"
    # Typed up front: a batch whose every document is dropped must not be written as a column of nulls.
    features = Features({**(documents.features if keep_columns else {}), out_column: Value("string")})
    features[REASON_COLUMN] = Value("string")

    def apply(batch):
        texts, reasons = document_filter(batch[text_column])
        return {out_column: texts, REASON_COLUMN: reasons}

    marked = documents.map(
        apply,
        batched=True,
        batch_size=256,
        remove_columns=None if keep_columns else documents.column_names,
        num_proc=num_proc,
        features=features,
        desc="Filtering",
    )
    dropped = count_reasons(marked.data.column(REASON_COLUMN))
    kept = marked.filter(lambda reasons: [r == KEPT for r in reasons], input_columns=REASON_COLUMN, batched=True)
    # Flattened: the dropped rows (null text) must not stay in the table under an index mapping.
    return kept.remove_columns(REASON_COLUMN).flatten_indices(), dropped
