"""The final preparation stage (one task): the weighted mixture's training order computed from per-shard block
counts (no block is loaded), `index.json` + `train_order.npy`, and `stats.json` merged from every task's figures.

stats.json starts with `tokens`: per source, the tokens prepared (in training blocks) against the tokens the
mixture will train on, and the share discarded; a mixture that stops before any source repeats leaves part of the
larger sources unused, and that is said first, not hidden behind the packing efficiency.
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
from datatrove.pipeline.base import PipelineStep

from hf_pretrain.data import quality
from hf_pretrain.data.mixing import MixingSchedule, _source_order, normalize_weights
from hf_pretrain.data.pipeline_steps import read_json, write_json
from hf_pretrain.data.shards import write_index


def mixture_order(available, weights, names, num_blocks, seed) -> tuple[np.ndarray, dict]:
    """Global rows (n,) into the sources' blocks laid end to end, in training order, and per-source info: the same
    order as `mixing.mix_blocks` gives, from the block counts alone."""
    schedule = MixingSchedule(weights, names)
    for name, size in zip(names, available):
        if size == 0:
            raise ValueError(f"Source {name!r} has no block to mix: it is smaller than one block (or empty).")
    if num_blocks is None:
        num_blocks = schedule.blocks_until_exhausted(available)
    order = schedule.sources(0, num_blocks)
    counts = np.bincount(order, minlength=len(available))
    starts = np.concatenate([[0], np.cumsum(available)[:-1]]).astype(np.int64)
    rows = np.empty(num_blocks, dtype=np.int64)
    info = {}
    for j, name in enumerate(names):
        chosen = order == j
        rows[chosen] = starts[j] + _source_order(np.arange(counts[j]), available[j], j, seed)
        passes = math.ceil(counts[j] / available[j]) if counts[j] else 0
        info[name] = {"blocks_available": int(available[j]), "blocks_used": int(counts[j]), "passes": passes}
    return rows, info


class MixtureIndex(PipelineStep):
    """Training order, index and the merged stats.json (last)."""

    name = "🧮 mixture + stats"
    type = "📊 - STATS"

    def __init__(self, output: str, work: str, names: list[str], weights: list[float], tasks_per_source: int,
                 block_size: int, num_blocks, seed: int, config: dict):  # fmt: skip
        super().__init__()
        self.output, self.work, self.names, self.weights = output, work, names, weights
        self.tasks_per_source, self.block_size, self.num_blocks = tasks_per_source, block_size, num_blocks
        self.seed, self.config = seed, config

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from collections import deque

        from hf_pretrain.data.shards import STATS_FILE
        from hf_pretrain.data.tokenizer import load_tokenizer
        from hf_pretrain.run_layout import TOKENIZER_SUBDIR

        deque(data or (), maxlen=0)
        stats_dir = os.path.join(self.work, "stats")
        read = [read_json(p) for p in sorted(glob.glob(os.path.join(stats_dir, "read", "*.json")))]
        packed = [read_json(p) for p in sorted(glob.glob(os.path.join(stats_dir, "pack", "*.json")))]
        clusters = read_json(os.path.join(stats_dir, "clusters.json"))
        per_source = {name: _source_entry(weight) for name, weight in zip(self.names, self.weights)}
        for task in read:
            entry = per_source[self.names[task["source_id"]]]
            entry["documents"]["read"] += task["read"]
            entry["documents"]["after_filters"] += task["after_filters"]
            for reason, count in task["dropped"].items():
                entry["dropped"][reason] = entry["dropped"].get(reason, 0) + count
        for step, counts in clusters["removed_per_source"].items():
            if step not in clusters["duplicates"]:
                continue
            for name_id, name in enumerate(self.names):
                per_source[name]["dropped"][step] = counts.get(str(name_id), 0)
        shards = {"train": {}, "validation": {}}
        for task in packed:
            entry = per_source[self.names[task["source_id"]]]
            for split in shards:
                figures = task[split]
                entry["documents"][split] += figures["documents"]
                shards[split].update(figures["shards"])
                if split == "train":
                    for key in ("tokens", "tokens_in_blocks", "padded_tokens"):
                        entry["packing"][key] += figures[key]
        for name, entry in per_source.items():
            documents = entry["documents"]
            documents["after_exact_dedup"] = documents["after_filters"] - entry["dropped"].get("exact_duplicate", 0)
            documents["after_near_dedup"] = documents["after_exact_dedup"] - entry["dropped"].get("near_duplicate", 0)
            if documents["train"] + documents["validation"] == 0:
                raise ValueError(f"Source {name!r} has no document left after filtering and deduplication: {entry}.")
            packing = entry["packing"]
            packing["tokens_dropped"] = packing["tokens"] - packing["tokens_in_blocks"]
            packing["packing_efficiency"] = packing["tokens_in_blocks"] / max(packing["tokens"], 1)
            packing["padding_efficiency"] = packing["tokens"] / max(packing["padded_tokens"], 1)

        train_shards = sorted(shards["train"])
        train_rows = [shards["train"][s] for s in train_shards]
        available = [sum(shards["train"][s] for s in train_shards if s.startswith(f"train/s{j:03d}-"))
                     for j in range(len(self.names))]  # fmt: skip
        order, mixture = mixture_order(available, self.weights, self.names, self.num_blocks, self.seed)
        validation_shards = sorted(shards["validation"])
        write_index(self.output, train_shards, train_rows, order, validation_shards,
                     [shards["validation"][s] for s in validation_shards], self.block_size)  # fmt: skip

        weights = normalize_weights(self.weights, self.names)
        tokens, warnings = {}, []
        for (name, info), weight in zip(mixture.items(), weights):
            entry = per_source[name]
            entry["blocks"] = info
            entry["train_tokens_in_mixture"] = info["blocks_used"] * self.block_size
            entry["mixture_fraction"] = {"target": float(weight), "actual": info["blocks_used"] / max(len(order), 1)}
            prepared = info["blocks_available"] * self.block_size
            tokens[name] = {"prepared": prepared, "in_mixture": entry["train_tokens_in_mixture"],
                            "unused_share": 1 - min(entry["train_tokens_in_mixture"], prepared) / prepared,
                            "passes": info["passes"]}  # fmt: skip
            warnings += quality.filter_warnings(name, entry["documents"]["read"], entry["dropped"])
        totals = _totals(per_source, len(order), sum(shards["validation"].values()), self.block_size)
        tokenizer = load_tokenizer(os.path.join(self.output, TOKENIZER_SUBDIR))
        stats = {
            "tokens": tokens,
            "warnings": warnings,
            "output_dir": self.output,
            "block_size": self.block_size,
            "tokenizer": {"name_or_path": self.config.get("tokenizer_name_or_path"), "vocab_size": len(tokenizer)},
            "totals": totals,
            "duplicates": clusters["duplicates"],
            "sources": per_source,
            "mixture": {"names": self.names, "weights": [float(w) for w in weights], "order": "train_order.npy"},
            "config": self.config,
        }
        write_json(os.path.join(self.output, STATS_FILE), json.loads(json.dumps(stats, default=str)), sort_keys=False)
        return
        yield  # a generator step, as datatrove expects


def _source_entry(weight: float) -> dict:
    return {
        "weight": weight,
        "documents": {"read": 0, "after_filters": 0, "train": 0, "validation": 0},
        "dropped": {},
        "packing": {"tokens": 0, "tokens_in_blocks": 0, "padded_tokens": 0},
    }


def _totals(per_source: dict, train_blocks: int, validation_blocks: int, block_size: int) -> dict:
    tokenized = sum(e["packing"]["tokens"] for e in per_source.values())
    return {
        "documents_in": sum(e["documents"]["read"] for e in per_source.values()),
        "documents_out": sum(e["documents"]["train"] + e["documents"]["validation"] for e in per_source.values()),
        "train_blocks": train_blocks,
        "train_tokens": train_blocks * block_size,
        "validation_blocks": validation_blocks,
        "tokens_tokenized": tokenized,
        "packing_efficiency": sum(e["packing"]["tokens_in_blocks"] for e in per_source.values()) / max(tokenized, 1),
        "padding_baseline_efficiency": tokenized
        / max(sum(e["packing"]["padded_tokens"] for e in per_source.values()), 1),
    }
