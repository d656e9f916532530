"""Data preparation: weighted sources → filtered, deduplicated, tokenized, packed, mixed blocks on disk + stats.json.

    sources ─ normalise + quality filters ─ exact dedup ─ near dedup (MinHash-LSH) ─ hold out validation
            ─ tokenizer (load, or train on the kept documents) ─ tokenize (datasets.map, num_proc) ─ pack per source
            ─ mix by weight (training order) ─ save_to_disk + tokenizer/ + stats.json

Deduplication is global: a document in two sources is kept once, in the first source listed. The validation split
comes after it, so no duplicate straddles train and validation. The training split is stored in training order
(the mixture schedule over shuffled blocks): `train_sampling_strategy: sequential` reads it as mixed, and the
per-source token counts of a run are then exact (`SourceTokensCallback`). Every document that does not make it is
counted in stats.json under the step and the reason that removed it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, concatenate_datasets

from hf_pretrain.cli import parse_mapping
from hf_pretrain.data.dedup import document_hashes, document_signatures, exact_duplicates, near_duplicates
from hf_pretrain.data.mixing import mix_blocks, normalize_weights
from hf_pretrain.data.packing import pack_blocks, tokenize_documents
from hf_pretrain.data.quality import DEFAULT_FILTERS, NORMALIZATIONS, DocumentFilter, filter_documents
from hf_pretrain.data.shards import STATS_FILE
from hf_pretrain.data.sources import parse_sources
from hf_pretrain.data.tokenizer import load_tokenizer, train_tokenizer
from hf_pretrain.run_layout import TOKENIZER_SUBDIR

logger = logging.getLogger(__name__)


@dataclass
class PrepareArguments:
    """What `recipes/prepare_data.py` reads, cleans, mixes and writes."""

    sources: list | str | None = field(
        default=None,
        metadata={
            "help": "Weighted sources, a YAML list (JSON on the command line) of {name, weight, data_files | "
            "dataset_name (+ dataset_config_name, split) | default_corpus: true, text_column, text_sample_by}."
        },
    )
    output_dir: str = field(default="outputs/prepared", metadata={"help": "Where the dataset and stats.json go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing prepared dataset."})
    block_size: int = field(default=512, metadata={"help": "Tokens per packed block."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use (Hub id or folder). Unset: train one on the kept documents."}
    )
    tokenizer_vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of a trained tokenizer."})
    tokenizer_training_documents: int = field(
        default=100_000, metadata={"help": "At most this many kept documents train the tokenizer."}
    )
    normalization: str = field(default="NFC", metadata={"help": f"Unicode normalisation, one of {NORMALIZATIONS}."})
    quality_filters: list[str] = field(
        default_factory=lambda: list(DEFAULT_FILTERS),
        metadata={"help": "Quality filters in order: gopher_quality, gopher_repetition, c4; 'none' for none."},
    )
    filter_settings: dict | str | None = field(
        default=None,
        metadata={"help": "Per-filter thresholds, e.g. {'gopher_quality': {'min_doc_words': 20}} (datatrove names)."},
    )
    exact_dedup: bool = field(default=True, metadata={"help": "Remove documents whose normalised text repeats."})
    near_dedup: bool = field(default=True, metadata={"help": "Remove near-duplicates (MinHash-LSH)."})
    near_dedup_threshold: float = field(
        default=0.8,
        metadata={"help": "Estimated Jaccard similarity of word n-grams at which documents are duplicates."},
    )
    minhash_num_perm: int = field(default=128, metadata={"help": "MinHash permutations (signature length)."})
    minhash_ngram: int = field(default=5, metadata={"help": "Words per shingle for MinHash."})
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Fraction of each source's kept documents held out for validation."}
    )
    num_blocks: int | None = field(
        default=None,
        metadata={"help": "Training blocks in the mixture. Unset: as many as fit before any source would repeat."},
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes for the datasets.map steps."})
    seed: int = field(default=0, metadata={"help": "Seed of the validation split and of the block shuffle."})

    def __post_init__(self):
        self.source_specs = parse_sources(self.sources)
        if not self.source_specs:
            raise ValueError("sources: give at least one source.")
        normalize_weights([s.weight for s in self.source_specs], [s.name for s in self.source_specs])
        if self.quality_filters == ["none"]:
            self.quality_filters = []
        self.filter_settings = parse_mapping(self.filter_settings, "filter_settings")
        DocumentFilter(self.normalization, self.quality_filters, self.filter_settings)  # validates names, settings
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {self.block_size}.")
        if not 0.0 < self.near_dedup_threshold <= 1.0:
            raise ValueError(f"near_dedup_threshold must be in (0, 1], got {self.near_dedup_threshold}.")
        if self.minhash_num_perm < 16 or self.minhash_ngram < 1:
            raise ValueError("minhash_num_perm must be at least 16 and minhash_ngram at least 1.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be positive, got {self.num_blocks}.")
        if os.path.exists(os.path.join(self.output_dir, STATS_FILE)) and not self.overwrite_output_dir:
            raise ValueError(
                f"output_dir={self.output_dir!r} already holds a prepared dataset; set overwrite_output_dir: true."
            )


def _lengths(tokenized: Dataset) -> np.ndarray:
    if tokenized._indices is not None:
        tokenized = tokenized.flatten_indices()
    return pc.list_value_length(tokenized.data.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)


def _pack_source(documents: Dataset, tokenizer, args: PrepareArguments, name: str) -> tuple[Dataset, dict]:
    """Blocks of one source, and its packing figures (real tokens kept, against padding each document)."""
    tokenized = tokenize_documents(documents, tokenizer, "text", args.num_proc)
    lengths = _lengths(tokenized)
    tokens = int(lengths.sum())
    if tokens < args.block_size:
        raise ValueError(f"Source {name!r} keeps {tokens} tokens, fewer than one block of {args.block_size}.")
    blocks = pack_blocks(tokenized, args.block_size, document_lengths=True)
    in_blocks = len(blocks) * args.block_size
    padded = int((np.ceil(lengths / args.block_size) * args.block_size).sum())  # one document per padded row
    figures = {
        "tokens": tokens,
        "tokens_in_blocks": in_blocks,
        "tokens_dropped": tokens - in_blocks,
        "packing_efficiency": in_blocks / tokens,
        "padding_efficiency": tokens / padded,  # the baseline: every document padded to a multiple of block_size
    }
    return blocks, figures


def prepare_corpus(args: PrepareArguments, tokenizer=None) -> dict:
    """Run every step, write the dataset, tokenizer and stats.json to `args.output_dir`; return the stats."""
    specs = args.source_specs
    names = [spec.name for spec in specs]
    document_filter = DocumentFilter(args.normalization, args.quality_filters, args.filter_settings)
    per_source = {name: {"weight": spec.weight, "documents": {}, "dropped": {}} for name, spec in zip(names, specs)}

    kept = []
    for source_id, spec in enumerate(specs):
        raw = spec.load()
        documents, dropped = filter_documents(raw, document_filter, spec.text_column, args.num_proc)
        entry = per_source[spec.name]
        entry["documents"].update(read=len(raw), after_filters=len(documents))
        entry["dropped"].update(dropped)
        logger.info(
            "Source %r: %d documents read, %d kept by the filters %s.", spec.name, len(raw), len(documents), dropped
        )
        kept.append(documents.add_column("source_id", [source_id] * len(documents)))
    corpus = concatenate_datasets(kept)
    source_of = np.asarray(corpus["source_id"], dtype=np.int64)
    keep = np.ones(len(corpus), dtype=bool)
    duplicates = {}
    for step, enabled in (("exact_duplicate", args.exact_dedup), ("near_duplicate", args.near_dedup)):
        if not enabled:
            continue
        survivors = np.flatnonzero(keep)
        texts = corpus.select(survivors)
        if step == "exact_duplicate":
            report = exact_duplicates(document_hashes(texts, "text", args.num_proc))
        else:
            signatures = document_signatures(
                texts, "text", args.minhash_num_perm, args.minhash_ngram, args.seed + 1, args.num_proc
            )
            report = near_duplicates(signatures, args.near_dedup_threshold, args.seed + 1)
        keep[survivors[~report.keep]] = False
        removed = np.bincount(source_of[survivors[~report.keep]], minlength=len(specs))
        duplicates[step] = {
            "removed": report.removed,
            "clusters": report.clusters,
            "cluster_sizes": report.cluster_sizes(),
        }
        for source_id, name in enumerate(names):
            per_source[name]["dropped"][step] = int(removed[source_id])
            per_source[name]["documents"][f"after_{step.replace('_duplicate', '')}_dedup"] = int(
                (keep & (source_of == source_id)).sum()
            )

    train_docs, validation_docs = [], []
    for source_id, name in enumerate(names):
        documents = corpus.select(np.flatnonzero(keep & (source_of == source_id))).remove_columns("source_id")
        if len(documents) == 0:
            raise ValueError(
                f"Source {name!r} has no document left after filtering and deduplication: {per_source[name]}."
            )
        held_out = None
        if args.validation_fraction > 0 and len(documents) > 1:
            split = documents.train_test_split(test_size=args.validation_fraction, seed=args.seed)
            documents, held_out = split["train"], split["test"]
        train_docs.append(documents)
        validation_docs.append(held_out)
        per_source[name]["documents"].update(train=len(documents), validation=len(held_out) if held_out else 0)

    if tokenizer is None:
        tokenizer = _prepare_tokenizer(args, train_docs)
    train_blocks, validation_blocks = [], []
    for source_id, (name, documents, held_out) in enumerate(zip(names, train_docs, validation_docs)):
        blocks, figures = _pack_source(documents, tokenizer, args, name)
        train_blocks.append(blocks)
        per_source[name]["packing"] = figures
        if held_out is None:
            continue
        held_tokens = tokenize_documents(held_out, tokenizer, "text", args.num_proc)
        if _lengths(held_tokens).sum() < args.block_size:
            logger.warning("Source %r: its validation documents hold less than one block; none kept.", name)
            continue
        held = pack_blocks(held_tokens, args.block_size, document_lengths=True)
        validation_blocks.append(held.add_column("source_id", np.full(len(held), source_id, dtype=np.int16)))

    train, mixture = mix_blocks(train_blocks, [s.weight for s in specs], names, args.num_blocks, args.seed)
    splits = {"train": train}
    if validation_blocks:
        splits["validation"] = concatenate_datasets(validation_blocks)
    DatasetDict(splits).save_to_disk(args.output_dir, num_proc=None)
    tokenizer.save_pretrained(os.path.join(args.output_dir, TOKENIZER_SUBDIR))

    weights = normalize_weights([s.weight for s in specs], names)
    for (name, info), weight in zip(mixture.items(), weights):
        per_source[name]["blocks"] = info
        per_source[name]["train_tokens_in_mixture"] = info["blocks_used"] * args.block_size
        per_source[name]["mixture_fraction"] = {"target": float(weight), "actual": info["blocks_used"] / len(train)}
    documents_in = sum(entry["documents"]["read"] for entry in per_source.values())
    tokenized = sum(entry["packing"]["tokens"] for entry in per_source.values())
    in_blocks = sum(entry["packing"]["tokens_in_blocks"] for entry in per_source.values())
    padded_baseline = sum(
        entry["packing"]["tokens"] / entry["packing"]["padding_efficiency"] for entry in per_source.values()
    )
    stats = {
        "output_dir": args.output_dir,
        "block_size": args.block_size,
        "tokenizer": {"name_or_path": args.tokenizer_name_or_path, "vocab_size": len(tokenizer)},
        "totals": {
            "documents_in": documents_in,
            "documents_out": sum(
                entry["documents"]["train"] + entry["documents"]["validation"] for entry in per_source.values()
            ),
            "train_blocks": len(train),
            "train_tokens": len(train) * args.block_size,
            "validation_blocks": len(splits["validation"]) if "validation" in splits else 0,
            "tokens_tokenized": tokenized,
            "packing_efficiency": in_blocks / tokenized,
            "padding_baseline_efficiency": tokenized / padded_baseline,
        },
        "duplicates": duplicates,
        "sources": per_source,
        "mixture": {"names": names, "weights": [float(w) for w in weights], "order": "training (sequential)"},
        "config": {k: v for k, v in asdict(args).items() if k != "source_specs"},
    }
    with open(os.path.join(args.output_dir, STATS_FILE), "w") as handle:
        json.dump(stats, handle, indent=2, default=str)
    logger.info("Prepared %d training blocks of %d tokens in %s.", len(train), args.block_size, args.output_dir)
    return stats


def _prepare_tokenizer(args: PrepareArguments, train_docs: list[Dataset]):
    if args.tokenizer_name_or_path:
        return load_tokenizer(args.tokenizer_name_or_path)
    per_source = math.ceil(args.tokenizer_training_documents / len(train_docs))
    texts = (
        text for documents in train_docs for text in documents.select(range(min(per_source, len(documents))))["text"]
    )
    return train_tokenizer(texts, vocab_size=args.tokenizer_vocab_size)
