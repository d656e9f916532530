"""Running the preparation stages on one of datatrove's executors: local processes, a Ray cluster, or Slurm.

Each stage is one executor with its own `logging_dir` (`<work_dir>/logs/<stage>`), where datatrove marks every
finished task (`completions/`): a rerun skips them and reruns only what was killed or failed. Locally and on Ray
the stages run one after the other; on Slurm each stage is one array job that depends on the previous one
(`afterok`), submitted at once. With `dry_run` the sbatch scripts are written to `<work_dir>/slurm/` and printed,
and nothing is submitted.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray", "slurm")


@dataclass
class Stage:
    """One step of the job: a datatrove pipeline run as `tasks` tasks."""

    name: str
    pipeline: list
    tasks: int


def _local(stage: Stage, logging_dir: str, args):
    from datatrove.executor import LocalPipelineExecutor

    workers = max(1, min(args.workers, stage.tasks))
    # fork, not datatrove's forkserver: the workers inherit the imported modules instead of importing datasets,
    # transformers and datatrove again for every stage (seconds each); tokenizers turns its threads off after it.
    start = "fork" if sys.platform.startswith("linux") else "forkserver"
    return LocalPipelineExecutor(
        stage.pipeline, tasks=stage.tasks, workers=workers, logging_dir=logging_dir, start_method=start
    )


def _ray(stage: Stage, logging_dir: str, args):
    from datatrove.executor.ray import RayPipelineExecutor

    return RayPipelineExecutor(
        stage.pipeline,
        tasks=stage.tasks,
        workers=max(1, min(args.workers, stage.tasks)),
        logging_dir=logging_dir,
        cpus_per_task=args.cpus_per_task,
        mem_per_cpu_gb=args.mem_per_cpu_gb,
    )


def _slurm(stage: Stage, logging_dir: str, args, depends):
    from datatrove.executor.slurm import SlurmPipelineExecutor

    return SlurmPipelineExecutor(
        stage.pipeline,
        tasks=stage.tasks,
        time=args.slurm_time,
        partition=args.slurm_partition,
        cpus_per_task=args.cpus_per_task,
        mem_per_cpu_gb=args.mem_per_cpu_gb,
        workers=args.workers if args.workers > 0 else -1,
        job_name=f"prepare_{stage.name}",
        logging_dir=logging_dir,
        slurm_logs_folder=os.path.join(args.work_dir, "slurm_logs", stage.name),
        depends=depends,
        env_command=args.slurm_env_command or f"source {os.path.join(sys.prefix, 'bin', 'activate')}",
        sbatch_args=dict(args.slurm_sbatch_args or {}),
        qos=args.slurm_qos,
        mail_type="NONE",
    )


def ensure_ray(args) -> None:
    """Connect to the Ray cluster at `ray_address`, or start a local one with `workers` CPUs."""
    import ray

    if ray.is_initialized():
        return
    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(1, args.workers), include_dashboard=False, log_to_driver=False)


def run_stages(stages: list[Stage], args) -> list[str] | None:
    """Run (or, on Slurm, submit) every stage in order; on a Slurm dry run, return the sbatch scripts' paths."""
    logs = os.path.join(args.work_dir, "logs")
    if args.executor == "slurm":
        return _submit(stages, logs, args)
    if args.executor == "ray":
        ensure_ray(args)
    build = _ray if args.executor == "ray" else _local
    for stage in stages:
        logger.info("Stage %s: %d tasks on the %s executor.", stage.name, stage.tasks, args.executor)
        executor = build(stage, os.path.join(logs, stage.name), args)
        executor.run()
        incomplete = executor.get_incomplete_ranks(skip_completed=True)
        if incomplete:
            raise RuntimeError(
                f"Stage {stage.name!r}: tasks {incomplete[:10]} did not complete (see {logs}/{stage.name}); "
                "rerun the same command to resume."
            )
    return None


def _submit(stages: list[Stage], logs: str, args) -> list[str] | None:
    import datatrove.executor.slurm as slurm

    scripts: list[str] = []
    submit = slurm.launch_slurm_job
    if args.dry_run:
        folder = os.path.join(args.work_dir, "slurm")
        os.makedirs(folder, exist_ok=True)

        def record(contents, job_id_retriever, *sbatch_args):
            """Stand-in for datatrove's sbatch call: keep the script and its sbatch arguments, submit nothing."""
            job_id = str(len(scripts) + 1)
            path = os.path.join(folder, f"{len(scripts):02d}.sbatch")
            with open(path, "w") as handle:
                handle.write(f"# sbatch {' '.join(sbatch_args)}\n{contents}")
            scripts.append(path)
            print(f"==> {path} (sbatch {' '.join(sbatch_args)}; dry run: not submitted)\n{contents}")
            return job_id

        slurm.launch_slurm_job = record
    try:
        executor = None
        for stage in stages:
            executor = _slurm(stage, os.path.join(logs, stage.name), args, executor)
        executor.run()  # launches its dependencies first, each with --dependency=afterok:<previous job>
    finally:
        slurm.launch_slurm_job = submit
    return scripts if args.dry_run else None
