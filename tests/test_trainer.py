"""PretrainingTrainer end to end: WSD learning rates, the CLM→MLM switch, exact resume, every recipe config."""

import glob
import json
import os
import shutil

import pytest
import torch
from _runs import REPO, pretrain, train_logs, wordpiece_bert
from _runs import log_history as history
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from hf_pretrain.checkpoint_state import schedule_from_checkpoint
from hf_pretrain.schedules import wsd_schedule
from hf_pretrain.training.distributed import check_deepspeed_config

TINY = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "1024", "--block_size", "32",
    "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--logging_steps", "1",
    "--eval_strategy", "no", "--max_documents", "40", "--seed", "0", "--disable_tqdm", "true",
]  # fmt: skip


def test_learning_rates_follow_the_closed_form_and_are_stored(tmp_path):
    out = str(tmp_path / "run")
    pretrain.main([*TINY, "--output_dir", out, "--max_steps", "20", "--warmup_steps", "0.2", "--decay_steps", "5",
                   "--decay_type", "1-sqrt", "--min_lr_ratio", "0.1", "--save_steps", "10"])  # fmt: skip
    schedule = wsd_schedule(20, warmup=4, decay=5, decay_type="1-sqrt", min_lr_ratio=0.1)
    # The learning rate logged at step s is the one that step's update used: peak x ratio(s - 1).
    expected = {
        1: 0.1,
        3: 0.1 + 0.9 * 2 / 4,
        5: 1.0,
        15: 1.0,
        17: 0.1 + 0.9 * (1 - 0.2**0.5),
        20: 0.1 + 0.9 * (1 - 0.8**0.5),
    }
    logs = train_logs(out)
    for step, ratio in expected.items():
        assert logs[step]["learning_rate"] == pytest.approx(3e-3 * ratio, rel=1e-6), step
        assert schedule.lr_ratio(step - 1) == pytest.approx(ratio)
    assert schedule_from_checkpoint(os.path.join(out, "checkpoint-10")) == schedule


def test_fraction_and_steps_give_the_same_run(tmp_path):
    runs = []
    for warmup, decay, name in (("0.25", "0.25", "fractions"), ("3", "3", "steps")):
        out = str(tmp_path / name)
        pretrain.main(
            [*TINY, "--output_dir", out, "--max_steps", "12", "--warmup_steps", warmup, "--decay_steps", decay]
        )
        runs.append([e["learning_rate"] for e in train_logs(out).values()])
    assert runs[0] == runs[1]


def _keep_only(directory, checkpoint):
    for name in os.listdir(directory):
        if name not in (checkpoint, "tokenizer"):
            path = os.path.join(directory, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


SWITCH = [*TINY, "--objective", "clm_then_mlm", "--switch_fraction", "0.5", "--mlm_probability", "0.3",
          "--max_steps", "12", "--warmup_steps", "2", "--decay_steps", "4", "--save_steps", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def switched_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("switch") / "run")
    pretrain.main([*SWITCH, "--output_dir", out])
    return out


def test_switch_changes_loss_attention_and_saves_the_boundary(switched_run):
    logs = train_logs(switched_run)
    assert all("perplexity" in logs[s] and "mlm_accuracy" not in logs[s] for s in range(1, 7))  # CLM steps 0..5
    assert all("mlm_accuracy" in logs[s] and "perplexity" not in logs[s] for s in range(7, 13))  # MLM steps 6..11
    assert os.path.isdir(os.path.join(switched_run, "checkpoint-6"))  # the boundary checkpoint
    with open(os.path.join(switched_run, "checkpoint-6", "config.json")) as handle:
        assert json.load(handle)["is_causal"] is True  # saved after the last CLM step, before the switch
    # The final model is bidirectional and loads for masked-LM inference through the Auto class, with transformers'
    # own EuroBERT class (a masked Llama is written in that format), and the logits show it: position 0 sees the end.
    model = AutoModelForMaskedLM.from_pretrained(switched_run).eval()
    assert type(model).__name__ == "EuroBertForMaskedLM"
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    changed = ids.clone()
    changed[0, -1] = 11
    with torch.no_grad():
        first, second = model(input_ids=ids).logits[0, 0], model(input_ids=changed).logits[0, 0]
    assert not torch.allclose(first, second)  # position 0 sees the last token: bidirectional
    # The CLM checkpoint from before the switch loads as a causal LM.
    causal = AutoModelForCausalLM.from_pretrained(os.path.join(switched_run, "checkpoint-4"))
    assert causal.config.is_causal is not False


@pytest.mark.parametrize("checkpoint", ["checkpoint-4", "checkpoint-8"])  # before and after the switch
def test_resume_reproduces_the_uninterrupted_run(switched_run, tmp_path, checkpoint):
    out = str(tmp_path / "resumed")
    shutil.copytree(switched_run, out)
    _keep_only(out, checkpoint)
    # Changed arguments must not move the switch or the schedule: they come from the checkpoint.
    pretrain.main([*SWITCH, "--output_dir", out, "--resume_from_checkpoint", "true", "--switch_fraction", "0.25",
                   "--decay_steps", "0.5"])  # fmt: skip
    full, resumed = train_logs(switched_run), train_logs(out)
    assert sorted(resumed) == list(range(1, 13))  # the checkpoint's history, then the resumed steps
    for step in resumed:
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-5), step
        assert resumed[step]["learning_rate"] == pytest.approx(full[step]["learning_rate"], rel=1e-9), step


def test_continued_mlm_pretraining_with_lora_from_a_clm_checkpoint(tmp_path):
    from safetensors.torch import load_file

    source = str(tmp_path / "clm")
    pretrain.main([*TINY, "--output_dir", source, "--max_steps", "4", "--save_steps", "4"])
    out = str(tmp_path / "cpt")
    pretrain.main([*TINY, "--output_dir", out, "--max_steps", "3", "--objective", "mlm", "--model_name_or_path",
                   os.path.join(source, "checkpoint-4"), "--lora_rank", "4"])  # fmt: skip
    adapter = load_file(os.path.join(out, "adapter", "adapter_model.safetensors"))
    assert adapter and all("lora_" in name for name in adapter)  # only the adapter is trained and saved
    logs = train_logs(out)
    assert all("mlm_accuracy" in logs[s] for s in (1, 2, 3))
    # The result loads with the standard tools as the masked model it is (before: an adapter with an absolute base
    # path that AutoPeftModel refused, and that pipeline() put onto a causal model).
    from peft import AutoPeftModel
    from transformers import pipeline

    from hf_pretrain import LlamaForMaskedLM

    assert not os.path.exists(os.path.join(out, "adapter_config.json"))
    assert isinstance(pipeline("fill-mask", model=out).model, LlamaForMaskedLM)
    peft_model = AutoPeftModel.from_pretrained(os.path.join(out, "adapter"))
    assert isinstance(peft_model.get_base_model(), LlamaForMaskedLM)


CONFIG_OVERRIDES = ["--max_steps", "3", "--eval_steps", "3", "--save_steps", "3", "--logging_steps", "1",
                    "--max_documents", "30", "--tokenizer_vocab_size", "1024", "--per_device_train_batch_size", "4",
                    "--warmup_steps", "1", "--decay_steps", "1", "--disable_tqdm", "true"]  # fmt: skip


# Every pretraining config; the configs of other recipes (prepare_data, ablation, ...) have their own tests.
PRETRAINING_CONFIGS = sorted(
    name
    for name in map(os.path.basename, glob.glob(os.path.join(REPO, "recipes", "configs", "*.yaml")))
    if not name.startswith(("prepare_", "ablation", "finetune", "evaluate"))
)


@pytest.mark.slow
@pytest.mark.parametrize("config", PRETRAINING_CONFIGS)
def test_every_recipe_config_trains(tmp_path, config):
    path = os.path.join(REPO, "recipes", "configs", config)
    extra = []
    if config == "cpt_mlm_from_clm.yaml":  # branch from a stable-phase CLM checkpoint made here
        source = str(tmp_path / "clm")
        pretrain.main([os.path.join(REPO, "recipes", "configs", "clm_wsd.yaml"), *CONFIG_OVERRIDES,
                       "--output_dir", source, "--save_steps", "2"])  # fmt: skip
        extra = ["--cooldown_from", os.path.join(source, "checkpoint-2")]
    if config == "dapt_encoder.yaml":  # a local BERT checkpoint with its own WordPiece tokenizer, on local text
        corpus = tmp_path / "domain.txt"
        corpus.write_text("\n\n".join(["the cells divide and the tissue grows.", "a protein folds into shape."] * 40))
        wordpiece_bert(tmp_path / "bert", corpus.read_text().split("\n\n"))
        extra = ["--model_name_or_path", str(tmp_path / "bert"), "--data_files", str(corpus), "--block_size", "32"]
        extra += ["--validation_fraction", "0.2"]  # a held-out set of at least one block
    out = str(tmp_path / "run")
    metrics = pretrain.main([path, *CONFIG_OVERRIDES, *extra, "--output_dir", out])
    losses = [e["loss"] for e in history(out) if "loss" in e]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--objective", "mlm", "--model_preset", "t5-tiny"],
            "needs an encoder or a decoder-only model; t5 is an encoder-decoder",
        ),
        (["--objective", "span_corruption"], "needs span_decoder_only: true"),
        (["--objective", "prefix_lm", "--attn_implementation", "flash_attention_2"], "takes no 4D mask"),
        (["--max_steps", "10", "--warmup_steps", "6", "--decay_steps", "5"], "exceeds total_steps=10"),
    ],
)
def test_impossible_runs_stop_before_any_work(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        pretrain.main([*TINY, "--output_dir", str(tmp_path), "--max_steps", "10", *argv])
    assert not os.path.exists(os.path.join(tmp_path, "tokenizer"))  # stopped before the tokenizer was trained


@pytest.mark.parametrize("block", ["scheduler", "optimizer"])
def test_deepspeed_config_with_its_own_schedule_or_optimizer_is_refused(block):
    with pytest.raises(ValueError, match=f"has a '{block}' block"):
        check_deepspeed_config({"train_batch_size": "auto", block: {"type": "WarmupLR", "params": {}}})
    check_deepspeed_config({"train_batch_size": "auto", "zero_optimization": {"stage": 2}})  # fine


@pytest.mark.parametrize("value", ["0", "1", "1.5"])
def test_switch_fraction_outside_the_open_interval_is_refused(tmp_path, capsys, value):
    with pytest.raises(SystemExit):
        pretrain.main(
            [*TINY, "--output_dir", str(tmp_path), "--objective", "clm_then_mlm", "--switch_fraction", value]
        )
    assert "switch_fraction must be in (0, 1)" in capsys.readouterr().err
