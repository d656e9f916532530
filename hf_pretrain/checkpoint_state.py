"""Everything read back from a checkpoint folder without building a Trainer: the objective phases, the learning-rate
schedule, a stream's position and the training progress (step, tokens seen).

The writers are `ExportableState` callbacks (`ObjectiveSwitchCallback`, `ScheduleStateCallback`,
`StreamPositionCallback`): the Trainer stores their `state()` in `trainer_state.json` under `stateful_callbacks`.
Reading them lives here, in one place, so resume, cooldown branches, publishing and evaluation agree on the format.
"""

from __future__ import annotations

import json
import os
import re

from transformers.trainer import TRAINER_STATE_NAME

from hf_pretrain.schedules import ScheduleStateCallback, WSDSchedule

# The writers' class names (the keys under `stateful_callbacks`); importing the callbacks here would pull the
# training package into every reader.
OBJECTIVE_SWITCH_STATE = "ObjectiveSwitchCallback"
STREAM_POSITION_STATE = "StreamPositionCallback"


def read_json(path: str | os.PathLike) -> dict:
    """A JSON file as a dict; {} when it does not exist."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _entries(checkpoint_dir: str | os.PathLike, callback_name: str) -> list[dict]:
    stored = (read_json(os.path.join(checkpoint_dir, TRAINER_STATE_NAME)).get("stateful_callbacks") or {}).get(
        callback_name
    )
    # Several callbacks of one class are stored as a list (and the Trainer appends to it at every save).
    return stored if isinstance(stored, list) else [stored] if stored else []


def stored_callback_args(checkpoint_dir: str | os.PathLike, callback_name: str) -> list[dict]:
    """The non-empty `args` of every `callback_name` state in `checkpoint_dir/trainer_state.json`.

    [] when the checkpoint has no trainer state or no such callback. A checkpoint folder that does not exist is an
    error: a typo must not silently start a run from fresh arguments.
    """
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"No checkpoint folder {os.fspath(checkpoint_dir)!r}.")
    entries = _entries(checkpoint_dir, callback_name)
    return [entry["args"] for entry in entries if any(v is not None for v in (entry.get("args") or {}).values())]


def phases_from_checkpoint(checkpoint_dir: str | os.PathLike) -> list[list] | None:
    """The objective phases [[first step, name], ...] stored in `checkpoint_dir`, or None."""
    stored = stored_callback_args(checkpoint_dir, OBJECTIVE_SWITCH_STATE)
    return stored[0]["phases"] if stored else None


def schedule_from_checkpoint(checkpoint_dir: str | os.PathLike) -> WSDSchedule | None:
    """The schedule a `ScheduleStateCallback` stored in `checkpoint_dir`; None if the checkpoint has none.

    A checkpoint folder that does not exist is an error (a typo must not silently start a fresh schedule).
    """
    schedules = {
        WSDSchedule.from_dict(args) for args in stored_callback_args(checkpoint_dir, ScheduleStateCallback.__name__)
    }
    if len(schedules) > 1:
        raise ValueError(f"{checkpoint_dir} holds {len(schedules)} different WSD schedules; expected one.")
    return schedules.pop() if schedules else None


def stream_position_from_checkpoint(checkpoint_dir: str | os.PathLike) -> dict | None:
    """The stream position stored in `checkpoint_dir` by `StreamPositionCallback`, or None."""
    positions = [
        (entry.get("attributes") or {}).get("position") for entry in _entries(checkpoint_dir, STREAM_POSITION_STATE)
    ]
    return next((p for p in reversed(positions) if p), None)


def training_progress(checkpoint_dir: str | os.PathLike) -> tuple[int | None, int | None]:
    """(global step, tokens seen) from a checkpoint's trainer_state.json, or (None, None) without one."""
    state = read_json(os.path.join(checkpoint_dir, TRAINER_STATE_NAME))
    if not state:
        return None, None
    return state.get("global_step"), state.get("num_input_tokens_seen")


def checkpoint_step(path: str) -> int:
    """The step in a `checkpoint-N` folder's name, or -1 for any other folder."""
    match = re.search(r"checkpoint-(\d+)$", os.path.normpath(path))
    return int(match.group(1)) if match else -1
