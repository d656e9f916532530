"""Attach a run's data to a `PretrainingTrainer`: the collator wrapper of the sequence-length curriculum, the
data-position callbacks (tokens per source, a stream's position) and a stream's resume position.

The Trainer arguments these need (sequential reading of data in training order, `remove_unused_columns`,
`ignore_data_skip`) are decided once, by `hf_pretrain.resolve`; nothing here changes the arguments.
"""

from __future__ import annotations

import logging

import numpy as np

from hf_pretrain.checkpoint_state import stream_position_from_checkpoint
from hf_pretrain.data.curriculum import CurriculumCollator, SequenceLengthCurriculum
from hf_pretrain.data.training_data import TrainingData, blocks_per_step, total_steps
from hf_pretrain.training.callbacks.data_position import (
    SequenceLengthCallback,
    SourceTokensCallback,
    StreamPositionCallback,
)

logger = logging.getLogger(__name__)


def build_curriculum(data: TrainingData, data_args, training_args) -> SequenceLengthCurriculum | None:
    """The sequence-length curriculum of the run (None without one); gives classic data its block order."""
    if not data_args.curriculum_lengths:
        return None
    if not data.ordered:  # classic path: shuffle once, then read in that order so block index = position
        data.train = data.train.shuffle(seed=training_args.seed).flatten_indices()
        data.ordered = True
    curriculum = SequenceLengthCurriculum.build(
        data_args.curriculum_lengths,
        data_args.curriculum_ends,
        data_args.curriculum_unit,
        data_args.block_size,
        blocks_per_step(training_args),
        total_steps(training_args, data.train),
    )
    logger.info("Sequence-length curriculum (first step, length): %s", curriculum.stages)
    if data.stream is None and "block_index" not in data.train.column_names:
        data.train = data.train.add_column("block_index", np.arange(len(data.train), dtype=np.int64))
    return curriculum


def attach(trainer, data: TrainingData, curriculum: SequenceLengthCurriculum | None, block_size: int) -> None:
    """Wrap the trainer's collator for the curriculum and add the data-position callbacks."""
    front = []
    if curriculum is not None:
        blocks_per_epoch = None if data.stream is not None else len(data.train)
        trainer.data_collator = CurriculumCollator(trainer.data_collator, curriculum, blocks_per_epoch)
        front.append(SequenceLengthCallback(trainer.data_collator))
    if len(data.names) > 1:
        blocks_per_epoch = None if data.stream is not None else len(data.train)
        front.append(SourceTokensCallback(data.names, data.weights, block_size, blocks_per_epoch))
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
