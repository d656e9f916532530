"""The launch setup: global batch, the shipped Accelerate/DeepSpeed configs and their checks, real 2-process runs."""

import glob
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from hf_pretrain.training.distributed import check_accelerate_config, check_deepspeed_config, resolve_global_batch


@pytest.mark.parametrize(
    ("world", "per_device", "length", "tokens", "sequences", "accumulation"),
    [
        (1, 8, 128, 2048, None, 2),
        (64, 8, 4096, 4 * 2**20, None, 2),
        (4, 4, 512, None, 64, 4),
        (8, 12, 2048, 2_359_296, None, 12),  # 8 x 12 x 2048 x 12
    ],
)
def test_accumulation_makes_the_global_batch_exact(world, per_device, length, tokens, sequences, accumulation):
    got = resolve_global_batch(world, per_device, length, tokens=tokens, sequences=sequences)
    assert got == accumulation
    assert world * per_device * got * (length if tokens else 1) == (tokens or sequences)


def test_an_unreachable_global_batch_names_the_reachable_ones():
    # 2,373,120 tokens (a published global batch) is not a multiple of 2 x 8 x 4096 = 65,536.
    with pytest.raises(ValueError, match=r"global_batch_tokens=2373120 is not reachable.*multiple of 65536"):
        resolve_global_batch(2, 8, 4096, tokens=2_373_120)
    with pytest.raises(ValueError, match="not both"):
        resolve_global_batch(1, 1, 1, tokens=1, sequences=1)


def test_deepspeed_config_file_checks(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupDecayLR"}}')
    with pytest.raises(ValueError, match="'scheduler' block"):
        check_deepspeed_config(str(path))
    with pytest.raises(ValueError, match="no such config file"):
        check_deepspeed_config(str(tmp_path / "missing.json"))


# ---- every shipped config ----------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATE_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "accelerate", "*.yaml")))
DEEPSPEED_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "deepspeed", "*.json")))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=os.path.basename)
def test_every_accelerate_config_passes_the_checks(path, monkeypatch):
    monkeypatch.chdir(REPO)  # DeepSpeed JSON paths are relative to the repository root
    config = check_accelerate_config(path)
    assert config["num_processes"] % config["num_machines"] == 0
    with open(path) as handle:
        assert handle.readline().startswith("#")  # annotated: the first line says what the config is for


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=os.path.basename)
def test_every_deepspeed_config_leaves_schedule_optimizer_and_batch_to_the_trainer(path):
    with open(path) as handle:
        config = json.load(handle)
    check_deepspeed_config(config)
    assert "scheduler" not in config and "optimizer" not in config
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_machines": 2, "num_processes": 3, "main_process_ip": "10.0.0.1"}, "does not split evenly"),
        ({"num_machines": 2, "num_processes": 4}, "need main_process_ip"),
        ({"distributed_type": "MULTI_CPU", "num_processes": 2}, "starts a single process"),
        ({"distributed_type": "TPU_POD"}, "is unknown"),
        ({"distributed_type": "FSDP"}, "FSDP with use_cpu: true starts one process"),  # use_cpu is in cpu_2proc
    ],
)
def test_bad_accelerate_configs_are_refused(tmp_path, changes, message):
    with open(os.path.join(REPO, "configs", "accelerate", "cpu_2proc.yaml")) as handle:
        config = yaml.safe_load(handle)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**config, **changes}))
    with pytest.raises(ValueError, match=message):
        check_accelerate_config(str(path))


def test_zero3_without_gathering_weights_is_refused():
    with open(os.path.join(REPO, "configs", "deepspeed", "zero3.json")) as handle:
        config = json.load(handle)
    config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    with pytest.raises(ValueError, match="stage3_gather_16bit_weights_on_model_save"):
        check_deepspeed_config(config)


# Stand-ins for SLURM. sbatch reads the script's #SBATCH lines, then its own flags (which win, as in SLURM; only the
# --flag=value form), opens --output in the submit directory before the script runs and, like SLURM, does not
# create its folder (the job then fails without any log), copies the script to a spool folder and runs it there
# with the job's environment. srun runs the step once per node with its SLURM_NODEID.
SLURM_FAKES = {
    "sbatch": r"""
opts=(); while [[ $1 == --* ]]; do opts+=("$1"); shift; done
script=$1; shift
mapfile -t lines < <(sed -n 's/^#SBATCH \([^ ]*\).*/\1/p' "$script")
for o in "${lines[@]}" "${opts[@]}"; do
  case $o in --job-name=*) name=${o#*=};; --nodes=*) nodes=${o#*=};; --output=*) output=${o#*=};; esac
done
log=${output//%x/$name}; log=${log//%j/4242}
( : > "$log" ) 2>/dev/null || { echo "slurmstepd: error: could not open output file $log" >&2; exit 1; }
mkdir -p "$SPOOL" && cp "$script" "$SPOOL/slurm_script"
echo "${lines[@]} ${opts[@]}" > "$SPOOL/sbatch-options"
SLURM_JOB_ID=4242 SLURM_JOB_NAME=$name SLURM_NNODES=$nodes SLURM_JOB_NODELIST="node-[a-c]" \
  SLURM_SUBMIT_DIR=$PWD bash "$SPOOL/slurm_script" "$@" > "$log" 2>&1
""",
    "srun": r"""
echo "$@" > "$SPOOL/srun-args"; while [[ $1 == --* ]]; do shift; done
for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node "$@" || exit 1; done
""",
    "scontrol": 'printf "node-a\\nnode-b\\nnode-c\\n"',
    "accelerate": 'echo "$@" > "$SPOOL/accelerate-args-$SLURM_NODEID"; env | grep NCCL_ > "$SPOOL/nccl-env" || true',
    "python": "[[ $1 == recipes/check_launch_config.py && -f $2 ]]",  # the config check, on a config that exists
}


def test_slurm_job_starts_from_a_fresh_clone(tmp_path):
    """The job script, submitted from a fresh clone (no logs/ folder, nothing but the repository's files), writes
    its log, derives nodes, ranks and the head from SLURM, and gives srun the node's CPUs."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", REPO, str(clone)], check=True, timeout=60)
    script = os.path.join("recipes", "slurm", "pretrain.sbatch")
    shutil.copy(os.path.join(REPO, script), clone / script)  # the script as it stands here (same once committed)
    assert not (clone / "logs").exists()
    bin_dir, spool = tmp_path / "bin", tmp_path / "spool"
    bin_dir.mkdir()
    for name, body in SLURM_FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SPOOL": str(spool), "SLURM_GPUS_ON_NODE": "4",
           "SLURM_CPUS_ON_NODE": "64"}  # fmt: skip
    for name in ("NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "CPUS_PER_TASK", "GPUS_PER_NODE"):
        env.pop(name, None)

    def sbatch(*args, **extra):
        command = ["sbatch", *args, script, "run.yaml", "--max_steps", "9"]
        return subprocess.run(command, env={**env, **extra}, cwd=clone, capture_output=True, text=True, timeout=60)

    done = sbatch("--nodes=3")
    assert done.returncode == 0, done.stderr
    log = (clone / "hf_pretrain-4242.out").read_text()  # at the submit directory's root: no folder to create
    assert "3 nodes x 4 processes, 64 CPUs per node, head node-a:29500" in log
    for node in range(3):
        args = (spool / f"accelerate-args-{node}").read_text().split()
        assert args[args.index("--num_machines") + 1] == "3"
        assert args[args.index("--num_processes") + 1] == "12"  # total over all nodes
        assert args[args.index("--machine_rank") + 1] == str(node)
        assert args[args.index("--main_process_ip") + 1] == "node-a"
        assert args[-3:] == ["run.yaml", "--max_steps", "9"]
    assert (spool / "nccl-env").read_text().split() == ["TORCH_NCCL_ASYNC_ERROR_HANDLING=1"]  # not the deprecated
    assert "--cpus-per-task=64" in (spool / "srun-args").read_text().split()  # the node's CPUs, all of them
    options = (spool / "sbatch-options").read_text().split()
    assert any(o.startswith("--time=") for o in options) and not any(o.startswith("--cpus-per") for o in options)

    assert sbatch("--nodes=2", CPUS_PER_TASK="16").returncode == 0  # the documented variable
    assert "--cpus-per-task=16" in (spool / "srun-args").read_text().split()
    # What the job did before: a log in a folder a clone does not have; the stand-in fails as SLURM does, no log.
    failed = sbatch("--nodes=2", "--output=logs/%x-%j.out")
    assert failed.returncode != 0 and "could not open output file logs/hf_pretrain-4242.out" in failed.stderr
    assert not (clone / "logs").exists()
    elsewhere = subprocess.run(["bash", str(clone / script)], env={**env, "SLURM_NNODES": "1"}, cwd=tmp_path,
                               capture_output=True, text=True, timeout=30)  # fmt: skip
    assert elsewhere.returncode == 2 and "run it from the repository root" in elsewhere.stderr


# ---- real multi-process runs on CPU ------------------------------------------------------------------------------

TINY_RUN = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "1024", "--block_size", "32",
    "--per_device_train_batch_size", "4", "--max_steps", "5", "--max_documents", "40", "--logging_steps", "1",
    "--eval_steps", "5", "--save_steps", "5", "--warmup_steps", "1", "--decay_steps", "2", "--learning_rate", "1e-3",
    "--disable_tqdm", "true",
]  # fmt: skip
EXPECTED_LRS = [0.0, 1e-3, 1e-3, 1e-3, 5e-4]  # WSD: warmup 1, stable 2, linear decay 2 (logged one step behind)


def launch(tmp_path, launcher_args, env_extra=None, port=29541, extra=()):
    out = str(tmp_path / "run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "INITIAL_DIGEST": f"{out}-initial-{port}",
           **(env_extra or {})}  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args, "--main_process_port", str(port),
               os.path.join(REPO, "tests", "scripts", "pretrain_with_checksums.py"), *TINY_RUN, *extra, "--output_dir", out]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return out


def logged_learning_rates(out):
    with open(os.path.join(out, "trainer_state.json")) as handle:
        return [e["learning_rate"] for e in json.load(handle)["log_history"] if "loss" in e]


def rank_checksums(out):
    return [open(os.path.join(out, f"params-rank{r}.txt")).read().split() for r in (0, 1)]


def assert_same_start(out, port):
    """Both ranks' initial weights (the script's digest of the state dict `prepare_model` returns, gathered under
    ZeRO-3) equal a whole build of the same config with the run's seed (42) here: what DDP starts from."""
    from transformers import AutoConfig, set_seed

    from hf_pretrain.models import build_model

    digests = {pathlib.Path(f"{out}-initial-{port}-rank{rank}.txt").read_text().strip() for rank in (0, 1)}
    set_seed(42)
    model = build_model(AutoConfig.from_pretrained(os.path.join(out, "checkpoint-5")))
    expected = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        expected.update(name.encode())
        expected.update(tensor.detach().float().numpy().tobytes())
    assert digests == {expected.hexdigest()}


@pytest.mark.slow
def test_two_cpu_processes_with_the_shipped_config(tmp_path):
    out = launch(tmp_path, ["--config_file", os.path.join(REPO, "configs", "accelerate", "cpu_2proc.yaml")])
    (digest0, world0), (digest1, world1) = rank_checksums(out)
    assert world0 == world1 == "2" and digest0 == digest1  # both ranks end with identical parameters
    assert logged_learning_rates(out) == pytest.approx(EXPECTED_LRS)
    assert os.path.isdir(os.path.join(out, "checkpoint-5"))
    assert_same_start(out, 29541)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(os.path.join(out, "checkpoint-5"))


DEEPSPEED_ENV = {"DS_ACCELERATOR": "cpu"}  # DeepSpeed's CPU accelerator; the processes talk over gloo


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_cpu_processes_keeps_the_trainers_schedule(tmp_path, stage):
    pytest.importorskip("deepspeed")
    config = os.path.join(REPO, "configs", "accelerate", f"deepspeed_zero{stage}.yaml")
    launcher = ["--config_file", config, "--num_machines", "1", "--num_processes", "2", "--machine_rank", "0",
                "--main_process_ip", "127.0.0.1"]  # fmt: skip
    out = launch(tmp_path, [*launcher], env_extra=DEEPSPEED_ENV, port=29550 + stage)
    assert os.path.isdir(os.path.join(out, "checkpoint-5", "global_step5"))  # a DeepSpeed checkpoint
    # The Trainer's WSD learning rates, not a DeepSpeed scheduler's.
    assert logged_learning_rates(out) == pytest.approx(EXPECTED_LRS)
    assert_same_start(out, 29550 + stage)  # ZeRO-3: built partitioned (zero3_init_flag), same weights as DDP
    if stage == 3:
        # The gathered 16-bit weights of the ZeRO-3 checkpoint load into a plain model and equal the fp32 master
        # weights that DeepSpeed's own converter reconstructs from the shards.
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(os.path.join(out, "checkpoint-5"))
        master = get_fp32_state_dict_from_zero_checkpoint(os.path.join(out, "checkpoint-5"))
        for name, parameter in model.state_dict().items():
            if name in master:
                torch.testing.assert_close(parameter, master[name].to(parameter.dtype))
        assert set(master) <= set(model.state_dict())
        # Resume the ZeRO-3 run on the same number of processes: the DeepSpeed shards and the schedule come back.
        # Without zero3_init_flag this time: the model it builds (before the checkpoint's weights replace them)
        # starts from the same weights too.
        resumed = launch(tmp_path, [*launcher, "--zero3_init_flag", "false"], env_extra=DEEPSPEED_ENV,
                         port=29560 + stage,
                         extra=["--resume_from_checkpoint", "true", "--max_steps", "7", "--save_steps", "100"])  # fmt: skip
        assert_same_start(resumed, 29560 + stage)
        assert logged_learning_rates(resumed)[:5] == pytest.approx(EXPECTED_LRS)
        assert len(logged_learning_rates(resumed)) == 7
