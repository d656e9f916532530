"""The last two preparation stages: pack each task's documents into shards, then the mixture order, index and
stats.json of the whole dataset (written last: its presence marks the dataset complete).

Shards are `datasets.Dataset.save_to_disk` folders `train/s{source:03d}-t{shard:05d}-c{chunk:04d}` (and
`validation/...`) with `input_ids` (block_size int32), `document_lengths` (int32, summing to block_size) and
`source_id` (int16); names sort in canonical order (source, task, chunk). A task packs its documents in chunks of
SHARD_DOCUMENTS, carrying the tokens that do not fill a block over to the next chunk, so its memory is bounded
and only the task's last partial block is dropped.
"""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pyarrow as pa
from datasets import Dataset
from datasets.table import InMemoryTable
from datatrove.pipeline.base import PipelineStep

from hf_pretrain.data.pipeline_steps import SHARD_DOCUMENTS, is_validation, write_json

SPLITS = ("train", "validation")


class ShardPacker:
    """Tokenize + pack one split of one task, chunk by chunk (`hf_pretrain.data.packing`), writing shards."""

    def __init__(self, output: str, split: str, stem: str, tokenizer, block_size: int, source_id: int):
        self.output, self.split, self.stem, self.tokenizer = output, split, stem, tokenizer
        self.block_size, self.source_id = block_size, source_id
        self.carry: list[np.ndarray] = []  # document pieces not yet in a block
        self.chunk = 0
        self.figures = {"documents": 0, "tokens": 0, "tokens_in_blocks": 0, "padded_tokens": 0, "shards": {}}

    def add(self, texts: list[str]) -> None:
        from hf_pretrain.data.packing import encode_documents, pack_blocks

        flat, lengths = encode_documents(self.tokenizer, texts)
        self.figures["documents"] += len(texts)
        self.figures["tokens"] += int(lengths.sum())
        self.figures["padded_tokens"] += int((-(-lengths // self.block_size) * self.block_size).sum())
        pieces = self.carry + np.split(flat, np.cumsum(lengths)[:-1])
        sizes = np.asarray([len(p) for p in pieces], dtype=np.int64)
        total = int(sizes.sum())
        blocks = total // self.block_size
        if blocks:
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
            ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(pieces), type=pa.int32()))
            documents = Dataset(InMemoryTable(pa.table({"input_ids": ids})))
            packed = pack_blocks(documents, self.block_size, document_lengths=True).data.table
            packed = packed.append_column("source_id", pa.array(np.full(blocks, self.source_id, dtype=np.int16)))
            self._write(packed)
        # the tail past the last full block: the last pieces, the first one possibly cut
        ends = np.cumsum(sizes)
        tail_start = blocks * self.block_size
        self.carry = [
            piece[max(0, tail_start - (end - len(piece))) :] for piece, end in zip(pieces, ends) if end > tail_start
        ]

    def _write(self, table: pa.Table) -> None:
        name = f"{self.stem}-c{self.chunk:04d}"
        final = os.path.join(self.output, self.split, name)
        shutil.rmtree(f"{final}.tmp", ignore_errors=True)
        Dataset(InMemoryTable(table), fingerprint=name).save_to_disk(f"{final}.tmp")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(f"{final}.tmp", final)
        self.figures["tokens_in_blocks"] += len(table) * self.block_size
        self.figures["shards"][f"{self.split}/{name}"] = len(table)
        self.chunk += 1


class PackShards(PipelineStep):
    """Validation split (by each document's own text), tokenization and packing of one task into shards; the
    task's figures go to `{stats_folder}/{rank:05d}.json`."""

    name = "📦 pack shards"
    type = "🔢 - TOKENIZER"

    def __init__(self, output: str, stats_folder: str, block_size: int, tasks_per_source: int, fraction, seed):
        super().__init__()
        self.output, self.stats_folder, self.block_size = output, stats_folder, block_size
        self.tasks_per_source, self.fraction, self.seed = tasks_per_source, fraction, seed

    def run(self, data, rank: int = 0, world_size: int = 1):
        from hf_pretrain.data.tokenizer import load_tokenizer
        from hf_pretrain.run_layout import TOKENIZER_SUBDIR

        tokenizer = load_tokenizer(os.path.join(self.output, TOKENIZER_SUBDIR))
        source_id, shard = divmod(rank, self.tasks_per_source)
        stem = f"s{source_id:03d}-t{shard:05d}"
        for split in SPLITS:  # a rerun of a killed task starts its shards afresh
            for path in glob.glob(os.path.join(self.output, split, f"{stem}-c*")):
                shutil.rmtree(path)
        packers = {s: ShardPacker(self.output, s, stem, tokenizer, self.block_size, source_id) for s in SPLITS}
        pending = {split: [] for split in SPLITS}
        for document in data:
            split = "validation" if is_validation(document.text, self.fraction, self.seed) else "train"
            pending[split].append(document.text)
            if len(pending[split]) == SHARD_DOCUMENTS:
                packers[split].add(pending[split])
                pending[split] = []
        for split in SPLITS:
            if pending[split]:
                packers[split].add(pending[split])
        write_json(
            os.path.join(self.stats_folder, f"{rank:05d}.json"),
            {"source_id": source_id, **{split: packer.figures for split, packer in packers.items()}},
        )
        return
        yield  # a generator step, as datatrove expects
