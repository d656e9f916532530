"""Preparation on Slurm without a cluster: the sbatch scripts datatrove's Slurm executor writes for the stages
(dependencies, array sizes, the command each task runs), submitted to a stand-in `sbatch`, then task 0 of every
stage run from its own script with stand-in `srun` and `scontrol`, in dependency order; and the dry run."""

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from test_prepare import build_corpus

from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus

STAGES = ["read", "buckets", "clusters", "pack", "mix"]


def stand_ins(folder) -> str:
    """A bin/ folder with sbatch (records its arguments and script, prints a job id), srun and scontrol."""
    bin_dir = os.path.join(folder, "bin")
    os.makedirs(bin_dir)
    scripts = {
        "sbatch": 'n=$(ls "$SBATCH_LOG" | wc -l); mkdir "$SBATCH_LOG/$n"; echo "$@" > "$SBATCH_LOG/$n/args"; '
        'cp "${@: -1}" "$SBATCH_LOG/$n/script"; echo "Submitted batch job $((n + 100))"',
        "srun": 'while [ "$1" != launch_pickled_pipeline ]; do shift; done; exec "$@"',  # one task, here
        "scontrol": "echo localhost",
    }
    for name, body in scripts.items():
        path = os.path.join(bin_dir, name)
        with open(path, "w") as handle:
            handle.write(f"#!/bin/bash\n{body}\n")
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return bin_dir


def slurm_arguments(tmp_path, **overrides) -> PrepareArguments:
    corpus = build_corpus(str(tmp_path / "corpus"), web_documents=120, book_documents=40)
    return PrepareArguments(
        sources=[{"name": "web", "data_files": [corpus["paths"]["web"]], "weight": 1.0}],
        output_dir=str(tmp_path / "prepared"),
        block_size=64,
        quality_filters=["none"],
        minhash_num_perm=16,  # 8 bands of 2 rows: an 8-task bucket stage
        tasks=1,
        workers=0,
        tokenizer_vocab_size=400,
        executor="slurm",
        slurm_partition="cpu",
        slurm_time="01:00:00",
        cpus_per_task=2,
        mem_per_cpu_gb=3,
        **overrides,
    )


@pytest.mark.slow  # five Python processes (one per stage script), ~10 s each
def test_the_stages_are_array_jobs_chained_by_dependencies_and_each_runs_from_its_script(tmp_path, monkeypatch):
    bin_dir = stand_ins(str(tmp_path))
    log = tmp_path / "sbatch"
    log.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_LOG", str(log))
    args = slurm_arguments(tmp_path)
    assert prepare_corpus(args) is None  # submitted: the dataset is complete when stats.json appears

    calls = [((log / n / "args").read_text().split(), (log / n / "script").read_text()) for n in sorted(
        os.listdir(log), key=int)]  # fmt: skip
    jobs = {}  # stage -> (job id, its sbatch arguments, script)
    for number, (sbatch_args, script) in enumerate(calls):
        name = re.search(r"#SBATCH --job-name=(\S+)", script).group(1)
        if name.startswith("prepare_") and "merge_stats" not in script:  # datatrove adds a stats-merging job
            jobs[name.removeprefix("prepare_")] = (str(number + 100), sbatch_args, script)
    assert list(jobs) == STAGES
    tasks = {"read": 1, "buckets": 8, "clusters": 1, "pack": 1, "mix": 1}
    previous = None
    for stage, (job_id, sbatch_args, script) in jobs.items():
        assert f"#SBATCH --array=0-{tasks[stage] - 1}\n" in script
        assert "#SBATCH --partition=cpu" in script and "#SBATCH --time=01:00:00" in script
        assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem-per-cpu=3G" in script
        executor = os.path.join(args.work_dir, "logs", stage, "executor.pik")
        assert f"launch_pickled_pipeline {executor}" in script
        dependency = [a for a in sbatch_args if a.startswith("--dependency=")]
        assert dependency == ([f"--dependency=afterok:{previous}"] if previous else [])
        previous = job_id

    environment = {**os.environ, "SLURM_NODELIST": "localhost", "SLURM_ARRAY_TASK_ID": "0"}
    for stage in STAGES:  # task 0 of each stage, from the script as Slurm would run it
        script = os.path.join(args.work_dir, "logs", stage, "launch_script.slurm")
        done = subprocess.run(["bash", script], env=environment, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert os.path.isfile(os.path.join(args.work_dir, "logs", stage, "completions", "00000"))
    with open(os.path.join(args.output_dir, "stats.json")) as handle:
        stats = json.load(handle)
    # only task 0 of the 8 bucket/finder tasks ran: the exact duplicates of one hash range of 8 were found
    assert stats["sources"]["web"]["documents"]["read"] == 148 and stats["totals"]["train_blocks"] > 0
    assert 0 < stats["sources"]["web"]["dropped"]["exact_duplicate"] <= 10


def test_a_dry_run_writes_and_prints_the_scripts_and_submits_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no sbatch anywhere: a submission would fail
    result = prepare_corpus(slurm_arguments(tmp_path, dry_run=True))
    scripts = result["sbatch_scripts"]
    names = [re.search(r"--job-name=(\S+)", Path(path).read_text()).group(1) for path in scripts]
    stages = [n.removeprefix("prepare_") for n, p in zip(names, scripts) if "merge_stats" not in Path(p).read_text()]
    assert stages == STAGES
    printed = capsys.readouterr().out
    assert all(path in printed for path in scripts) and "dry run: not submitted" in printed


if __name__ == "__main__":
    pytest.main([__file__])
