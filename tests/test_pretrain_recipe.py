"""End to end: the pretraining recipe trains a tiny model and saves it; it loads back as the model the run evaluated
and generates its own greedy predictions."""

import math
import os
import subprocess
import sys

import pytest
import torch
from _runs import REPO, pretrain, train_logs
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_pretrain.data.build import held_out_blocks
from hf_pretrain.resolve import load_run_arguments

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

    # What was saved is the model the run evaluated: its loss on the run's held-out blocks, recomputed here from
    # the saved model and tokenizer with every document run alone (document_attention: isolated, the default), is
    # the logged eval_loss: the Trainer's mean of per-batch token means, weighted by batch size.
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    _, data_args, training_args = load_run_arguments(out)
    held_out = held_out_blocks(data_args, tokenizer, training_args.seed)
    blocks = torch.tensor(held_out["input_ids"])
    batch_size = training_args.per_device_eval_batch_size
    batches = [documents_alone(model, blocks[i : i + batch_size], held_out["document_lengths"][i : i + batch_size])
               for i in range(0, len(blocks), batch_size)]  # fmt: skip
    expected = sum(nll / count * len(rows) for nll, count, rows in batches) / len(blocks)
    assert expected == pytest.approx(metrics["eval_loss"], rel=1e-5)
    _, accuracy = next_token_scores(model, blocks)
    # It predicts held-out text: greedy next-token accuracy far above an untrained model's (about 1 / 1024).
    _, untrained_accuracy = next_token_scores(AutoModelForCausalLM.from_config(model.config).eval(), blocks)
    assert accuracy > 0.03 > untrained_accuracy, (accuracy, untrained_accuracy)

    # generate() with the saved generation config continues greedily with the model's own predictions.
    prompt = blocks[:1, :16]
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    expected = prompt
    with torch.no_grad():
        for _ in range(8):
            expected = torch.cat([expected, model(input_ids=expected).logits[:, -1:].argmax(-1)], dim=1)
    assert generated.tolist() == expected[:, : generated.shape[1]].tolist()
    assert generated.shape[1] == 24 or generated[0, -1] == tokenizer.eos_token_id


def documents_alone(model, blocks: torch.Tensor, pieces) -> tuple[float, int, torch.Tensor]:
    """(summed next-token NLL, predictions, blocks) with every document piece of `blocks` run on its own."""
    total, count = 0.0, 0
    with torch.no_grad():
        for block, lengths in zip(blocks, pieces):
            for piece in block.split(list(lengths)):
                if len(piece) > 1:
                    logits = model(input_ids=piece[None]).logits[0, :-1].float()
                    total += torch.nn.functional.cross_entropy(logits, piece[1:], reduction="sum").item()
                    count += len(piece) - 1
    return total, count, blocks


def next_token_scores(model, blocks: torch.Tensor) -> tuple[float, float]:
    """Mean next-token cross-entropy and greedy accuracy of `model` over full blocks of token ids."""
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in blocks.split(16):
            logits, targets = model(input_ids=batch).logits[:, :-1].float(), batch[:, 1:]
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
            correct += (logits.argmax(-1) == targets).sum().item()
            count += targets.numel()
    return total / count, correct / count


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
    (out / "checkpoint-5").mkdir(parents=True)  # a complete one: weights that load and a trainer state
    save_file({"w": torch.zeros(1)}, str(out / "checkpoint-5" / "model.safetensors"))
    (out / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
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
