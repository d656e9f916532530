"""Run recipes/pretrain.py and SIGKILL the whole job at a chosen moment inside the save of one checkpoint.

Test-only (tests/test_checkpoint_atomic.py, benchmarks/crash_trials.py); the package has no such hook. Environment:
    KILL_AT_STEP     the global step whose save is interrupted (unset: never)
    KILL_POINT       where in that save: "model" (the weights are written, nothing else), "optimizer" (weights,
                     optimizer and scheduler written, not the RNG states nor trainer_state.json) or "rename" (every
                     file of every rank written, the folder not yet renamed to checkpoint-N); default "model"
    KILL_RANK        the rank that kills (default 0)
    KILL_HARNESS_PID the process that started the job: everything below it (launcher, ranks, DataLoader workers)
                     is killed, as a cluster scheduler kills a job
"""

import contextlib
import os
import signal
import sys

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "recipes"))

import pretrain  # noqa: E402

import hf_pretrain.pipeline  # noqa: E402
from hf_pretrain.training import checkpoints  # noqa: E402

KILL_AT_STEP = int(os.environ.get("KILL_AT_STEP", "-1"))
KILL_POINT = os.environ.get("KILL_POINT", "model")
KILL_RANK = int(os.environ.get("KILL_RANK", "0"))


def kill_job() -> None:
    """SIGKILL the job this process belongs to: the topmost ancestor below the harness and all its descendants."""
    harness = int(os.environ.get("KILL_HARNESS_PID", os.getppid()))
    root = psutil.Process()
    while root.ppid() not in (harness, 0, 1):
        root = root.parent()
    me = os.getpid()
    for process in [root, *root.children(recursive=True)]:
        if process.pid != me:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
    os.kill(me, signal.SIGKILL)


def maybe_kill(step: int, point: str) -> None:
    if step == KILL_AT_STEP and point == KILL_POINT and int(os.environ.get("RANK", "0")) == KILL_RANK:
        kill_job()


class KilledInSaveTrainer(hf_pretrain.pipeline.PretrainingTrainer):
    def _save_optimizer_and_scheduler(self, output_dir):
        maybe_kill(self.state.global_step, "model")
        super()._save_optimizer_and_scheduler(output_dir)

    def _save_rng_state(self, output_dir):
        maybe_kill(self.state.global_step, "optimizer")
        super()._save_rng_state(output_dir)


_publish = checkpoints.publish_checkpoint


def publish_or_die(staged, final):
    maybe_kill(int(final.rsplit("-", 1)[1]), "rename")
    _publish(staged, final)


hf_pretrain.pipeline.PretrainingTrainer = KilledInSaveTrainer
checkpoints.publish_checkpoint = publish_or_die

if __name__ == "__main__":
    pretrain.main()
