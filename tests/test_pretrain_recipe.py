"""End to end: the pretraining recipe trains a tiny model, saves it, and it loads back and generates."""

import math
import os
import subprocess
import sys

import pytest
import torch
from _runs import REPO, pretrain, train_logs
from transformers import AutoModelForCausalLM, AutoTokenizer

TINY = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "1024", "--block_size", "32",
    "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--logging_steps", "5",
    "--eval_steps", "20", "--save_steps", "20", "--max_documents", "40", "--seed", "0",
]  # fmt: skip


def logged_losses(output_dir):
    return [entry["loss"] for entry in train_logs(output_dir).values()]


def test_recipe_trains_saves_and_generates(tmp_path):
    out = str(tmp_path / "run")
    metrics = pretrain.main([*TINY, "--output_dir", out, "--max_steps", "40"])
    losses = logged_losses(out)
    # It learns: well below the loss of a uniform guess over the vocabulary (ln 1024 = 6.93), and still falling.
    assert losses[-1] < math.log(1024) - 0.8 and losses[-1] < losses[0] - 0.5, losses
    assert metrics["eval_perplexity"] == pytest.approx(torch.tensor(metrics["eval_loss"]).exp().item(), rel=1e-4)
    assert metrics["num_input_tokens_seen"] == 40 * 8 * 32
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert os.path.isfile(os.path.join(out, "resolved_config.yaml"))
    assert os.path.isdir(os.path.join(out, "checkpoint-40"))

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("The for statement", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8 or generated[0, -1] == tokenizer.eos_token_id
    assert isinstance(tokenizer.decode(generated[0]), str)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    pretrain.main([*TINY, "--output_dir", out, "--max_steps", "40"])
    full = logged_losses(out)
    # Same run, stopped at the checkpoint of step 20 (as if interrupted), then resumed to 40.
    out2 = str(tmp_path / "run2")
    pretrain.main([*TINY, "--output_dir", out2, "--max_steps", "40", "--save_steps", "20"])
    shutil_rmtree_except(out2, keep="checkpoint-20")
    pretrain.main([*TINY, "--output_dir", out2, "--max_steps", "40", "--resume_from_checkpoint", "true"])
    resumed = logged_losses(out2)
    assert resumed == pytest.approx(full, rel=1e-4)


def shutil_rmtree_except(directory, keep):
    import shutil

    for name in os.listdir(directory):
        if name != keep and name != "tokenizer":
            path = os.path.join(directory, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def test_existing_checkpoints_are_never_overwritten_silently(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        pretrain.main([*TINY, "--output_dir", str(out), "--max_steps", "5"])


def test_block_size_beyond_positions_stops_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="block_size=4096 exceeds the model's max_position_embeddings=512"):
        pretrain.main([*TINY, "--output_dir", str(tmp_path), "--block_size", "4096"])


@pytest.mark.slow
def test_accelerate_launch_runs_the_recipe(tmp_path):
    out = str(tmp_path / "run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
               os.path.join(REPO, "recipes", "pretrain.py"), *TINY, "--output_dir", out, "--max_steps", "6"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
