"""Sequence-length curriculum: shorter sequences early, the full block size later, tokens per batch constant.

Design: the data stays in full blocks of `block_size` tokens; at collate time a block becomes k = block_size / L
rows of L tokens, so a batch of B blocks is B·k rows of L: the same tokens, the same number of optimizer steps,
only shorter attention spans early. Which L applies is a pure function of the block's position in training, not of
a mutable "current step": a block's global index g (its `block_index`: the stream's block counter, or the position in
the training order over all epochs that `data.block_order` gives map-style data) belongs to optimizer step
g // blocks_per_step. The index travels with the block, so DataLoader workers (persistent or not), prefetching and
resuming all give every block the length of the step that trains on it, exactly.

Stage ends are given in steps or in tokens (each a count, or a fraction of the run when below 1) and resolved to
whole steps, so a batch never mixes two lengths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hf_pretrain.data.packing import block_document_lengths

DOCUMENT_LENGTHS = "document_lengths"
METADATA_COLUMNS = ("block_index", "source_id", DOCUMENT_LENGTHS)  # block bookkeeping, not model inputs
UNITS = ("steps", "tokens")


def check_curriculum(lengths: Sequence[int], ends: Sequence[float], unit: str, block_size: int) -> None:
    """Validate curriculum settings; messages name the DataArguments fields."""
    if len(lengths) != len(ends):
        raise ValueError(
            f"curriculum_lengths has {len(lengths)} entries but curriculum_ends has {len(ends)}: give one end per "
            "shorter length."
        )
    if unit not in UNITS:
        raise ValueError(f"curriculum_unit must be one of {UNITS}, got {unit!r}.")
    if not lengths:
        return
    if list(lengths) != sorted(set(lengths)) or lengths[0] < 1 or lengths[-1] >= block_size:
        raise ValueError(f"curriculum_lengths must increase and stay below block_size={block_size}, got {lengths}.")
    bad = [length for length in lengths if block_size % length]
    if bad:
        raise ValueError(f"curriculum_lengths {bad} do not divide block_size={block_size}: a block must split evenly.")
    fractions = [end < 1 for end in ends]
    if any(end <= 0 for end in ends) or (any(fractions) and not all(fractions)):
        raise ValueError(
            f"curriculum_ends must all be positive counts (>= 1) or all fractions of the run (< 1), got {ends}."
        )
    if list(ends) != sorted(set(ends)):
        raise ValueError(f"curriculum_ends must increase, got {ends}.")
    if not all(fractions) and any(end != int(end) for end in ends):
        raise ValueError(f"curriculum_ends given as counts must be whole numbers, got {ends}.")


@dataclass(frozen=True)
class SequenceLengthCurriculum:
    """Sequence length per optimizer step: `stages` are (first step, length), the last stage is `block_size`.

    >>> c = SequenceLengthCurriculum.build([128, 256], [0.25, 0.5], "steps", 512, blocks_per_step=8, total_steps=100)
    >>> c.stages, c.length_at_step(24), c.length_at_step(25), c.length_of_block(8 * 50)
    (((0, 128), (25, 256), (50, 512)), 128, 256, 512)
    """

    block_size: int
    blocks_per_step: int
    stages: tuple[tuple[int, int], ...]

    @classmethod
    def build(
        cls,
        lengths: Sequence[int],
        ends: Sequence[float],
        unit: str,
        block_size: int,
        blocks_per_step: int,
        total_steps: int,
    ) -> SequenceLengthCurriculum:
        check_curriculum(lengths, ends, unit, block_size)
        tokens_per_step = blocks_per_step * block_size
        end_steps = []
        for end in ends:
            if end < 1:
                end_steps.append(round(end * total_steps))
            elif unit == "tokens":
                end_steps.append(math.ceil(end / tokens_per_step))  # the step at which `end` tokens are reached
            else:
                end_steps.append(int(end))
        if end_steps[-1] > total_steps or end_steps[0] < 1 or end_steps != sorted(set(end_steps)):
            raise ValueError(
                f"curriculum_ends {list(ends)} ({unit}) resolve to steps {end_steps} of a {total_steps}-step run: "
                "each stage needs at least one step and the last must end within the run."
            )
        starts = [0, *end_steps]
        return cls(block_size, blocks_per_step, tuple(zip(starts, [*lengths, block_size])))

    def length_at_step(self, step: int) -> int:
        length = self.stages[0][1]
        for start, stage_length in self.stages:
            if step >= start:
                length = stage_length
        return length

    def length_of_block(self, global_block: int) -> int:
        return self.length_at_step(global_block // self.blocks_per_step)


def split_document_lengths(pieces: Sequence[int], length: int) -> list[list[int]]:
    """The `document_lengths` of a block cut into rows of `length` tokens: pieces that cross a row end are cut there.

    >>> split_document_lengths([3, 6, 3], 4)
    [[3, 1], [4], [1, 3]]
    """
    pieces = np.asarray(pieces, dtype=np.int64)
    total = int(pieces.sum())
    if total % length:
        raise ValueError(f"A block of {total} tokens does not split into rows of {length}.")
    return block_document_lengths(pieces, length, total // length).to_pylist()


class CurriculumCollator:
    """Wrap a collator: drop block bookkeeping columns, and split blocks by the curriculum.

    Features with a `block_index` (the global block index g) are split into rows of the curriculum length of step
    g // blocks_per_step; features without one (evaluation) pass whole. Each row keeps its block's `block_index`
    for a wrapped collator that reads per-block state (one with `set_masking_schedule`); the others never see it.
    With `documents=True` (document_attention: isolated) the blocks' `document_lengths` reach the wrapped collator,
    cut with the rows, so every row's pieces sum to its length; else they are dropped (shared attention).
    Settings that change during training are forwarded explicitly (`set_masking_schedule`, `mlm_probability`):
    reads of other attributes go to the wrapped collator, writes would stay on this wrapper.
    """

    def __init__(self, collator, curriculum: SequenceLengthCurriculum | None, documents: bool = False):
        self.collator = collator
        self.curriculum = curriculum
        self.documents = documents
        self._dropped = tuple(c for c in METADATA_COLUMNS if not (documents and c == DOCUMENT_LENGTHS))

    def __getattr__(self, name):  # the wrapped collator's settings (set_epoch, tokenizer, ...), read only
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)

    def set_masking_schedule(self, schedule, blocks_per_step: int) -> None:
        """Install a masking-rate schedule in the wrapped collator (see `DataCollatorForMaskedLM`)."""
        self.collator.set_masking_schedule(schedule, blocks_per_step)

    @property
    def mlm_probability(self):
        return self.collator.mlm_probability

    @mlm_probability.setter
    def mlm_probability(self, value) -> None:  # the rate of rows without a block index, set at every step
        self.collator.mlm_probability = value

    def split(self, features: Sequence[Mapping]) -> list[dict]:
        keep_index = hasattr(self.collator, "set_masking_schedule")
        rows = []
        for feature in features:
            inputs = {key: value for key, value in feature.items() if key not in self._dropped}
            index = feature.get("block_index")
            if index is not None and keep_index:
                inputs["block_index"] = int(index)
            if index is None or self.curriculum is None:
                rows.append(inputs)
                continue
            length = self.curriculum.length_of_block(int(index))
            ids = inputs.pop("input_ids")
            starts = range(0, len(ids), length)
            pieces = inputs.pop(DOCUMENT_LENGTHS, None)
            if pieces is None:
                rows.extend({**inputs, "input_ids": ids[start : start + length]} for start in starts)
            else:
                cut = split_document_lengths(pieces, length) if length < len(ids) else [list(pieces)]
                rows.extend(
                    {**inputs, "input_ids": ids[start : start + length], DOCUMENT_LENGTHS: row_pieces}
                    for start, row_pieces in zip(starts, cut)
                )
        return rows

    def __call__(self, features: Sequence[Mapping]):
        return self.collator(self.split(features))
