"""Kill -9 trials: SIGKILL a tiny training job (launcher, every rank, DataLoader workers), then resume it unattended.

    python benchmarks/crash_trials.py                 # 20 trials, 1 and 2 processes, half of them inside a save
    python benchmarks/crash_trials.py --trials 4 --seed 1

Each trial starts a run with frequent saves and kills the whole job: either at a seeded moment inside a save (the
test hook tests/scripts/pretrain_killed_in_save.py: after the weights, after the optimizer, or with every file of
every rank written but the folder not yet renamed), or from outside at a seeded random moment (0-0.3 s after a seeded
training step), as a scheduler's preemption does. Then the same command with `--resume_from_checkpoint true` runs,
once, with no cleaning in between. A trial needs a manual step when that resume does not finish. Steps lost are the
steps the killed job had trained (its printed logs) minus the step of the checkpoint the resume took. The resumed
losses are compared with an uninterrupted run of the same number of processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from hf_pretrain.training.checkpoints import find_checkpoints  # noqa: E402

HOOK = os.path.join(REPO, "tests", "scripts", "pretrain_killed_in_save.py")
MAX_STEPS, SAVE_STEPS = 12, 3
RUN = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "1024", "--block_size", "32",
    "--learning_rate", "3e-3", "--logging_steps", "1", "--eval_strategy", "no", "--save_steps", str(SAVE_STEPS),
    "--save_total_limit", "2", "--max_documents", "40", "--seed", "0", "--max_steps", str(MAX_STEPS),
    "--disable_tqdm", "true", "--dataloader_num_workers", "1",
]  # fmt: skip
POINTS = ("model", "optimizer", "rename")


def command(processes: int, port: int) -> list[str]:
    if processes == 1:
        return [sys.executable, HOOK, *RUN, "--per_device_train_batch_size", "8"]
    config = os.path.join(REPO, "configs", "accelerate", "cpu_2proc.yaml")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--main_process_port"]
    return [*launcher, str(port), HOOK, *RUN, "--per_device_train_batch_size", "4"]


def environment(**extra) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in extra.items()}}


def kill_tree(pid: int) -> None:
    """SIGKILL a job: its root process and every descendant (ranks start their own sessions: no killpg)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)


def steps_logged(stdout: str) -> int:
    """Training steps the job finished: the Trainer prints one `{'loss': ...}` line per step (logging_steps 1)."""
    return sum(1 for line in stdout.splitlines() if line.startswith("{'loss'"))


def losses(out: str) -> dict[int, float]:
    with open(os.path.join(out, "trainer_state.json")) as handle:
        return {e["step"]: e["loss"] for e in json.load(handle)["log_history"] if "loss" in e}


def killed_job(cmd, out, env, at: tuple[int, float] | None) -> tuple[str, bool]:
    """Run `cmd` until it dies; with `at` = (step, delay), kill it `delay` s after it logged training step `step`.

    Returns (its output, whether it was killed)."""
    with open(os.path.join(out + ".log"), "w+") as log:
        job = subprocess.Popen([*cmd, "--output_dir", out], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
        if at is not None:
            step, delay = at
            while job.poll() is None:
                with open(log.name) as progress:
                    if steps_logged(progress.read()) >= step:
                        break
                time.sleep(0.005)
            time.sleep(delay)
            kill_tree(job.pid)
        job.wait(timeout=900)
        log.seek(0)
        return log.read(), job.returncode == -signal.SIGKILL


def trial(index: int, processes: int, in_save: bool, rng: random.Random, root: str, reference: dict) -> dict:
    out = os.path.join(root, f"trial{index}")
    port = 29700 + index
    if in_save:
        step, point = rng.choice(range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS)), rng.choice(POINTS)
        env = environment(KILL_AT_STEP=step, KILL_POINT=point, KILL_HARNESS_PID=os.getpid())
        stdout, killed = killed_job(command(processes, port), out, env, None)
        moment = f"in save {step} ({point})"
    else:
        step, delay = rng.randint(1, MAX_STEPS - 1), rng.uniform(0.0, 0.3)
        for _ in range(3):  # a kill that came after the run had finished: again, sooner, from scratch
            stdout, killed = killed_job(command(processes, port), out, environment(), (step, delay))
            if killed:
                break
            shutil.rmtree(out)
            delay /= 2
        moment = f"{delay:.2f} s after step {step}" + ("" if killed else " (not killed)")
    done = steps_logged(stdout)
    complete, broken = find_checkpoints(out)
    during_save = bool(broken)  # a staged folder (or a half-written one) is left only by a kill inside a save
    started = time.time()
    resume = subprocess.run([*command(processes, port + 100), "--output_dir", out, "--resume_from_checkpoint", "true"],
                            env=environment(), cwd=REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
    with open(out + ".resume.log", "w") as log:
        log.write(resume.stdout + resume.stderr)
    match = re.search(r"Resuming from \S*checkpoint-(\d+)", resume.stderr + resume.stdout)
    resumed_from = int(match.group(1)) if match else 0
    finished = resume.returncode == 0 and max(losses(out), default=0) == MAX_STEPS
    return {
        "trial": index,
        "processes": processes,
        "moment": moment,
        "killed": killed,
        "during_save": during_save,
        "resume_finished": finished,
        "resumed_from": resumed_from,
        "steps_lost": done - resumed_from,
        "losses_equal": finished and losses(out) == reference[processes],
        "manual_steps": 0 if finished else 1,
        "resume_s": time.time() - started,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    options = parser.parse_args(argv)
    rng = random.Random(options.seed)
    root = tempfile.mkdtemp(prefix="crash_trials_")
    reference = {}
    for processes in (1, 2):  # the uninterrupted runs the resumed losses must equal
        out = os.path.join(root, f"reference{processes}")
        subprocess.run([*command(processes, 29690 + processes), "--output_dir", out], env=environment(), cwd=REPO,
                       check=True, capture_output=True, timeout=900)  # fmt: skip
        reference[processes] = losses(out)
    rows = []
    header = "| trial | processes | kill moment | killed during save? | resume finished? | resumed from | steps lost | losses = uninterrupted | manual steps |"  # noqa: E501
    print(header + "\n|" + "---|" * 9, flush=True)
    for index in range(options.trials):
        processes, in_save = 1 + index % 2, (index // 2) % 2 == 0
        row = trial(index, processes, in_save, rng, root, reference)
        rows.append(row)
        print(f"| {row['trial']} | {processes} | {row['moment']} | {'yes' if row['during_save'] else 'no'} | "
              f"{'yes' if row['resume_finished'] else 'NO'} | {row['resumed_from']} | {row['steps_lost']} | "
              f"{'yes' if row['losses_equal'] else 'NO'} | {row['manual_steps']} |", flush=True)  # fmt: skip
    finished = sum(r["resume_finished"] for r in rows)
    in_save = sum(r["during_save"] for r in rows)
    print(f"\n{len(rows)} trials ({in_save} killed during a save): {finished} resumes finished, "
          f"{sum(r['losses_equal'] for r in rows)} with the uninterrupted losses, "
          f"{sum(r['manual_steps'] for r in rows)} manual steps; steps lost: "
          f"{', '.join(str(r['steps_lost']) for r in rows)} (saves every {SAVE_STEPS} steps). Runs in {root}")  # fmt: skip
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
