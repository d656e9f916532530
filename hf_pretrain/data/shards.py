"""Prepared data on disk: what `recipes/prepare_data.py` writes and training reads (`prepared_dataset_path`).

A prepared folder holds the training and validation blocks, `tokenizer/`, and `stats.json`, written last: a folder
without it is not a (complete) prepared dataset.
"""

from __future__ import annotations

import json
import os

from datasets import DatasetDict, load_from_disk

STATS_FILE = "stats.json"


def load_prepared(path: str) -> tuple[DatasetDict, dict]:
    """A prepared dataset (train [+ validation]) and its stats; errors name what is missing."""
    stats_path = os.path.join(path, STATS_FILE)
    if not os.path.isfile(stats_path):
        raise ValueError(
            f"prepared_dataset_path={path!r} has no {STATS_FILE}: prepare it with recipes/prepare_data.py."
        )
    with open(stats_path) as handle:
        stats = json.load(handle)
    splits = load_from_disk(path)
    if not isinstance(splits, DatasetDict) or "train" not in splits:
        raise ValueError(f"prepared_dataset_path={path!r} holds no 'train' split.")
    return splits, stats
