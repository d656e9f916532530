"""Read what `ExportableState` callbacks stored in a checkpoint, without building a Trainer."""

from __future__ import annotations

import json
import os

TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME


def stored_callback_args(checkpoint_dir: str | os.PathLike, callback_name: str) -> list[dict]:
    """The non-empty `args` of every `callback_name` state in `checkpoint_dir/trainer_state.json`.

    [] when the checkpoint has no trainer state or no such callback. A checkpoint folder that does not exist is an
    error: a typo must not silently start a run from fresh arguments.
    """
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"No checkpoint folder {os.fspath(checkpoint_dir)!r}.")
    path = os.path.join(checkpoint_dir, TRAINER_STATE_NAME)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        stored = (json.load(handle).get("stateful_callbacks") or {}).get(callback_name)
    # Several callbacks of one class are stored as a list (and the Trainer appends to it at every save).
    entries = stored if isinstance(stored, list) else [stored] if stored else []
    return [entry["args"] for entry in entries if any(v is not None for v in (entry.get("args") or {}).values())]
