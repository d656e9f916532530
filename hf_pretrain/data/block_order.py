"""Every training block carries its global block index: its position in the run's training order over all epochs.

State that changes during training (the curriculum's sequence length, a masking-rate schedule) is a function of
the optimizer step, and the step of block g is `g // blocks_per_step`. The index travels with the sample, so no
attribute set from a callback has to reach DataLoader workers: persistent workers, any number of them, prefetching
and a resumed run (the Trainer skips the trained batches of the epoch) all give a block the state of its step.

- A `MixedBlockStream` numbers its blocks itself (`block_index`: the stream's running block counter).
- Map-style data (a `datasets.Dataset` of N blocks) is wrapped in a `BlockOrderDataset`, and the Trainer's train
  sampler (sequential, or shuffled per epoch) in a `BlockOrderSampler`. The sampler runs in the main process and
  knows its epoch (accelerate's `DataLoaderShard.set_epoch` sets it); for the p-th block it hands out in epoch e
  it yields `(g, row)`: g = e · stride + p and the row its inner sampler chose. The stride is the epoch's blocks
  rounded up to whole optimizer steps (`epoch_stride`), so `g // blocks_per_step` is the global step also when
  the last step of an epoch is partial; it is N when N is a multiple of the blocks per step.

>>> import torch
>>> rows = [{"input_ids": [10 * i]} for i in range(6)]  # 6 blocks, 4 per optimizer step: stride 8
>>> sampler = BlockOrderSampler(torch.utils.data.SequentialSampler(rows), num_blocks=6, epoch_stride=8)
>>> sampler.set_epoch(1)
>>> dataset = BlockOrderDataset(rows)
>>> [dataset[index] for index in list(sampler)[:2]]
[{'input_ids': [0], 'block_index': 8}, {'input_ids': [10], 'block_index': 9}]
>>> [g // 4 for g, _ in sampler]  # the global step of each block: steps 2 and 3 are epoch 1
[2, 2, 2, 2, 3, 3]
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import RandomSampler, Sampler

BLOCK_INDEX = "block_index"


class BlockOrderDataset(torch.utils.data.Dataset):
    """A map-style dataset of N blocks whose rows carry `block_index`: the global index they are asked for by.

    `dataset[(g, row)]` is row `row` with `block_index: g` (what `BlockOrderSampler` asks for); `dataset[g]` for a
    plain int is row `g % N`. A torch Dataset: the Trainer removes no columns from it (only from a
    `datasets.Dataset`); the collator chain drops the block bookkeeping (`curriculum.METADATA_COLUMNS`).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _locate(self, index) -> tuple[int, int]:
        if isinstance(index, tuple | list):
            return int(index[0]), int(index[1])
        return int(index), int(index) % len(self.dataset)

    def __getitem__(self, index) -> dict:
        g, row = self._locate(index)
        return {**self.dataset[row], BLOCK_INDEX: g}

    def __getitems__(self, indices) -> list[dict]:  # one batched read (a datasets.Dataset reads rows in one go)
        located = [self._locate(index) for index in indices]
        rows = [row for _, row in located]
        many = getattr(self.dataset, "__getitems__", None)
        features = many(rows) if many is not None else [self.dataset[row] for row in rows]
        return [{**feature, BLOCK_INDEX: g} for feature, (g, _) in zip(features, located)]


class BlockOrderSampler(Sampler):
    """Wrap a sampler over the N rows of one epoch: yield `(g, row)` with g = epoch · `epoch_stride` + position."""

    def __init__(self, sampler, num_blocks: int, epoch_stride: int | None = None):
        if epoch_stride is not None and epoch_stride < num_blocks:
            raise ValueError(f"epoch_stride={epoch_stride} is below the {num_blocks} blocks of an epoch.")
        self.sampler = sampler
        self.num_blocks = num_blocks
        self.epoch_stride = epoch_stride or num_blocks
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):  # e.g. a seeded shuffle: the permutation of this epoch
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first = self.epoch * self.epoch_stride
        for position, row in enumerate(self.sampler):
            yield first + position, int(row)


def epoch_stride(num_blocks: int, args) -> int:
    """Global indices per epoch: the epoch's optimizer steps (as the Trainer counts them) times the blocks per step."""
    per_batch = args.per_device_train_batch_size * args.world_size
    batches = num_blocks // per_batch if args.dataloader_drop_last else math.ceil(num_blocks / per_batch)
    steps = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    return max(steps * per_batch * args.gradient_accumulation_steps, num_blocks)


def block_order_sampler(sampler, dataset, args):
    """The Trainer's train sampler for `dataset`, wrapped when the dataset is a `BlockOrderDataset`.

    A random sampler becomes a seeded shuffle (seed `data_seed`, else `seed`, plus the epoch: accelerate's
    `SeedableRandomSampler`, which accelerate cannot substitute inside the wrapper itself), so every process of a
    data-parallel run and a resumed run draw the same permutation of each epoch.
    """
    if not isinstance(dataset, BlockOrderDataset) or sampler is None:
        return sampler
    if getattr(args, "train_sampling_strategy", None) == "batch_rebalance":  # a batch sampler, nothing to wrap
        raise ValueError(
            "train_sampling_strategy='batch_rebalance' batches by length; training blocks are all of one length: "
            "use 'random' or 'sequential'."
        )
    if type(sampler) is RandomSampler:
        from accelerate.data_loader import SeedableRandomSampler

        seed = args.data_seed if args.data_seed is not None else args.seed
        sampler = SeedableRandomSampler(
            data_source=sampler.data_source, replacement=sampler.replacement, data_seed=seed
        )
    return BlockOrderSampler(sampler, len(dataset), epoch_stride(len(dataset), args))
