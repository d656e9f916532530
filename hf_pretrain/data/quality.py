"""Document normalisation and quality filters: the Gopher and C4 heuristic rules, each drop counted by reason.

The rules themselves are datatrove's (`GopherQualityFilter`: length, mean word length, symbol/word ratios,
bullets and ellipses, alphabetic words, stop words; `GopherRepetitionFilter`: duplicated lines and paragraphs, top
n-gram and duplicated n-gram character fractions; `C4QualityFilter`: terminal punctuation, words per line,
sentences, "lorem ipsum", curly brackets, javascript and policy lines), used as plain objects inside
`datasets.map`, so they run batched over `num_proc` processes. datatrove splits words with spaCy or NLTK (which
need downloaded models); a regex word tokenizer stands in for them here, close to NLTK's on English text.

Before any rule, a document that is missing, empty, whitespace-only or not valid UTF-8 (decoded with replacement
characters) is dropped and counted under its own reason: nothing disappears without a count.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

NORMALIZATIONS = ("NFC", "NFKC", "none")
FILTERS = {
    "gopher_quality": "GopherQualityFilter",
    "gopher_repetition": "GopherRepetitionFilter",
    "c4": "C4QualityFilter",
}
DEFAULT_FILTERS = ("gopher_quality", "gopher_repetition")  # length first: the n-gram rules misjudge tiny texts
REPLACEMENT_CHARACTER = "\ufffd"  # what undecodable bytes become when files are read with errors="replace"
REASON_COLUMN = "_drop_reason"
KEPT = ""


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
    if REPLACEMENT_CHARACTER in text:
        return "invalid_utf8"
    return None


def normalize_text(text: str, form: str = "NFC") -> str:
    """Unicode normal form, Unix newlines, no leading or trailing whitespace."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _word_tokenizer():
    from datatrove.utils.word_tokenizers import WhitespaceTokenizer

    class RegexWordTokenizer(WhitespaceTokenizer):
        """datatrove's fallback tokenizer (regex sentences), with regex words instead of spaCy's."""

        _word = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")

        def word_tokenize(self, text: str) -> list[str]:
            return self._word.findall(text)

    return RegexWordTokenizer()


def build_filter(name: str, settings: Mapping | None = None, word_tokenizer=None):
    """One datatrove filter by our name, with its settings (the filter's own keyword arguments)."""
    if name not in FILTERS:
        raise ValueError(f"Unknown quality filter {name!r}; choose from {sorted(FILTERS)}.")
    from datatrove.pipeline import filters

    cls = getattr(filters, FILTERS[name])
    try:
        return cls(**dict(settings or {}), language=word_tokenizer or _word_tokenizer())
    except TypeError as error:
        raise ValueError(f"filter_settings for {name!r}: {error}") from None


class DocumentFilter:
    """Normalise a batch of documents and apply the quality filters; say why each dropped one was dropped.

    Picklable (datasets.map with num_proc): the datatrove objects are built lazily in each process.

    >>> keep = DocumentFilter(filters=())
    >>> keep(["  fine text \\r\\n", "", None, "bad \\ufffd byte"])
    (['fine text', None, None, None], ['', 'empty', 'missing', 'invalid_utf8'])
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
            self._build()  # fail now on bad settings, not in a worker process

    def _build(self):
        tokenizer = _word_tokenizer()
        self._filters = [(name, build_filter(name, self.settings.get(name), tokenizer)) for name in self.names]

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
) -> tuple[Dataset, dict[str, int]]:
    """Normalised, filtered documents (only the text column) and the count of drops per reason."""
    if text_column not in documents.column_names:
        raise ValueError(
            f"text_column={text_column!r} is not a column of the documents; they have {documents.column_names}."
        )

    def apply(batch):
        texts, reasons = document_filter(batch[text_column])
        return {"text": texts, REASON_COLUMN: reasons}

    marked = documents.map(
        apply,
        batched=True,
        batch_size=256,
        remove_columns=documents.column_names,
        num_proc=num_proc,
        desc="Filtering",
    )
    dropped = count_reasons(marked.data.column(REASON_COLUMN))
    kept = marked.filter(lambda reasons: [r == KEPT for r in reasons], input_columns=REASON_COLUMN, batched=True)
    return kept.remove_columns(REASON_COLUMN), dropped
