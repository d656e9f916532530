"""The training side of sharded prepared data (hf_pretrain.data.shards): peak memory at 1x and 16x the corpus,
and read throughput against the earlier layout (one `save_to_disk` dataset, already in training order).

Run from the repository root: `python benchmarks/shards.py [--blocks 20000] [--block_size 512] [--rounds 5]`.

Synthetic shards: two sources (1:3), shards of `--shard_rows` blocks, random token ids and two documents per
block; 1x is `--blocks` blocks, 16x sixteen times as many shards. The order is the 1:3 mixture, each source's
blocks shuffled (as preparation writes it). Memory is measured in a fresh process per scale: load, then read
`--read` blocks through a DataLoader (batch 16), then VmHWM (peak RSS), RssAnon (private) and RssFile (mapped
shard pages, page cache the kernel can reclaim). Throughput reads the first `--throughput_blocks` blocks of the
1x training order through the same DataLoader from the shards and from the baseline, interleaved round by round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table, interleaved_medians  # noqa: E402

from hf_pretrain.data.mixing import MixingSchedule  # noqa: E402
from hf_pretrain.data.shards import load_prepared, write_index  # noqa: E402


def _shard(folder: str, rows: int, source: int, block_size: int, rng) -> None:
    from datasets import Dataset

    ids = rng.integers(0, 32_000, size=rows * block_size, dtype=np.int32)
    cut = block_size // 3
    table = pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(np.arange(0, ids.size + 1, block_size, dtype=np.int32), ids),
            "document_lengths": pa.array([[cut, block_size - cut]] * rows, pa.list_(pa.int32())),
            "source_id": pa.array(np.full(rows, source, dtype=np.int16)),
        }
    )
    Dataset(table).save_to_disk(folder)


def make_prepared(folder: str, blocks: int, shard_rows: int, block_size: int, seed: int = 0) -> None:
    """A sharded prepared folder of `blocks` blocks (a quarter 'code', the rest 'web')."""
    rng = np.random.default_rng(seed)
    shards, rows, by_source, first = [], [], {0: [], 1: []}, 0
    for source, name, total in ((0, "code", blocks // 4), (1, "web", blocks - blocks // 4)):
        for k, start in enumerate(range(0, total, shard_rows)):
            count = min(shard_rows, total - start)
            _shard(os.path.join(folder, f"train/{name}-{k:05d}"), count, source, block_size, rng)
            shards.append(f"train/{name}-{k:05d}")
            rows.append(count)
            by_source[source].extend(range(first, first + count))
            first += count
    schedule = MixingSchedule([1, 3], ["code", "web"])
    owners = schedule.sources(0, schedule.blocks_until_exhausted([len(by_source[0]), len(by_source[1])]))
    order = np.empty(len(owners), dtype=np.int64)
    for source, source_rows in by_source.items():
        slots = np.flatnonzero(owners == source)
        order[slots] = rng.permutation(source_rows)[: len(slots)]
    write_index(folder, shards, rows, order, [], [], block_size)
    with open(os.path.join(folder, "stats.json"), "w") as handle:
        handle.write(f'{{"block_size": {block_size}, "mixture": {{"names": ["code", "web"], "weights": [1, 3]}}}}')


_PROBE = """
import sys, torch
from hf_pretrain.data.shards import load_prepared
train = load_prepared(sys.argv[1])[0]["train"]
loader = torch.utils.data.DataLoader(train.with_format("torch"), batch_size=16)
for _, batch in zip(range(int(sys.argv[2]) // 16), loader):
    pass
status = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(("Vm", "Rss"))}
print(status["VmHWM"], status["RssAnon"], status["RssFile"], len(train))
"""


def peak_memory(folder: str, read: int) -> tuple[int, int, int, int]:
    """(VmHWM, RssAnon, RssFile) in KiB and the training blocks, of a fresh process loading and reading `folder`."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PROBE), folder, str(read)], capture_output=True, text=True, check=True
    )
    return tuple(int(v) for v in done.stdout.split()[-4:])


def reader(dataset, blocks: int):
    import torch

    loader = torch.utils.data.DataLoader(dataset.with_format("torch"), batch_size=16)

    def read():
        for _ in zip(range(blocks // 16), loader):
            pass

    return read


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=20_000)
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--shard_rows", type=int, default=2_500)
    parser.add_argument("--read", type=int, default=400)
    parser.add_argument("--throughput_blocks", type=int, default=2_048)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="shards-bench-")
    try:
        rows = []
        for scale in (1, 16):
            folder = os.path.join(root, f"x{scale}")
            make_prepared(folder, scale * args.blocks, args.shard_rows, args.block_size)
            hwm, anon, mapped, n = peak_memory(folder, args.read)
            rows.append([f"{scale}x shards", n, len(os.listdir(os.path.join(folder, "train"))), hwm >> 10, anon >> 10,
                         mapped >> 10])  # fmt: skip
            if scale != 1:
                shutil.rmtree(folder)
        print(f"Training-side reader: load, then {args.read} blocks of {args.block_size} through a DataLoader (MiB)")
        print(format_table(["data", "blocks", "shards", "peak RSS", "RssAnon", "RssFile"], rows))

        sharded = load_prepared(os.path.join(root, "x1"))[0]["train"]
        baseline_dir = os.path.join(root, "baseline")  # the earlier layout: the same blocks, in order, one dataset
        sharded.select(range(args.throughput_blocks)).flatten_indices().save_to_disk(baseline_dir)
        from datasets import load_from_disk

        baseline = load_from_disk(baseline_dir)
        assert baseline[5]["input_ids"] == sharded[5]["input_ids"]
        base_s, ours_s = interleaved_medians(
            [reader(baseline, args.throughput_blocks), reader(sharded, args.throughput_blocks)],
            rounds=args.rounds,
            warmup=1,
        )
        print(f"\nRead throughput, the first {args.throughput_blocks} blocks of the training order (blocks/s)")
        print(
            format_table(
                ["reader", "blocks/s", "vs baseline"],
                [
                    ["baseline: one save_to_disk dataset", f"{args.throughput_blocks / base_s:,.0f}", "1.00x"],
                    ["shards + train_order.npy", f"{args.throughput_blocks / ours_s:,.0f}", f"{base_s / ours_s:.2f}x"],
                ],
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
