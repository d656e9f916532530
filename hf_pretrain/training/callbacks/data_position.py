"""Where training stands in its data: tokens seen per source in the logs, a stream's position in checkpoints,
and the sequence length of the curriculum in the logs.

All three rest on one fact: the Trainer consumes `per_device_train_batch_size · gradient_accumulation_steps ·
world_size` blocks per optimizer step, in training order. So after global step s the first s · that many blocks
were trained on, whatever DataLoader workers have prefetched, and the mixing schedule, the stream's recorded
positions and the curriculum are functions of that block count. The collators need no callback: every block
carries its global index (`hf_pretrain.data.block_order`), and its step is that index // blocks per step.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_pretrain.data.mixing import MixingSchedule
from hf_pretrain.data.training_data import blocks_per_step


def _prepend_log(state, logs: dict, values: dict) -> None:
    """Add values to this log and to its entry in `state.log_history` (already appended by `Trainer.log`)."""
    logs.update(values)
    if state.log_history and state.log_history[-1].get("step") == state.global_step:
        state.log_history[-1].update(values)


class SourceTokensCallback(TrainerCallback):
    """Log `tokens_seen/<source>` at every training log: tokens trained on from each source of a mixture.

    Exact for data consumed in mixing order (a `MixedBlockStream`, or a prepared mixture read sequentially);
    `blocks_per_epoch` wraps around for prepared data read more than once. Add it first in the callback list so
    reporters (TensorBoard, W&B, the printer) see the values.

    >>> from types import SimpleNamespace
    >>> callback = SourceTokensCallback(["web", "code"], [3, 1], block_size=100)
    >>> args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=2, world_size=1)
    >>> logs = {"loss": 1.0}
    >>> _ = callback.on_log(args, SimpleNamespace(global_step=10, log_history=[]), None, logs=logs)
    >>> logs
    {'loss': 1.0, 'tokens_seen/web': 3000, 'tokens_seen/code': 1000}
    """

    def __init__(
        self,
        names: Sequence[str],
        weights: Sequence[float],
        block_size: int,
        blocks_per_epoch: int | None = None,
        tokens_of_rows=None,
    ):
        self.names = list(names)
        self.schedule = MixingSchedule(weights, names)
        self.block_size = block_size
        self.blocks_per_epoch = blocks_per_epoch
        # rows -> tokens per source (S,), for rows of unequal length (packing: false), where counts x block_size
        # would be wrong: `hf_pretrain.data.mixing.tokens_per_source` over the mixture itself.
        self.tokens_of_rows = tokens_of_rows

    def tokens_after(self, blocks: int) -> dict[str, int]:
        if self.tokens_of_rows is not None:
            return {f"tokens_seen/{name}": int(t) for name, t in zip(self.names, self.tokens_of_rows(blocks))}
        counts = self.schedule.counts(blocks) if not self.blocks_per_epoch else None
        if counts is None:
            epochs, rest = divmod(blocks, self.blocks_per_epoch)
            counts = epochs * self.schedule.counts(self.blocks_per_epoch) + self.schedule.counts(rest)
        return {f"tokens_seen/{name}": int(c) * self.block_size for name, c in zip(self.names, counts)}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            _prepend_log(state, logs, self.tokens_after(state.global_step * blocks_per_step(args)))
        return control


def _find_stream(loader, depth: int = 4):
    """The `MixedBlockStream` behind a (possibly accelerate-wrapped) DataLoader, or None."""
    from hf_pretrain.data.streaming import MixedBlockStream

    for _ in range(depth):
        if loader is None or isinstance(loader, MixedBlockStream):
            return loader
        loader = getattr(loader, "dataset", None) or getattr(loader, "base_dataloader", None)
    return loader if isinstance(loader, MixedBlockStream) else None


class StreamPositionCallback(TrainerCallback, ExportableState):
    """Record in every checkpoint where each source of a `MixedBlockStream` stands after the last trained block.

    The position goes to `trainer_state.json` (`stateful_callbacks`); `stream_position_from_checkpoint` reads it
    back and `MixedBlockStream.load_state_dict` resumes there (with `ignore_data_skip`, so the Trainer does not
    also skip batches). Constructed without arguments, so the Trainer can rebuild it from a checkpoint.
    """

    def __init__(self):
        self.position = None

    def state(self) -> dict:
        return {"args": {}, "attributes": {"position": self.position}}

    def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
        stream = _find_stream(train_dataloader)
        if stream is not None and state.is_world_process_zero:  # the process that produces (and saves) the stream
            self.position = stream.position(state.global_step * blocks_per_step(args))
        return control


class SequenceLengthCallback(TrainerCallback):
    """Log `sequence_length`: the curriculum length of the logged steps. A `CurriculumCollator` applies it to each
    block from the block's own global index; nothing needs setting from here."""

    def __init__(self, collator):
        self.collator = collator

    def on_log(self, args, state, control, logs=None, **kwargs):
        curriculum = self.collator.curriculum
        if logs is not None and "loss" in logs and curriculum is not None:
            step = max(state.global_step - 1, 0)  # a training log at step s averages steps up to s - 1
            _prepend_log(state, logs, {"sequence_length": curriculum.length_at_step(step)})
        return control
