"""Where documents come from: local files, a Hub dataset (optionally streamed), or the built-in default corpus.

The default corpus is the English reference text that ships with every CPython (`pydoc_data.topics`: ~465k
characters in 79 documents), so a fresh machine with no network can still run a real pretraining job.
"""

from __future__ import annotations

import logging
import os

from datasets import Dataset, IterableDataset, load_dataset

from hf_pretrain.arguments import DataArguments

logger = logging.getLogger(__name__)

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


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


def _load_files(paths: list[str], args: DataArguments, field_name: str) -> Dataset:
    builder = _builder_for(paths, field_name)
    kwargs = {"sample_by": args.text_sample_by} if builder == "text" else {}
    return load_dataset(builder, data_files=paths, split="train", **kwargs)


def _check_text_column(dataset: Dataset | IterableDataset, column: str, where: str) -> None:
    columns = dataset.column_names
    if columns is not None and column not in columns:
        raise ValueError(f"text_column={column!r} is not a column of {where}; it has {columns}.")


def _drop_blank(dataset: Dataset, column: str, where: str) -> Dataset:
    """Remove empty and whitespace-only documents, and say how many: nothing disappears silently."""
    kept = dataset.filter(lambda text: text is not None and not text.isspace() and len(text) > 0, input_columns=column)
    if len(kept) < len(dataset):
        logger.info("%s: skipped %d empty or whitespace-only documents.", where, len(dataset) - len(kept))
    if len(kept) == 0:
        raise ValueError(f"{where} has no non-empty document in column {column!r}: the corpus is empty.")
    return kept


def load_documents(args: DataArguments, seed: int = 0) -> tuple[Dataset | IterableDataset, Dataset | None]:
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
        train = train.filter(lambda text: bool(text) and not text.isspace(), input_columns=column)
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
