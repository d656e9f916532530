"""Attach a run's data to a `PretrainingTrainer`: the global block order of map-style training data, the collator
wrapper of the sequence-length curriculum, the data-position callbacks (tokens per source, a stream's position) and
a stream's resume position.

Every training block reaches the collators with its global `block_index` (`hf_pretrain.data.block_order`: a
stream numbers its blocks, map-style data is wrapped in a `BlockOrderDataset` that the trainer's sampler reads by
epoch and position, shuffled per epoch or in order). Collator state that changes during training (curriculum
length, a masking-rate schedule) is a function of that index, so no callback has to reach DataLoader workers.

The Trainer arguments these need (sequential reading of data in training order, `remove_unused_columns`,
`ignore_data_skip`) are decided once, by `hf_pretrain.resolve`; nothing here changes the arguments.
"""

from __future__ import annotations

import logging
from functools import partial

import torch

from hf_pretrain.checkpoint_state import stream_position_from_checkpoint
from hf_pretrain.data.block_order import BlockOrderDataset
from hf_pretrain.data.curriculum import CurriculumCollator, SequenceLengthCurriculum
from hf_pretrain.data.mixing import tokens_per_source
from hf_pretrain.data.training_data import TrainingData, blocks_per_step, total_steps
from hf_pretrain.training.callbacks.data_position import (
    SequenceLengthCallback,
    SourceTokensCallback,
    StreamPositionCallback,
)

logger = logging.getLogger(__name__)


def build_curriculum(data: TrainingData, data_args, training_args) -> SequenceLengthCurriculum | None:
    """The sequence-length curriculum of the run (None without one). It applies by global block index, so classic
    data may stay shuffled per epoch by the trainer's sampler."""
    if not data_args.curriculum_lengths:
        return None
    curriculum = SequenceLengthCurriculum.build(
        data_args.curriculum_lengths,
        data_args.curriculum_ends,
        data_args.curriculum_unit,
        data_args.block_size,
        blocks_per_step(training_args),
        total_steps(training_args, data.train),
    )
    logger.info("Sequence-length curriculum (first step, length): %s", curriculum.stages)
    return curriculum


def attach(
    trainer,
    data: TrainingData,
    curriculum: SequenceLengthCurriculum | None,
    block_size: int,
    documents: bool = False,
    padding_free: bool = False,
) -> None:
    """Give map-style training blocks their global index, wrap the trainer's collator for the curriculum and the
    blocks' document_lengths (`documents`: document_attention isolated) and add the data-position callbacks."""
    train = trainer.train_dataset
    if not isinstance(train, torch.utils.data.IterableDataset | BlockOrderDataset) and hasattr(train, "__len__"):
        trainer.train_dataset = BlockOrderDataset(train)  # read by global index: PretrainingTrainer._get_train_sampler
    front = []
    if curriculum is not None or documents:  # the wrapper drops the block bookkeeping the model does not take
        trainer.data_collator = CurriculumCollator(trainer.data_collator, curriculum, documents=documents)
    if curriculum is not None:
        front.append(SequenceLengthCallback(trainer.data_collator))
    if len(data.names) > 1:
        blocks_per_epoch = None if data.stream is not None else len(data.train)
        # padding-free rows (packing: false) differ in length: count their tokens, not rows x block_size
        tokens = partial(tokens_per_source, data.train, num_sources=len(data.names)) if padding_free else None
        front.append(SourceTokensCallback(data.names, data.weights, block_size, blocks_per_epoch, tokens))
    for callback in front:  # first, so the values are in `logs` before reporters and the printer see them
        trainer.callback_handler.callbacks.insert(0, callback)
    if data.stream is not None:
        trainer.add_callback(StreamPositionCallback())


def restore(data: TrainingData, checkpoint: str | None) -> None:
    """Put a stream back where the checkpoint left it (prepared data: the Trainer's sampler skip does it)."""
    if data.stream is None or checkpoint is None:
        return
    position = stream_position_from_checkpoint(checkpoint)
    if position is None:
        raise ValueError(
            f"Checkpoint {checkpoint!r} has no stream position (StreamPositionCallback): cannot resume the stream exactly."
        )
    data.stream.load_state_dict(position)
    logger.info(
        "Resuming the stream after %d blocks: %s",
        position["blocks"],
        {n: s["blocks"] for n, s in position["sources"].items()},
    )
