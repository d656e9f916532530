"""The sharded prepared format (hf_pretrain.data.shards): written with write_index, read back in training order,
memory-mapped with flat memory, and trained on by the recipe with exact per-source tokens and exact resume."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
from _runs import pretrain
from datasets import Dataset, Features, List, Value

from hf_pretrain.data import shards as shards_module
from hf_pretrain.data.block_order import BlockOrderDataset
from hf_pretrain.data.mixing import MixingSchedule
from hf_pretrain.data.shards import INDEX_FILE, ORDER_FILE, OrderTable, load_prepared, write_index

FEATURES = Features(
    {"input_ids": List(Value("int32")), "document_lengths": List(Value("int32")), "source_id": Value("int16")}
)
NAMES, WEIGHTS = ["code", "web"], [1, 3]


def write_shard(folder, first_row: int, rows: int, source: int, block_size: int) -> None:
    """`rows` blocks whose tokens spell their global row: token 0 is 10 + row % 300, token 1 is 10 + row // 300."""
    ids = np.full((rows, block_size), 7, dtype=np.int32)
    ids[:, 0] = 10 + (np.arange(first_row, first_row + rows) % 300)
    ids[:, 1] = 10 + (np.arange(first_row, first_row + rows) // 300)
    cut = block_size // 3
    table = pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(np.arange(0, ids.size + 1, block_size, dtype=np.int32), ids.ravel()),
            "document_lengths": pa.array([[cut, block_size - cut]] * rows, pa.list_(pa.int32())),
            "source_id": pa.array(np.full(rows, source, dtype=np.int16)),
        }
    )
    Dataset(table.cast(FEATURES.arrow_schema)).save_to_disk(str(folder))


def row_of(block) -> int:
    return (block[0] - 10) + 300 * (block[1] - 10)


def make_prepared(folder, block_size=32, shards=(("code", 2, 15), ("web", 3, 20)), tokenizer=None, seed=0):
    """Shards per source (name, count, rows each), a validation shard, and an order that follows MixingSchedule
    (what SourceTokensCallback counts), each source's blocks in a seeded shuffle. Returns (order, rows per source)."""
    train_shards, train_rows, by_source, first = [], [], {}, 0
    for source, (name, count, rows) in enumerate(shards):
        for k in range(count):
            relative = f"train/{name}-{k:05d}"
            write_shard(os.path.join(folder, relative), first, rows, source, block_size)
            train_shards.append(relative)
            train_rows.append(rows)
            by_source.setdefault(source, []).extend(range(first, first + rows))
            first += rows
    write_shard(os.path.join(folder, "validation/all-00000"), 0, 6, 0, block_size)
    schedule = MixingSchedule([WEIGHTS[NAMES.index(name)] for name, _, _ in shards], [n for n, _, _ in shards])
    available = [len(by_source[s]) for s in range(len(shards))]
    length = schedule.blocks_until_exhausted(available)
    rng = np.random.default_rng(seed)
    owners = schedule.sources(0, length)
    order = np.empty(length, dtype=np.int64)
    for s, rows in by_source.items():  # source s supplies its k-th shuffled block at its k-th slot
        slots = np.flatnonzero(owners == s)
        order[slots] = rng.permutation(rows)[: len(slots)]
    write_index(folder, train_shards, train_rows, order, ["validation/all-00000"], [6], block_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    stats = {"block_size": block_size, "mixture": {"names": [n for n, _, _ in shards], "weights": WEIGHTS}}
    with open(os.path.join(folder, "stats.json"), "w") as handle:
        json.dump(stats, handle)
    return order


def test_round_trip_reads_the_blocks_in_training_order(tmp_path):
    order = make_prepared(tmp_path)
    splits, stats = load_prepared(str(tmp_path))
    train = splits["train"]
    assert len(train) == len(order) and stats["block_size"] == 32
    assert [row_of(block) for block in train["input_ids"]] == order.tolist()  # row k is the row the order names
    assert [row_of(b["input_ids"]) for b in train.__getitems__([3, 0, 5])] == order[[3, 0, 5]].tolist()
    assert train.column_names == ["input_ids", "document_lengths", "source_id"]
    assert all(sum(lengths) == 32 for lengths in train["document_lengths"])
    assert [int(s) for s in train["source_id"]] == [int(o >= 30) for o in order]  # code rows 0-29, web 30-89
    assert len(splits["validation"]) == 6
    assert isinstance(train._indices, OrderTable)
    again = pickle.loads(pickle.dumps(train))  # DataLoader workers under spawn: the path travels, not the rows
    assert len(pickle.dumps(train._indices)) < 500 and again["input_ids"] == train["input_ids"]


def test_the_order_is_a_zero_copy_view_of_the_file(tmp_path):
    order = np.random.default_rng(0).permutation(2_000_000)
    np.save(tmp_path / ORDER_FILE, order)
    before = pa.total_allocated_bytes()
    table = OrderTable(str(tmp_path / ORDER_FILE))
    assert pa.total_allocated_bytes() - before < 1 << 16  # 16 MB of indices, none of it copied into Arrow's pool
    assert table.column(0)[123_456].as_py() == order[123_456]


def test_write_index_refuses_a_bad_order(tmp_path):
    write_shard(tmp_path / "train/a", 0, 4, 0, 8)
    with pytest.raises(ValueError, match="repeats a block"):
        write_index(tmp_path, ["train/a"], [4], [0, 1, 1], [], [], 8)
    with pytest.raises(ValueError, match="outside"):
        write_index(tmp_path, ["train/a"], [4], [0, 4], [], [], 8)
    with pytest.raises(ValueError, match="blocks would repeat"):
        write_index(tmp_path, ["train/a"], [4], [0, 1, 2, 3, 0], [], [], 8)
    with pytest.raises(ValueError, match="does not exist"):
        write_index(tmp_path, ["train/a", "train/b"], [4, 4], [0], [], [], 8)
    with pytest.raises(ValueError, match="relative"):
        write_index(tmp_path, ["../a"], [4], [0], [], [], 8)
    assert not os.path.exists(tmp_path / INDEX_FILE)
    write_index(tmp_path, ["train/a"], [4], [2, 0], [], [], 8)  # a subset: the mixture stops before repeating
    assert np.load(tmp_path / ORDER_FILE).tolist() == [2, 0]
    assert sorted(os.listdir(tmp_path)) == [INDEX_FILE, "train", ORDER_FILE]  # no temporary file left behind


def test_errors_name_the_path_and_what_to_do(tmp_path):
    make_prepared(tmp_path)
    index_path = tmp_path / INDEX_FILE
    index = json.loads(index_path.read_text())

    def load_with(**changes):
        index_path.write_text(json.dumps({**index, **changes}))
        load_prepared(str(tmp_path))

    with pytest.raises(ValueError, match=r"code-00000.? has 15 rows, index.json says 16"):
        load_with(train_rows=[16, *index["train_rows"][1:]])
    with pytest.raises(ValueError, match="block_size 64, stats.json 32"):
        load_with(block_size=64)
    with pytest.raises(ValueError, match="web-00009.* is missing"):
        load_with(train_shards=[*index["train_shards"][:-1], "train/web-00009"])
    with pytest.raises(ValueError, match="order .*nope.npy.* is missing"):
        load_with(order_file="nope.npy")
    with pytest.raises(ValueError, match="holds blocks of 32, index.json says 16"):
        stats = {"block_size": 16}
        (tmp_path / "stats.json").write_text(json.dumps(stats))
        load_with(block_size=16)
    os.remove(index_path)
    with pytest.raises(ValueError, match=f"{tmp_path}.* has no index.json: prepare it again"):
        load_prepared(str(tmp_path))


_RSS_PROBE = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("shards", sys.argv[2])  # the module alone: no transformers import
shards = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shards)
train = shards.load_prepared(sys.argv[1])[0]["train"]
loader = torch.utils.data.DataLoader(train.with_format("torch"), batch_size=16)
for i, batch in zip(range(20), loader):
    pass
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon")))
"""


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """Private (anonymous) RSS after loading and reading 320 blocks: 16x the shards (1M blocks, an 8 MB order) vs 1x.
    File-backed RSS is left out: pages of the memory-mapped shards that the kernel maps around each record batch
    header read at load (tiny 8-token blocks make that most of the file here); they are page cache, reclaimable."""
    peaks = []
    for scale in (1, 16):
        folder = tmp_path / f"x{scale}"
        make_prepared(folder, block_size=8, shards=(("code", scale, 16_000), ("web", 3 * scale, 16_000)))
        probe = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_RSS_PROBE), str(folder), shards_module.__file__],
            capture_output=True,
            text=True,
        )
        assert probe.returncode == 0, probe.stderr[-2000:]
        peaks.append(int(probe.stdout.split()[-1]))
        shutil.rmtree(folder)
    assert peaks[1] - peaks[0] < 8 * 1024, peaks  # KiB (measured: 3.5 MB, the metadata of 60 more shards)


RUN = [
    "--model_preset", "llama-tiny", "--block_size", "32", "--per_device_train_batch_size", "4",
    "--learning_rate", "3e-3", "--logging_steps", "1", "--seed", "0", "--eval_strategy", "no", "--report_to", "none",
    "--max_steps", "8", "--save_steps", "4", "--dataloader_num_workers", "0",
]  # fmt: skip


def test_training_reads_the_shards_and_resumes_on_the_next_block(tmp_path, tokenizer, monkeypatch):
    prepared = tmp_path / "prepared"
    order = make_prepared(prepared, tokenizer=tokenizer)
    reads = []  # (block_index, row of the shards) of every block the trainer reads, in order
    original = BlockOrderDataset.__getitems__

    def recording(self, indices):
        features = original(self, indices)
        reads.extend((f["block_index"], row_of(f["input_ids"])) for f in features)
        return features

    monkeypatch.setattr(BlockOrderDataset, "__getitems__", recording)
    run = [*RUN, "--prepared_dataset_path", str(prepared)]
    full_dir, resumed_dir = str(tmp_path / "full"), str(tmp_path / "resumed")
    pretrain.main([*run, "--output_dir", full_dir])
    full_reads, reads[:] = reads[:32], []  # accelerate's loader reads one batch ahead: a fifth batch is read, unused
    assert full_reads == [(g, int(order[g])) for g in range(32)]  # 8 steps x 4 blocks, in the prepared order
    logs = [entry for entry in json.loads((tmp_path / "full/trainer_state.json").read_text())["log_history"]
            if "loss" in entry]  # fmt: skip
    sources = np.array([int(row >= 30) for _, row in full_reads]).reshape(8, 4)  # code rows 0-29, web 30-89
    assert [e["tokens_seen/web"] for e in logs] == (np.cumsum(sources.sum(1)) * 32).tolist()
    assert [e["tokens_seen/code"] for e in logs] == (np.cumsum(4 - sources.sum(1)) * 32).tolist()
    assert logs[-1]["tokens_seen/web"] == 3 * logs[-1]["tokens_seen/code"]  # the 3:1 mixture

    pretrain.main([*run, "--output_dir", resumed_dir])  # the same run, then "interrupted" after checkpoint-4
    reads[:] = []
    for name in os.listdir(resumed_dir):
        if name not in ("checkpoint-4", "tokenizer"):
            path = os.path.join(resumed_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    pretrain.main([*run, "--output_dir", resumed_dir, "--resume_from_checkpoint", "true"])
    assert reads[:16] == full_reads[16:]  # the 16 skipped blocks are never read: the first read is block 16
    resumed = [entry for entry in json.loads((tmp_path / "resumed/trainer_state.json").read_text())["log_history"]
               if "loss" in entry]  # fmt: skip
    assert [e["loss"] for e in resumed] == pytest.approx([e["loss"] for e in logs], rel=1e-5)
    assert [e["tokens_seen/web"] for e in resumed] == [e["tokens_seen/web"] for e in logs]
