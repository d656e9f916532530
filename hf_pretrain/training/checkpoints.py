"""Atomic checkpoints: a `checkpoint-N` folder exists only once every file of every rank is written and synced.

The Trainer writes a save into `output_dir/.saving-checkpoint-N/checkpoint-N` (a name no `checkpoint-*` glob,
`get_last_checkpoint` or rotation sees). When every rank has written and fsynced its files (DDP: rank 0 the model,
optimizer and trainer state, each rank its `rng_state_<r>.pth`; ZeRO: each rank its shards in `global_stepN/`), the
process that saves writes `checkpoint_complete.json` (every file and its size) and renames the folder to
`output_dir/checkpoint-N`; only then does rotation (`save_total_limit`) run and the `on_save` callbacks (Hub
staging) see it. A job killed with SIGKILL at any moment leaves either the complete folder or a staged one.

Reading side (`find_checkpoints`, `checkpoint_problem`): a folder is complete when its marker's files all exist with
their sizes, its `*.safetensors` headers match the file sizes and `trainer_state.json` parses; a folder without a
marker (written before atomic saves, or by a plain Trainer) needs a readable `trainer_state.json` (the Trainer writes
it last), weights, and intact safetensors. Only headers and sizes are read: the check costs a few stat calls per
file. Incomplete folders are moved to `output_dir/incomplete_checkpoints/` when a run starts, never deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hf_pretrain.checkpoint_state import checkpoint_step
from hf_pretrain.run_layout import RESOLVED_CONFIG_FILE

logger = logging.getLogger(__name__)

COMPLETE_FILE = "checkpoint_complete.json"  # the manifest written last, just before the rename
INCOMPLETE_DIR = "incomplete_checkpoints"  # where half-written folders are set aside (never deleted)
SAVING_PREFIX = ".saving-"  # output_dir/.saving-checkpoint-N/checkpoint-N while a save is in progress
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
_MAX_HEADER = 100 * 2**20  # safetensors refuses headers above 100 MB


# ---- reading: is a folder a complete checkpoint? ---------------------------------------------------------------


def safetensors_problem(path: str) -> str | None:
    """Why the safetensors file at `path` is not whole (its header: 8-byte length, JSON, data offsets), or None."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{name} is truncated ({size} bytes, no header)"
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            return f"{name} is truncated ({size} bytes, its header alone needs {length + 8})"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return f"{name} has an unreadable header"
    if not isinstance(header, dict):
        return f"{name} has an unreadable header"
    ends = [info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return (
            f"{name} is truncated ({size} of {expected} bytes)"
            if size < expected
            else f"{name} has {size - expected} bytes too many"
        )
    return None


def _trainer_state_problem(folder: str) -> str | None:
    path = os.path.join(folder, TRAINER_STATE)
    if not os.path.isfile(path):
        return f"{TRAINER_STATE} is missing"
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (ValueError, UnicodeDecodeError):
        return f"{TRAINER_STATE} is not valid JSON"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"{TRAINER_STATE} has no global_step"
    return None


def _manifest_problem(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, COMPLETE_FILE), encoding="utf-8") as handle:
            files = json.load(handle)["files"]
    except (ValueError, KeyError, TypeError):
        return f"{COMPLETE_FILE} is not valid JSON"
    for name, size in files.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, {size} were written"
    return None


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` is not a complete, loadable checkpoint (one line, naming the file), or None when it is."""
    try:
        names = set(os.listdir(folder))
        if COMPLETE_FILE in names:
            problem = _manifest_problem(folder)
        elif not names & set(WEIGHT_FILES) and not any(n.startswith("global_step") for n in names):
            problem = "no model weights (model.safetensors) and no DeepSpeed global_step folder"
        else:
            problem = None
        problem = problem or _trainer_state_problem(folder)
        for name in sorted(n for n in names if n.endswith(".safetensors")):
            problem = problem or safetensors_problem(os.path.join(folder, name))
    except OSError as error:  # e.g. set aside by another rank while this one looked
        return f"unreadable ({error.strerror})"
    return problem


def find_checkpoints(output_dir: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(complete `checkpoint-N` folders, oldest first; [(folder, problem)] of the incomplete or corrupt ones and
    of interrupted saves, `.saving-checkpoint-N`)."""
    if not os.path.isdir(output_dir):
        return [], []
    complete, broken = [], []
    for name in sorted(os.listdir(output_dir), key=checkpoint_step):
        folder = os.path.join(output_dir, name)
        if name.startswith(SAVING_PREFIX):
            broken.append((folder, "an interrupted save"))
        elif checkpoint_step(name) >= 0 and name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and os.path.isdir(folder):
            problem = checkpoint_problem(folder)
            (broken.append((folder, problem)) if problem else complete.append(folder))
    return complete, broken


def interrupted_before_any_checkpoint(output_dir: str) -> bool:
    """output_dir holds a run that started (resolved_config.yaml) but neither finished (no final trainer_state.json)
    nor saved a complete checkpoint: a job killed before its first save, which `--resume_from_checkpoint true`
    simply starts again."""
    started = os.path.isfile(os.path.join(output_dir, RESOLVED_CONFIG_FILE))
    finished = os.path.isfile(os.path.join(output_dir, TRAINER_STATE))
    return started and not finished and not find_checkpoints(output_dir)[0]


def set_aside_incomplete(output_dir: str, keep: str | None = None) -> list[str]:
    """Move the incomplete folders `find_checkpoints` reports into incomplete_checkpoints/; returns their new paths.

    Called by the process that saves when a run starts. `keep` (the checkpoint being resumed) is never moved.
    """
    moved = []
    for folder, problem in find_checkpoints(output_dir)[1]:
        if keep is not None and os.path.abspath(folder) == os.path.abspath(keep):
            continue
        target = _move_aside(folder, output_dir)
        logger.warning("Moved the incomplete checkpoint %s (%s) to %s.", os.path.basename(folder), problem, target)
        moved.append(target)
    return moved


def _move_aside(folder: str, output_dir: str) -> str:
    """Move `folder` (a `checkpoint-N`, or a staging `.saving-checkpoint-N`) to incomplete_checkpoints/checkpoint-N."""
    aside = os.path.join(output_dir, INCOMPLETE_DIR)
    os.makedirs(aside, exist_ok=True)
    base = os.path.basename(folder).removeprefix(SAVING_PREFIX)
    staged = os.path.join(folder, base)
    source = staged if os.path.basename(folder).startswith(SAVING_PREFIX) and os.path.isdir(staged) else folder
    target, n = os.path.join(aside, base), 1
    while os.path.exists(target):  # an earlier crash at the same step: keep both
        target, n = os.path.join(aside, f"{base}.{n}"), n + 1
    os.rename(source, target)
    if source != folder and not os.listdir(folder):
        os.rmdir(folder)
    return target


# ---- writing: save into a staged folder, publish it by a rename ------------------------------------------------


def staging_dir(output_dir: str, step: int) -> str:
    """The run folder a save at `step` writes into; the checkpoint itself is `<this>/checkpoint-<step>`."""
    return os.path.join(output_dir, f"{SAVING_PREFIX}{PREFIX_CHECKPOINT_DIR}-{step}")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: str) -> dict[str, int]:
    """Every file under `folder` (relative path → size)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = os.path.getsize(path)
    return found


def sync_tree(folder: str) -> None:
    """fsync every file and folder under `folder`: what a rank wrote survives a crash of the machine."""
    if not os.path.isdir(folder):
        return
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # e.g. a temporary file renamed meanwhile
                _fsync(os.path.join(root, name))
        _fsync(root)


def publish_checkpoint(staged: str, final: str) -> None:
    """Write the manifest into `staged`, sync it, and rename it to `final` (an earlier folder there is set aside)."""
    files = _files(staged)
    with open(os.path.join(staged, COMPLETE_FILE), "w", encoding="utf-8") as handle:
        json.dump({"global_step": checkpoint_step(final), "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(staged)
    output_dir = os.path.dirname(final)
    if os.path.exists(final):  # e.g. a folder of an earlier attempt that no run start set aside
        logger.warning("Moved the earlier %s to %s.", os.path.basename(final), _move_aside(final, output_dir))
    os.rename(staged, final)  # atomic on one filesystem: the folder appears whole or not at all
    os.rmdir(os.path.dirname(staged))
    _fsync(output_dir)


@contextlib.contextmanager
def atomic_save(trainer, run_dir: str):
    """Around `Trainer._save_checkpoint`: redirect it into the staging folder, then publish the checkpoint.

    `trainer._checkpoint_run_dir` is what the Trainer's `_get_output_dir` returns meanwhile. Every rank must enter
    (the barriers): the rename happens after all ranks wrote and synced their files, and every rank leaves after it.
    """
    step = trainer.state.global_step
    root = staging_dir(run_dir, step)
    staged = os.path.join(root, f"{PREFIX_CHECKPOINT_DIR}-{step}")
    final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
    if trainer.args.should_save and os.path.exists(root):  # left by a save killed at this step earlier
        _move_aside(root, run_dir)
    trainer.accelerator.wait_for_everyone()
    trainer._checkpoint_run_dir = root
    try:
        yield
    finally:
        trainer._checkpoint_run_dir = None
    # The Trainer found the best checkpoint (if it is this one) in the staging folder: give it its final name.
    best = trainer.state.best_model_checkpoint
    if best is not None and os.path.normpath(best).startswith(os.path.normpath(root) + os.sep):
        trainer.state.best_model_checkpoint = final
        if trainer.args.should_save:
            trainer.state.save_to_json(os.path.join(staged, TRAINER_STATE))
    trainer.accelerator.wait_for_everyone()  # every rank has written its files
    if trainer.args.local_process_index == 0:  # one process per machine flushes what that machine wrote
        sync_tree(staged)
    trainer.accelerator.wait_for_everyone()  # ... and they are synced
    if trainer.args.should_save:
        publish_checkpoint(staged, final)
        # The Trainer rotated inside the staging folder (one checkpoint there, nothing to do): rotate here.
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=trainer.args.save_total_limit,
            best_model_checkpoint=trainer.state.best_model_checkpoint,
            use_mtime=True,
        )
    trainer.accelerator.wait_for_everyone()  # no rank (nor on_save) looks for checkpoint-N before it exists
