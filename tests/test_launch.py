"""The launch setup: global batch, the shipped Accelerate/DeepSpeed configs and their checks, real 2-process runs."""

import glob
import json
import os
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


def test_slurm_script_derives_nodes_rank_and_head_from_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {
        "scontrol": 'printf "node-a\\nnode-b\\nnode-c\\n"',
        "srun": 'shift; exec "$@"',  # run the per-node command once, as node SLURM_NODEID
        "accelerate": f'echo "$@" > {tmp_path}/accelerate-args',
        "python": "exit 0",  # the config check
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "3", "SLURM_NODEID": "2",
           "SLURM_JOB_NODELIST": "node-[a-c]", "SLURM_GPUS_ON_NODE": "4"}  # fmt: skip
    script = os.path.join(REPO, "recipes", "slurm", "pretrain.sbatch")
    subprocess.run(["bash", script, "run.yaml", "--max_steps", "9"], env=env, cwd=REPO, check=True, timeout=30)
    args = (tmp_path / "accelerate-args").read_text().split()
    assert args[args.index("--num_machines") + 1] == "3"
    assert args[args.index("--num_processes") + 1] == "12"  # total over all nodes
    assert args[args.index("--machine_rank") + 1] == "2"
    assert args[args.index("--main_process_ip") + 1] == "node-a"
    assert args[-3:] == ["run.yaml", "--max_steps", "9"]


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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
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


@pytest.mark.slow
def test_two_cpu_processes_with_the_shipped_config(tmp_path):
    out = launch(tmp_path, ["--config_file", os.path.join(REPO, "configs", "accelerate", "cpu_2proc.yaml")])
    (digest0, world0), (digest1, world1) = rank_checksums(out)
    assert world0 == world1 == "2" and digest0 == digest1  # both ranks end with identical parameters
    assert logged_learning_rates(out) == pytest.approx(EXPECTED_LRS)
    assert os.path.isdir(os.path.join(out, "checkpoint-5"))
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
        resumed = launch(tmp_path, [*launcher], env_extra=DEEPSPEED_ENV, port=29560 + stage,
                         extra=["--resume_from_checkpoint", "true", "--max_steps", "7", "--save_steps", "100"])  # fmt: skip
        assert logged_learning_rates(resumed)[:5] == pytest.approx(EXPECTED_LRS)
        assert len(logged_learning_rates(resumed)) == 7
