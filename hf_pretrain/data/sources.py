"""Where documents come from: local files, a Hub dataset (optionally streamed), or the built-in default corpus.

The default corpus is the English reference text that ships with every CPython (`pydoc_data.topics`: ~465k
characters in 79 documents), so a fresh machine with no network can still run a real pretraining job.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field

from datasets import Dataset, IterableDataset, load_dataset

from hf_pretrain.cli import parse_mapping
from hf_pretrain.data.quality import (
    FILTERS,
    QUALITY_PRESETS,
    UNDECODABLE,
    DocumentFilter,
    document_problem,
    filter_documents,
    normalize_text,
)

logger = logging.getLogger(__name__)

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _mark_undecodable(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return UNDECODABLE, error.end


# Files are decoded strictly, and only bytes that are not UTF-8 become the `UNDECODABLE` mark (not U+FFFD, which
# valid text contains too): the document is then dropped and counted as 'invalid_utf8', the rest of the file is
# read. The alias "utf_8" (not "utf-8") makes the json builder take its decoding path, the only one that honours
# encoding_errors. Registered on import, so every process that reads a source (datatrove tasks too) has it.
UNDECODABLE_ERRORS = "hf_pretrain.undecodable"
codecs.register_error(UNDECODABLE_ERRORS, _mark_undecodable)
_DECODING = {"encoding": "utf_8", "encoding_errors": UNDECODABLE_ERRORS}
TEXT_SAMPLING = ("document", "paragraph", "line")
STREAM_CHUNK_BYTES = 1 << 20  # streamed text/json files are read 1 MiB at a time (datasets' default: 10 MiB)


def default_corpus() -> Dataset:
    """CPython's bundled English reference documentation, one document per help topic, in a stable order."""
    from pydoc_data.topics import topics

    return Dataset.from_dict({"text": [topics[name] for name in sorted(topics)]})


def file_format(paths: list[str], field_name: str) -> str:
    """The datasets builder of local files of one format ("text", "json", "parquet"); errors name the field."""
    extensions = {os.path.splitext(path)[1].lower() for path in paths}
    unknown = extensions - set(_BUILDERS)
    if unknown:
        raise ValueError(f"{field_name}: unsupported file type(s) {sorted(unknown)}; use one of {sorted(_BUILDERS)}.")
    builders = {_BUILDERS[ext] for ext in extensions}
    if len(builders) > 1:
        raise ValueError(f"{field_name}: mixes formats {sorted(extensions)}; give files of one format.")
    return builders.pop()


def read_files(
    paths: list[str], text_sample_by: str = "paragraph", streaming: bool = False, field_name: str = "data_files"
) -> Dataset | IterableDataset:
    """Local .txt / .jsonl / .json / .parquet files of one format, as documents (undecodable bytes marked)."""
    builder = file_format(paths, field_name)
    kwargs = {"sample_by": text_sample_by, **_DECODING} if builder == "text" else {}
    if builder == "json":
        kwargs = dict(_DECODING)
    if streaming and builder in ("text", "json"):
        kwargs["chunksize"] = STREAM_CHUNK_BYTES
    return load_dataset(builder, data_files=paths, split="train", streaming=streaming, **kwargs)


def _load_files(paths: list[str], args, field_name: str) -> Dataset:
    return read_files(paths, args.text_sample_by, field_name=field_name)


def _normalization(args) -> str:
    return getattr(args, "normalization", "NFC")


def _check_text_column(dataset: Dataset | IterableDataset, column: str, where: str) -> None:
    columns = dataset.column_names
    if columns is not None and column not in columns:
        raise ValueError(f"text_column={column!r} is not a column of {where}; it has {columns}.")


def _drop_blank(dataset: Dataset, column: str, where: str, normalization: str = "NFC") -> Dataset:
    """Normalise the text (`quality.normalize_text`: every data path trains on the same text) and remove missing,
    empty, whitespace-only and undecodable documents, saying how many of each: nothing disappears silently. The
    other columns are kept."""
    kept, problems = filter_documents(dataset, DocumentFilter(normalization, filters=()), column, keep_columns=True)
    if problems:
        logger.warning("%s: skipped %d unusable documents %s.", where, sum(problems.values()), problems)
    if len(kept) == 0:
        raise ValueError(f"{where} has no non-empty document in column {column!r}: the corpus is empty.")
    return kept


def _normalized_stream(documents: IterableDataset, column: str, normalization: str) -> IterableDataset:
    documents = documents.filter(lambda text: document_problem(text) is None, input_columns=column)
    documents = documents.map(lambda text: {column: normalize_text(text, normalization)}, input_columns=column)
    return documents.filter(bool, input_columns=column)


def load_documents(args, seed: int = 0) -> tuple[Dataset | IterableDataset, Dataset | None]:
    """Training and held-out documents, each with a text column `args.text_column`.

    The held-out set is, in order of preference: `validation_files`, the dataset's own `validation` split, or
    `validation_fraction` of the documents (split by document, so no document is in both).
    """
    column = args.text_column
    validation = None
    if args.data_files:
        train = _load_files(args.data_files, args, "data_files")
        where = f"data_files {args.data_files}"
    elif args.dataset_name:
        splits = load_dataset(args.dataset_name, args.dataset_config_name, streaming=args.streaming)
        if "train" not in splits:
            raise ValueError(f"dataset_name={args.dataset_name!r} has no 'train' split; it has {list(splits)}.")
        train, validation = splits["train"], splits.get("validation")
        where = f"dataset {args.dataset_name!r}"
    else:
        if column != "text":
            raise ValueError("text_column applies to your own data; the default corpus has only 'text'.")
        train, where = default_corpus(), "the default corpus (pydoc_data.topics)"
        logger.info("No data given: using %s.", where)
    _check_text_column(train, column, where)
    if args.validation_files:
        validation = _load_files(args.validation_files, args, "validation_files")
        _check_text_column(validation, column, f"validation_files {args.validation_files}")

    if isinstance(train, IterableDataset):
        if args.max_documents is not None:
            train = train.take(args.max_documents)
        train = _normalized_stream(train, column, _normalization(args))
        if isinstance(validation, IterableDataset):
            return train, _normalized_stream(validation.take(1000), column, _normalization(args))
        return train, None if validation is None else _drop_blank(
            validation, column, "the validation set", _normalization(args)
        )

    train = _drop_blank(train, column, where, _normalization(args))
    if args.max_documents is not None:
        train = train.select(range(min(args.max_documents, len(train))))
    if validation is None and args.validation_fraction > 0:
        if len(train) < 2:
            raise ValueError(f"{where} has a single document: nothing to hold out; set validation_fraction: 0.")
        split = train.train_test_split(test_size=args.validation_fraction, seed=seed)
        train, validation = split["train"], split["test"]
    if validation is not None:
        validation = _drop_blank(validation, column, "the validation set", _normalization(args))
    return train, validation


# ---------------------------------------------------------------------------------------------------------------
# Weighted sources: one entry per corpus, for data preparation, mixing and streaming.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    """One corpus of a mixture: local files, a Hub dataset or the built-in default corpus, with its weight.

    Its quality filtering (`quality.source_filter`): the run's filters and thresholds under the `quality` preset
    ('prose': as they are; 'technical': relaxed for code, markup and math, `quality.TECHNICAL_SETTINGS`; 'none': no
    quality filter, normalisation and validity only), then the source's own `quality_filters` (the list replaces the
    run's) and `filter_settings` (key by key over the run's and the preset's). Training on `data_sources` directly
    runs no quality filter unless a source lists its `quality_filters`.
    """

    name: str
    weight: float = 1.0
    data_files: list[str] = field(default_factory=list)
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    split: str = "train"
    text_column: str = "text"
    text_sample_by: str = "paragraph"
    default_corpus: bool = False
    quality: str = "prose"
    quality_filters: list[str] | None = None
    filter_settings: dict | str | None = None

    def __post_init__(self):
        if isinstance(self.data_files, str):
            self.data_files = [self.data_files]
        self._check_quality()
        given = [bool(self.data_files), bool(self.dataset_name), self.default_corpus]
        if sum(given) != 1:
            raise ValueError(
                f"Source {self.name!r}: give exactly one of data_files, dataset_name or default_corpus: true."
            )
        for path in self.data_files:
            if not os.path.isfile(path):
                raise ValueError(f"Source {self.name!r}: data_files has no such file {path!r}.")
        if self.data_files:
            file_format(self.data_files, f"source {self.name!r} data_files")
        if self.text_sample_by not in TEXT_SAMPLING:
            raise ValueError(f"Source {self.name!r}: text_sample_by must be one of {TEXT_SAMPLING}.")
        if self.default_corpus and self.text_column != "text":
            raise ValueError(f"Source {self.name!r}: the default corpus has only a 'text' column.")

    def _check_quality(self) -> None:
        if self.quality not in QUALITY_PRESETS:
            raise ValueError(f"Source {self.name!r}: quality must be one of {sorted(QUALITY_PRESETS)}.")
        if isinstance(self.quality_filters, str):
            self.quality_filters = [self.quality_filters]
        if self.quality_filters == ["none"]:
            self.quality_filters = []
        unknown = sorted(set(self.quality_filters or ()) - set(FILTERS))
        if unknown:
            raise ValueError(
                f"Source {self.name!r}: quality_filters has unknown {unknown}; choose from {sorted(FILTERS)}."
            )
        self.filter_settings = parse_mapping(self.filter_settings, f"source {self.name!r} filter_settings")
        unknown = sorted(set(self.filter_settings) - set(FILTERS))
        if unknown:
            raise ValueError(f"Source {self.name!r}: filter_settings has unknown filter(s) {unknown}.")
        if self.quality == "none" and (self.quality_filters or self.filter_settings):
            raise ValueError(
                f"Source {self.name!r}: quality: none runs no filter; unset quality_filters/filter_settings."
            )

    def load(self, streaming: bool = False) -> Dataset | IterableDataset:
        """The source's documents (all columns); the text column is checked to exist."""
        if self.default_corpus:
            documents = default_corpus()
            documents = documents.to_iterable_dataset() if streaming else documents
        elif self.data_files:
            documents = read_files(self.data_files, self.text_sample_by, streaming, f"source {self.name!r}")
        else:
            documents = load_dataset(
                self.dataset_name, self.dataset_config_name, split=self.split, streaming=streaming
            )
        _check_text_column(documents, self.text_column, f"source {self.name!r}")
        return documents


def parse_sources(value: list | str | None) -> list[SourceSpec]:
    """Source specs from YAML (a list of mappings) or the command line (a JSON list); names must be unique.

    >>> [s.name for s in parse_sources('[{"name": "docs", "default_corpus": true, "weight": 2}]')]
    ['docs']
    """
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"data_sources must be a YAML list or a JSON list of mappings: {error}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("data_sources must be a list of mappings, each with a name and its data.")
    known = {f.name for f in dataclasses.fields(SourceSpec)}
    specs = []
    for index, item in enumerate(value):
        unknown = sorted(set(item) - known)
        if unknown:
            raise ValueError(f"data_sources[{index}]: unknown key(s) {unknown}; known: {sorted(known)}.")
        if "name" not in item:
            raise ValueError(f"data_sources[{index}] needs a name.")
        specs.append(SourceSpec(**item))
    names = [spec.name for spec in specs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"data_sources: duplicate source name(s) {duplicated}.")
    return specs
