"""Build a run's data: the tokenizer and the training / held-out blocks, for each of the four data paths.

    classic   documents (files, a Hub dataset or the default corpus) → tokenize → pack
    mixed     data_sources: per source documents → tokenize → pack → mix by weight (training order)
    prepared  the output of recipes/prepare_data.py (its tokenizer; train already in mixing order)
    streamed  a MixedBlockStream over streamed sources (held out: validation_files only)

The training pipeline and the evaluation of a finished run call the same functions with the run's resolved
arguments, so evaluation scores exactly the blocks the run held out (`held_out_blocks`). Every path lays out its
training and held-out rows alike (`training_data.pack_run_blocks`): blocks of block_size, or padding-free rows of
whole documents with `packing: false` (classic and mixed), with `document_lengths` under isolated attention.
"""

from __future__ import annotations

import logging
import os

import datasets

from hf_pretrain.data import training_data as block_data
from hf_pretrain.data.packing import tokenize_documents
from hf_pretrain.data.sources import load_documents
from hf_pretrain.data.tokenizer import load_tokenizer, train_tokenizer
from hf_pretrain.data.training_data import TrainingData
from hf_pretrain.run_layout import TOKENIZER_SUBDIR

logger = logging.getLogger(__name__)

DATA_PATHS = ("classic", "mixed", "prepared", "streamed")


def data_path(data_args) -> str:
    """Which of the four paths `data_args` takes (see the module docstring)."""
    if data_args.prepared_dataset_path:
        return "prepared"
    if data_args.streaming:
        return "streamed"
    return "mixed" if block_data.uses_block_sources(data_args) else "classic"


def _tokenizer(model_args, output_dir: str, documents, text_column: str, process_first, is_main: bool):
    """Load the tokenizer, or train one on the corpus. Saved under output_dir, so a resumed run reuses it exactly."""
    saved = os.path.join(output_dir, TOKENIZER_SUBDIR)
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name:
        return load_tokenizer(name)
    with process_first(desc="tokenizer"):  # rank 0 trains and saves; the others load it
        if os.path.isfile(os.path.join(saved, "tokenizer.json")):
            logger.info("Reusing the tokenizer trained earlier in %s", saved)
            return load_tokenizer(saved)
        limit = min(model_args.tokenizer_training_documents, len(documents)) if hasattr(documents, "__len__") else None
        sample = (
            documents.select(range(limit))
            if limit is not None
            else documents.take(model_args.tokenizer_training_documents)
        )
        tokenizer = train_tokenizer((row[text_column] for row in sample), vocab_size=model_args.tokenizer_vocab_size)
        if is_main:
            tokenizer.save_pretrained(saved)
        logger.info("Trained a byte-level BPE tokenizer with %d tokens.", len(tokenizer))
        return tokenizer


def _classic_blocks(data_args, tokenizer, documents):
    tokenized = tokenize_documents(documents, tokenizer, data_args.text_column, data_args.preprocessing_num_workers)
    return block_data.pack_run_blocks(tokenized, data_args)


def build_data(model_args, data_args, training_args) -> TrainingData:
    """The tokenizer and the training / held-out blocks of a run (`training_args` gives the seed, output_dir and
    the process group: rank 0 tokenizes first and fills the datasets cache)."""
    seed, first = training_args.seed, training_args.main_process_first
    is_main = training_args.process_index == 0
    path = data_path(data_args)
    if path == "prepared":  # its own tokenizer; a given one must have the same vocabulary
        given = model_args.tokenizer_name_or_path or model_args.model_name_or_path
        return block_data.load_prepared_data(data_args, load_tokenizer(given) if given else None)
    if path == "classic":
        train_docs, eval_docs = load_documents(data_args, seed=seed)
        tokenizer = _tokenizer(model_args, training_args.output_dir, train_docs, data_args.text_column, first, is_main)
        with first(desc="tokenize and pack"):
            train = _classic_blocks(data_args, tokenizer, train_docs)
            evaluation = None if eval_docs is None else _classic_blocks(data_args, tokenizer, eval_docs)
        return TrainingData(train, evaluation, tokenizer)
    if path == "streamed":
        named = model_args.tokenizer_name_or_path or model_args.model_name_or_path
        sample = None if named else block_data.tokenizer_sample(data_args, model_args.tokenizer_training_documents)
        tokenizer = _tokenizer(model_args, training_args.output_dir, sample, "text", first, is_main)
        return block_data.streamed_data(data_args, tokenizer, seed)
    train_docs, held_out, specs = block_data.load_source_documents(data_args, seed)
    everything = datasets.concatenate_datasets(train_docs).shuffle(seed=seed)  # all sources train the tokenizer
    tokenizer = _tokenizer(model_args, training_args.output_dir, everything, "text", first, is_main)
    with first(desc="tokenize and pack"):
        return block_data.mixed_data(data_args, tokenizer, train_docs, held_out, specs, seed)


def held_out_blocks(data_args, tokenizer, seed: int) -> datasets.Dataset | None:
    """The evaluation blocks a run with these (resolved) data arguments built: the same documents, split with the
    same seed, tokenized with the run's tokenizer and packed the same way. None when the run held nothing out.

    For mixed data this packs only the held-out documents of each source (their split does not depend on the
    tokenizer); for prepared data it reads the stored validation split.
    """
    path = data_path(data_args)
    if path == "prepared":
        return block_data.load_prepared_data(data_args, tokenizer).evaluation
    if path == "streamed":
        return block_data.streamed_data(data_args, tokenizer, seed).evaluation
    if path == "classic":
        _, eval_docs = load_documents(data_args, seed=seed)
        return None if eval_docs is None else _classic_blocks(data_args, tokenizer, eval_docs)
    if data_args.validation_files:
        return block_data.validation_file_blocks(data_args, tokenizer)
    _, held_out, _ = block_data.load_source_documents(data_args, seed)
    blocks = [
        block_data.source_blocks(docs, tokenizer, data_args) for docs in held_out if docs is not None and len(docs)
    ]
    return datasets.concatenate_datasets(blocks) if blocks else None


__all__ = ["DATA_PATHS", "build_data", "data_path", "held_out_blocks"]
