"""What the end-to-end tests share: the repository root, the pretraining recipe, and reading a run's logs."""

import json
import os

import pretrain  # recipes/pretrain.py, the command users run (conftest.py puts recipes/ on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log_history(output_dir: str) -> list[dict]:
    """Every log entry of a finished run (`trainer_state.json`)."""
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        return json.load(handle)["log_history"]


def train_logs(output_dir: str) -> dict[int, dict]:
    """The training log entries (those with a loss), by global step."""
    return {entry["step"]: entry for entry in log_history(output_dir) if "loss" in entry}


__all__ = ["REPO", "log_history", "pretrain", "train_logs"]
