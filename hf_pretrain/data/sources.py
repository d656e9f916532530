"""Where documents come from: local files, a Hub dataset (optionally streamed), or the built-in default corpus.

The default corpus is the English reference text that ships with every CPython (`pydoc_data.topics`: ~465k
characters in 79 documents), so a fresh machine with no network can still run a real pretraining job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

from datasets import Dataset, IterableDataset, load_dataset

from hf_pretrain.data.quality import document_problem

logger = logging.getLogger(__name__)

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Undecodable bytes become U+FFFD instead of failing the whole file; such documents are then dropped and counted
# (`quality.document_problem`). The alias "utf_8" (not "utf-8") makes the json builder take its decoding path,
# the only one that honours encoding_errors.
_DECODING = {"encoding": "utf_8", "encoding_errors": "replace"}
TEXT_SAMPLING = ("document", "paragraph", "line")
STREAM_CHUNK_BYTES = 1 << 20  # streamed text/json files are read 1 MiB at a time (datasets' default: 10 MiB)


def default_corpus() -> Dataset:
    """CPython's bundled English reference documentation, one document per help topic, in a stable order."""
    from pydoc_data.topics import topics

    return Dataset.from_dict({"text": [topics[name] for name in sorted(topics)]})


def _builder_for(paths: list[str], field_name: str) -> str:
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
    """Local .txt / .jsonl / .json / .parquet files of one format, as documents (non-UTF-8 bytes replaced)."""
    builder = _builder_for(paths, field_name)
    kwargs = {"sample_by": text_sample_by, **_DECODING} if builder == "text" else {}
    if builder == "json":
        kwargs = dict(_DECODING)
    if streaming and builder in ("text", "json"):
        kwargs["chunksize"] = STREAM_CHUNK_BYTES
    return load_dataset(builder, data_files=paths, split="train", streaming=streaming, **kwargs)


def _load_files(paths: list[str], args, field_name: str) -> Dataset:
    return read_files(paths, args.text_sample_by, field_name=field_name)


def _check_text_column(dataset: Dataset | IterableDataset, column: str, where: str) -> None:
    columns = dataset.column_names
    if columns is not None and column not in columns:
        raise ValueError(f"text_column={column!r} is not a column of {where}; it has {columns}.")


def _drop_blank(dataset: Dataset, column: str, where: str) -> Dataset:
    """Remove missing, empty, whitespace-only and non-UTF-8 documents, and say how many of each: nothing
    disappears silently."""
    problems = Counter(map(document_problem, dataset.data.column(column).to_pylist()))
    problems.pop(None, None)
    kept = dataset
    if problems:
        kept = dataset.filter(lambda text: document_problem(text) is None, input_columns=column)
        logger.warning("%s: skipped %d unusable documents %s.", where, len(dataset) - len(kept), dict(problems))
    if len(kept) == 0:
        raise ValueError(f"{where} has no non-empty document in column {column!r}: the corpus is empty.")
    return kept


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
        train = train.filter(lambda text: document_problem(text) is None, input_columns=column)
        return train, validation if not isinstance(validation, IterableDataset) else validation.take(1000)

    train = _drop_blank(train, column, where)
    if args.max_documents is not None:
        train = train.select(range(min(args.max_documents, len(train))))
    if validation is None and args.validation_fraction > 0:
        if len(train) < 2:
            raise ValueError(f"{where} has a single document: nothing to hold out; set validation_fraction: 0.")
        split = train.train_test_split(test_size=args.validation_fraction, seed=seed)
        train, validation = split["train"], split["test"]
    if validation is not None:
        validation = _drop_blank(validation, column, "the validation set")
    return train, validation


# ---------------------------------------------------------------------------------------------------------------
# Weighted sources: one entry per corpus, for data preparation, mixing and streaming.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    """One corpus of a mixture: local files, a Hub dataset or the built-in default corpus, with its weight."""

    name: str
    weight: float = 1.0
    data_files: list[str] = field(default_factory=list)
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    split: str = "train"
    text_column: str = "text"
    text_sample_by: str = "paragraph"
    default_corpus: bool = False

    def __post_init__(self):
        if isinstance(self.data_files, str):
            self.data_files = [self.data_files]
        given = [bool(self.data_files), bool(self.dataset_name), self.default_corpus]
        if sum(given) != 1:
            raise ValueError(
                f"Source {self.name!r}: give exactly one of data_files, dataset_name or default_corpus: true."
            )
        for path in self.data_files:
            if not os.path.isfile(path):
                raise ValueError(f"Source {self.name!r}: data_files has no such file {path!r}.")
        if self.data_files:
            _builder_for(self.data_files, f"source {self.name!r} data_files")
        if self.text_sample_by not in TEXT_SAMPLING:
            raise ValueError(f"Source {self.name!r}: text_sample_by must be one of {TEXT_SAMPLING}.")
        if self.default_corpus and self.text_column != "text":
            raise ValueError(f"Source {self.name!r}: the default corpus has only a 'text' column.")

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
