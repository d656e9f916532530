"""Atomic checkpoints: what a SIGKILL during a save leaves behind never blocks a start, and a resume continues exactly.

Unit tests of completeness detection and of resume selection, then real runs killed with SIGKILL (the whole job)
inside a save by tests/scripts/pretrain_killed_in_save.py and resumed with `--resume_from_checkpoint true`.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from _runs import REPO, pretrain, train_logs
from safetensors.torch import save_file

from hf_pretrain.resolve import resolve_checkpoint
from hf_pretrain.training.checkpoints import (
    COMPLETE_FILE,
    INCOMPLETE_DIR,
    checkpoint_problem,
    find_checkpoints,
    publish_checkpoint,
    safetensors_problem,
    set_aside_incomplete,
    staging_dir,
)

KILLED_IN_SAVE = os.path.join(REPO, "tests", "scripts", "pretrain_killed_in_save.py")


def write_checkpoint(output_dir, step, atomic=True):
    """A checkpoint-<step> as the Trainer writes it (tiny files); atomic: staged, then published with its manifest."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    folder = os.path.join(staging_dir(output_dir, step), f"checkpoint-{step}") if atomic else final
    os.makedirs(folder)
    save_file(
        {"w": torch.arange(6, dtype=torch.float32)}, os.path.join(folder, "model.safetensors")
    )  # 8 + 56 + 24 bytes
    torch.save({"state": {}}, os.path.join(folder, "optimizer.pt"))
    for name in ("scheduler.pt", "rng_state.pth"):
        torch.save({}, os.path.join(folder, name))
    with open(os.path.join(folder, "trainer_state.json"), "w") as handle:
        json.dump({"global_step": step, "log_history": []}, handle)
    if atomic:
        publish_checkpoint(folder, final)
    return final


def truncate(path, size):
    with open(path, "r+b") as handle:
        handle.truncate(size)


# ---- completeness ----------------------------------------------------------------------------------------------


def test_a_published_checkpoint_is_complete_and_lists_every_file(tmp_path):
    folder = write_checkpoint(str(tmp_path), 4)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]  # the staging folder is gone
    assert checkpoint_problem(folder) is None
    with open(os.path.join(folder, COMPLETE_FILE)) as handle:
        manifest = json.load(handle)
    assert manifest["global_step"] == 4
    assert sorted(manifest["files"]) == ["model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt",
                                         "trainer_state.json"]  # fmt: skip
    assert manifest["files"]["model.safetensors"] == os.path.getsize(os.path.join(folder, "model.safetensors"))


def test_missing_truncated_and_unreadable_files_are_named(tmp_path):
    out = str(tmp_path)
    folder = write_checkpoint(out, 1)
    os.remove(os.path.join(folder, "optimizer.pt"))
    assert checkpoint_problem(folder) == "optimizer.pt is missing"

    folder = write_checkpoint(out, 2)
    size = os.path.getsize(os.path.join(folder, "model.safetensors"))
    truncate(os.path.join(folder, "model.safetensors"), size - 5)
    assert checkpoint_problem(folder) == f"model.safetensors has {size - 5} bytes, {size} were written"

    # Without a manifest (a non-atomic save: older versions, a plain Trainer) the files themselves are checked.
    folder = write_checkpoint(out, 3, atomic=False)
    assert checkpoint_problem(folder) is None
    truncate(os.path.join(folder, "model.safetensors"), size - 5)
    assert checkpoint_problem(folder) == f"model.safetensors is truncated ({size - 5} of {size} bytes)"
    assert safetensors_problem(os.path.join(folder, "model.safetensors")) == checkpoint_problem(folder)
    truncate(os.path.join(folder, "model.safetensors"), 5)
    assert checkpoint_problem(folder) == "model.safetensors is truncated (5 bytes, no header)"
    truncate(os.path.join(folder, "model.safetensors"), 40)  # the 8-byte length promises more header than there is
    assert checkpoint_problem(folder).startswith("model.safetensors is truncated (40 bytes, its header alone needs")

    folder = write_checkpoint(out, 4, atomic=False)
    with open(os.path.join(folder, "trainer_state.json"), "w") as handle:
        handle.write('{"global_step": 4, "log_hi')
    assert checkpoint_problem(folder) == "trainer_state.json is not valid JSON"
    os.remove(os.path.join(folder, "trainer_state.json"))  # what a kill mid-save left before atomic saves
    assert checkpoint_problem(folder) == "trainer_state.json is missing"
    os.makedirs(os.path.join(out, "checkpoint-5"))  # killed right after the folder was made
    assert checkpoint_problem(os.path.join(out, "checkpoint-5")).startswith("no model weights")


# ---- resume selection and setting aside ------------------------------------------------------------------------


def run_dir_after_crashes(out):
    """checkpoint-2 and -4 complete; -6 half written (non-atomic), -8 corrupt, an interrupted atomic save of 10."""
    write_checkpoint(out, 2)
    write_checkpoint(out, 4)
    os.remove(os.path.join(write_checkpoint(out, 6, atomic=False), "trainer_state.json"))
    truncate(os.path.join(write_checkpoint(out, 8), "model.safetensors"), 60)
    os.makedirs(os.path.join(staging_dir(out, 10), "checkpoint-10"))
    return sorted(os.listdir(out))


def args(out, resume=None):
    return SimpleNamespace(output_dir=out, resume_from_checkpoint=resume, process_index=0)


def test_resume_takes_the_newest_complete_checkpoint_and_moves_nothing_while_resolving(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hf_pretrain")
    out = str(tmp_path / "run")
    before = run_dir_after_crashes(out)
    complete, broken = find_checkpoints(out)
    assert complete == [os.path.join(out, "checkpoint-2"), os.path.join(out, "checkpoint-4")]
    assert [(os.path.basename(f), p.split(" (")[0]) for f, p in broken] == [
        ("checkpoint-6", "trainer_state.json is missing"),
        ("checkpoint-8", "model.safetensors has 60 bytes, 88 were written"),
        (".saving-checkpoint-10", "an interrupted save"),
    ]
    for resume in ("true", "last", "True"):
        assert resolve_checkpoint(args(out, resume)) == os.path.join(out, "checkpoint-4")
    assert "Skipping " + os.path.join(out, "checkpoint-8") + ": model.safetensors has 60 bytes, 88 were" in caplog.text
    assert "Resuming from " + os.path.join(out, "checkpoint-4") + ", the newest complete checkpoint" in caplog.text
    assert sorted(os.listdir(out)) == before  # resolving (also --dry_run) writes nothing
    with pytest.raises(ValueError, match=r"already holds checkpoints \(checkpoint-4\)"):
        resolve_checkpoint(args(out))
    corrupt = os.path.join(out, "checkpoint-8")
    with pytest.raises(ValueError) as error:
        resolve_checkpoint(args(out, corrupt))
    assert str(error.value) == (
        f"resume_from_checkpoint={corrupt!r} is not a complete checkpoint: model.safetensors has 60 bytes, 88 "
        "were written; name another checkpoint-N folder, or pass true for the newest complete one."
    )
    assert resolve_checkpoint(args(out, os.path.join(out, "checkpoint-2"))) == os.path.join(out, "checkpoint-2")

    # The run starts: the incomplete folders go to incomplete_checkpoints/, with their files; none is deleted.
    os.makedirs(os.path.join(out, INCOMPLETE_DIR, "checkpoint-6"))  # an earlier crash at the same step
    moved = set_aside_incomplete(out, keep=os.path.join(out, "checkpoint-4"))
    aside = os.path.join(out, INCOMPLETE_DIR)
    assert moved == [os.path.join(aside, name) for name in ("checkpoint-6.1", "checkpoint-8", "checkpoint-10")]
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4", INCOMPLETE_DIR]
    assert os.path.isfile(os.path.join(aside, "checkpoint-6.1", "model.safetensors"))
    assert set_aside_incomplete(out) == [] and find_checkpoints(out) == (complete, [])


def test_a_half_written_first_save_never_blocks_a_start(tmp_path):
    out = str(tmp_path / "run")
    os.remove(os.path.join(write_checkpoint(out, 2, atomic=False), "optimizer.pt"))
    os.remove(os.path.join(out, "checkpoint-2", "trainer_state.json"))
    assert resolve_checkpoint(args(out)) is None  # a fresh start is not refused
    assert resolve_checkpoint(args(out, "true")) is None  # nor a resume: nothing complete, it starts at step 0
    shutil.rmtree(os.path.join(out, "checkpoint-2"))
    with pytest.raises(ValueError, match="output_dir has no checkpoint-\\* folder"):
        resolve_checkpoint(args(out, "true"))  # a wrong output_dir is still an error
    with open(os.path.join(out, "resolved_config.yaml"), "w") as handle:  # killed before its first save
        handle.write("block_size: 32\n")
    assert resolve_checkpoint(args(out, "true")) is None  # the requeued job starts again
    with open(os.path.join(out, "trainer_state.json"), "w") as handle:  # a finished run is not started again
        handle.write('{"global_step": 8}')
    with pytest.raises(ValueError, match="output_dir has no checkpoint-\\* folder"):
        resolve_checkpoint(args(out, "true"))
    with pytest.raises(ValueError, match="no such checkpoint folder"):
        resolve_checkpoint(args(out, os.path.join(out, "checkpoint-9")))


# ---- SIGKILL inside a save, then resume ------------------------------------------------------------------------

TINY = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "1024", "--block_size", "32",
    "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--logging_steps", "1", "--eval_strategy", "no",
    "--save_steps", "2", "--save_total_limit", "2", "--max_documents", "40", "--seed", "0", "--max_steps", "8",
    "--disable_tqdm", "true",
]  # fmt: skip


def killed_run(command, out, step, point, rank=0):
    """Run `command` (the recipe through pretrain_killed_in_save.py) until it kills itself in the save of `step`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT_STEP": str(step), "KILL_POINT": point,
           "KILL_RANK": str(rank), "KILL_HARNESS_PID": str(os.getpid())}  # fmt: skip
    result = subprocess.run([*command, "--output_dir", out], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=600, start_new_session=True)  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def losses(out):
    return {step: entry["loss"] for step, entry in train_logs(out).items()}


def test_a_run_killed_inside_a_save_resumes_with_the_uninterrupted_losses(tmp_path):
    reference = str(tmp_path / "reference")
    pretrain.main([*TINY, "--output_dir", reference])
    out = str(tmp_path / "run")
    killed_run([sys.executable, KILLED_IN_SAVE, *TINY], out, step=6, point="model")
    staged = os.path.join(staging_dir(out, 6), "checkpoint-6")
    assert "model.safetensors" in os.listdir(staged) and "trainer_state.json" not in os.listdir(staged)
    assert find_checkpoints(out)[0] == [os.path.join(out, f"checkpoint-{s}") for s in (2, 4)]
    # What the kill left before atomic saves: the same half-written folder under its final name, the newest one.
    shutil.copytree(staged, os.path.join(out, "checkpoint-7"))

    pretrain.main([*TINY, "--output_dir", out, "--resume_from_checkpoint", "true"])
    assert losses(out) == losses(reference) and sorted(losses(out)) == list(range(1, 9))
    aside = os.path.join(out, INCOMPLETE_DIR)
    assert sorted(os.listdir(aside)) == ["checkpoint-6", "checkpoint-7"]
    assert "model.safetensors" in os.listdir(os.path.join(aside, "checkpoint-6"))
    # save_total_limit 2 rotated complete checkpoints only; the ones left are complete.
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-6", "checkpoint-8"]
    assert [checkpoint_problem(os.path.join(out, f"checkpoint-{s}")) for s in (6, 8)] == [None, None]

    # Killed in its very first save: resuming starts at step 0 (nothing complete to resume), unblocked.
    first = str(tmp_path / "first")
    shutil.copytree(os.path.join(aside, "checkpoint-6"), os.path.join(first, "checkpoint-2"))
    pretrain.main([*TINY, "--output_dir", first, "--resume_from_checkpoint", "true", "--max_steps", "2"])
    assert sorted(losses(first)) == [1, 2] and losses(first)[1] == losses(reference)[1]  # its schedule is shorter
    assert os.listdir(os.path.join(first, INCOMPLETE_DIR)) == ["checkpoint-2"]

    # Killed after its last checkpoint (in the final save or evaluation): the resume trains no step past max_steps.
    done = str(tmp_path / "done")
    shutil.copytree(reference, done)
    os.remove(os.path.join(done, "trainer_state.json"))
    pretrain.main([*TINY, "--output_dir", done, "--resume_from_checkpoint", "true"])
    assert losses(done) == losses(reference) and sorted(losses(done)) == list(range(1, 9))


@pytest.mark.slow
def test_two_processes_killed_before_the_rename_resume_exactly(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                os.path.join(REPO, "configs", "accelerate", "cpu_2proc.yaml"), "--main_process_port", "29571"]  # fmt: skip
    two = [*TINY, "--per_device_train_batch_size", "4", "--max_steps", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = str(tmp_path / "reference")
    subprocess.run([*launcher, KILLED_IN_SAVE, *two, "--output_dir", reference], env=env, cwd=REPO, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    out = str(tmp_path / "run")
    killed_run([*launcher, KILLED_IN_SAVE, *two], out, step=4, point="rename")  # every rank wrote and synced
    staged = os.listdir(os.path.join(staging_dir(out, 4), "checkpoint-4"))
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= set(staged)
    subprocess.run([*launcher, KILLED_IN_SAVE, *two, "--output_dir", out, "--resume_from_checkpoint", "true"],
                   env=env, cwd=REPO, check=True, capture_output=True, timeout=600)  # fmt: skip
    assert losses(out) == losses(reference) and sorted(losses(out)) == list(range(1, 7))
    assert os.listdir(os.path.join(out, INCOMPLETE_DIR)) == ["checkpoint-4"]
    assert checkpoint_problem(os.path.join(out, "checkpoint-4")) is None
