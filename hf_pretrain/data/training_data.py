"""The training blocks of a run, from prepared data, weighted sources or a stream (attaching them to a Trainer is
`hf_pretrain.training.setup`).

    prepared_dataset_path  → load_from_disk; its tokenizer; train already in mixing order
    data_sources           → per source: documents → tokenize → pack → mix by weight (training order)
    data_sources/dataset_name + streaming → MixedBlockStream (resumable, flat memory)

Data in training order is read sequentially (`train_sampling_strategy: sequential`), which is what makes the
per-source token counts and the curriculum exact functions of the global step (see callbacks/data_position.py).

Every path's rows have one layout, the same for training and held-out data (`pack_run_blocks`): blocks of
block_size, or with `packing: false` padding-free rows of whole documents (`pack_documents`, mixed by tokens with
`mix_rows`). With `document_attention: isolated` every row carries `document_lengths`. With `shared` nothing new
is computed: classic and validation_files blocks hold `input_ids` only, as before, while per-source, prepared and
streamed blocks keep the `document_lengths` they always carried (unused under shared: the collators strip them).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

from datasets import Dataset, concatenate_datasets

from hf_pretrain.data.mixing import mix_blocks, mix_rows
from hf_pretrain.data.packing import pack, pack_documents, tokenize_documents
from hf_pretrain.data.quality import filter_documents, source_filter
from hf_pretrain.data.shards import load_prepared
from hf_pretrain.data.sources import SourceSpec, _drop_blank, parse_sources, read_files
from hf_pretrain.data.streaming import MixedBlockStream, SourceStream
from hf_pretrain.data.tokenizer import load_tokenizer
from hf_pretrain.run_layout import TOKENIZER_SUBDIR

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    train: object  # datasets.Dataset of blocks, or a MixedBlockStream
    evaluation: Dataset | None = None
    tokenizer: object = None
    names: list[str] = field(default_factory=list)  # sources of a mixture (empty: one unnamed source)
    weights: list[float] = field(default_factory=list)
    ordered: bool = False  # `train` is in training order: read it sequentially

    @property
    def stream(self) -> MixedBlockStream | None:
        return self.train if isinstance(self.train, MixedBlockStream) else None


def uses_block_sources(data_args) -> bool:
    """Whether the run's data goes through this module (else: the classic documents → blocks path)."""
    return bool(data_args.prepared_dataset_path or parse_sources(data_args.data_sources) or data_args.streaming)


def _specs(data_args) -> list[SourceSpec]:
    specs = parse_sources(data_args.data_sources)
    if specs:
        return specs
    return [  # a single streamed Hub dataset: a mixture of one
        SourceSpec(
            name=data_args.dataset_name,
            dataset_name=data_args.dataset_name,
            dataset_config_name=data_args.dataset_config_name,
            text_column=data_args.text_column,
        )
    ]


def _same_vocabulary(tokenizer, prepared_tokenizer, path: str) -> None:
    if tokenizer.get_vocab() != prepared_tokenizer.get_vocab():
        raise ValueError(
            f"The tokenizer differs from the one prepared_dataset_path={path!r} was tokenized with "
            f"({len(tokenizer)} vs {len(prepared_tokenizer)} tokens): unset tokenizer_name_or_path to use it."
        )


def load_prepared_data(data_args, tokenizer=None) -> TrainingData:
    splits, stats = load_prepared(data_args.prepared_dataset_path)
    if stats["block_size"] != data_args.block_size:
        raise ValueError(
            f"block_size={data_args.block_size} but prepared_dataset_path holds blocks of {stats['block_size']}: "
            "set block_size to match (the curriculum shortens sequences within blocks)."
        )
    prepared_tokenizer = load_tokenizer(os.path.join(data_args.prepared_dataset_path, TOKENIZER_SUBDIR))
    if tokenizer is not None:
        _same_vocabulary(tokenizer, prepared_tokenizer, data_args.prepared_dataset_path)
    mixture = stats.get("mixture", {})
    return TrainingData(
        train=splits["train"],
        evaluation=splits.get("validation"),
        tokenizer=tokenizer or prepared_tokenizer,
        names=list(mixture.get("names", [])),
        weights=list(mixture.get("weights", [])),
        ordered=True,
    )


def training_filter(spec: SourceSpec, data_args):
    """The normalisation and filters a run applies to a source's documents on every path (in memory, streamed):
    the run's normalization, no quality filter unless the source lists its own `quality_filters`."""
    return source_filter(spec, data_args.normalization, filters=())


def load_source_documents(data_args, seed: int) -> tuple[list[Dataset], list[Dataset | None], list[SourceSpec]]:
    """Per source: training and held-out documents (a 'text' column only), normalised as streamed and prepared
    documents are; unusable ones dropped and counted."""
    specs = _specs(data_args)
    train, held_out = [], []
    for spec in specs:
        documents, dropped = filter_documents(spec.load(), training_filter(spec, data_args), spec.text_column)
        if dropped:
            logger.warning("source %r: skipped %d documents %s.", spec.name, sum(dropped.values()), dropped)
        if len(documents) == 0:
            raise ValueError(f"source {spec.name!r} has no usable document in column {spec.text_column!r}.")
        if data_args.max_documents is not None:
            documents = documents.select(range(min(data_args.max_documents, len(documents))))
        validation = None
        if data_args.validation_fraction > 0 and not data_args.validation_files and len(documents) > 1:
            split = documents.train_test_split(test_size=data_args.validation_fraction, seed=seed)
            documents, validation = split["train"], split["test"]
        train.append(documents)
        held_out.append(validation)
    return train, held_out, specs


def keeps_document_lengths(data_args) -> bool:
    """Whether the classic and validation_files blocks carry `document_lengths` (see the module docstring)."""
    return data_args.document_attention == "isolated"  # packing: false needs isolated (check_padding_free)


def pack_run_blocks(tokenized, data_args, document_lengths: bool | None = None):
    """Tokenized documents in the run's layout: padding-free rows (`packing: false`) or blocks of block_size, with
    `document_lengths` when asked (None: `keeps_document_lengths`). Training and held-out data both come here."""
    if not data_args.packing:
        return pack_documents(tokenized, data_args.block_size, data_args.max_tokens_per_batch)
    keep = keeps_document_lengths(data_args) if document_lengths is None else document_lengths
    return pack(tokenized, data_args.block_size, document_lengths=keep)


def source_blocks(documents: Dataset, tokenizer, data_args) -> Dataset:
    """One source's documents ('text' column) tokenized and packed with their document_lengths (always, as before:
    prepared data stores them too)."""
    tokenized = tokenize_documents(documents, tokenizer, "text", data_args.preprocessing_num_workers)
    return pack_run_blocks(tokenized, data_args, document_lengths=True)


def mixed_data(data_args, tokenizer, train_docs, held_out, specs, seed: int) -> TrainingData:
    """Pack every source and mix by weight, in training order (nothing repeats): blocks by count (all of one
    length), padding-free rows by tokens (`mix_rows`)."""
    names, weights = [s.name for s in specs], [s.weight for s in specs]
    blocks = [source_blocks(documents, tokenizer, data_args) for documents in train_docs]
    if data_args.packing:
        train, info = mix_blocks(blocks, weights, names, seed=seed)
        logger.info("Mixed %d blocks from %s.", len(train), {name: i["blocks_used"] for name, i in info.items()})
    else:
        train, info = mix_rows(blocks, weights, names, seed=seed)
        used = {name: f"{i['tokens_used']} of {i['tokens_available']} tokens" for name, i in info.items()}
        logger.info("Mixed %d padding-free rows by tokens: %s.", len(train), used)
    evaluation = [source_blocks(d, tokenizer, data_args) for d in held_out if d is not None and len(d)]
    given = validation_file_blocks(data_args, tokenizer)  # validation_files replace the per-source split
    return TrainingData(
        train=train,
        evaluation=given if given is not None else concatenate_datasets(evaluation) if evaluation else None,
        tokenizer=tokenizer,
        names=names,
        weights=weights,
        ordered=True,
    )


def validation_file_blocks(data_args, tokenizer) -> Dataset | None:
    """The blocks of `validation_files` (the held-out set of mixed and streamed data when given), or None."""
    if not data_args.validation_files:
        return None
    documents = _drop_blank(
        read_files(data_args.validation_files, data_args.text_sample_by),
        data_args.text_column,
        "validation_files",
        data_args.normalization,
    )
    return pack_run_blocks(
        tokenize_documents(documents, tokenizer, data_args.text_column, data_args.preprocessing_num_workers), data_args
    )


def source_streams(data_args, tokenizer, seed: int = 0) -> list[SourceStream]:
    """One SourceStream per source, filtered like the in-memory path and shuffled by the stream_shuffle_* fields."""
    return [
        SourceStream(
            spec.name,
            lambda spec=spec: spec.load(streaming=True),
            tokenizer,
            data_args.block_size,
            spec.text_column,
            document_filter=training_filter(spec, data_args),
            shuffle_documents=data_args.stream_shuffle_documents,
            shuffle_blocks=data_args.stream_shuffle_blocks,
            seed=seed,
        )
        for spec in _specs(data_args)
    ]


def streamed_data(data_args, tokenizer, seed: int = 0) -> TrainingData:
    """A MixedBlockStream over the sources (or the one streamed dataset); held out: validation_files only."""
    specs = _specs(data_args)
    sources = source_streams(data_args, tokenizer, seed)
    evaluation = validation_file_blocks(data_args, tokenizer)
    return TrainingData(
        train=MixedBlockStream(sources, [s.weight for s in specs]),
        evaluation=evaluation,
        tokenizer=tokenizer,
        names=[s.name for s in specs],
        weights=[s.weight for s in specs],
        ordered=True,
    )


def tokenizer_sample(data_args, limit: int) -> Dataset:
    """Documents to train a tokenizer on when the data is streamed: the first ones of each source."""
    specs = _specs(data_args)
    texts = []
    for spec in specs:
        rows = spec.load(streaming=True).take(max(1, limit // len(specs)))
        kept, _ = training_filter(spec, data_args)([row[spec.text_column] for row in rows])
        texts.extend(text for text in kept if text is not None)
    return Dataset.from_dict({"text": texts})


def blocks_per_step(args) -> int:
    """Blocks consumed by one optimizer step over all processes."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


def total_steps(training_args, train) -> int:
    """Optimizer steps of the run (max_steps, or the epochs over a dataset of known length)."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    per_epoch = math.ceil(len(train) / blocks_per_step(training_args))
    return max(1, math.ceil(per_epoch * training_args.num_train_epochs))
