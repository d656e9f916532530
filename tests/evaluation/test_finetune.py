"""The fine-tuning protocol: every task type end to end on its built-in task, weights and attention of the task
models, best learning rate on validation with an interval over seeds, LoRA."""

import importlib.util
import math
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file

from hf_pretrain.evaluation import (
    FinetuneArguments,
    builtin_task,
    is_masked_lm,
    load_task_model,
    run_finetuning,
    summarize,
)
from hf_pretrain.models import build_config, build_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}


def _recipe(name):
    # Loaded under another module name: `recipes/evaluate.py` must not shadow the `evaluate` package.
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", os.path.join(REPO, "recipes", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """A causal-LM and a masked-LM checkpoint (untrained: the protocol's plumbing is under test, not its scores)."""
    paths = {}
    for name, masked in (("clm", False), ("mlm", True)):
        transformers.set_seed(0)
        model = build_model(build_config("llama-tiny", tokenizer, TINY), masked_decoder=masked)
        path = str(tmp_path_factory.mktemp(name))
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[name] = path
    return paths


def test_every_task_type_runs_end_to_end_on_its_builtin_task(checkpoints, tmp_path):
    out = str(tmp_path / "eval")
    summary = _recipe("finetune_eval").main(["--model_name_or_path", checkpoints["mlm"], "--learning_rates", "1e-3", "3e-3",
                                             "--seeds", "0", "1", "--max_steps", "4", "--output_dir", out])  # fmt: skip
    assert [row["type"] for row in summary] == ["sc", "tc", "qa", "ir"]
    assert [row["metric"] for row in summary] == ["accuracy", "f1", "f1", "ndcg@10"]
    for row in summary:
        assert row["best_learning_rate"] in (1e-3, 3e-3) and row["seeds"] == 2
        assert 0.0 <= row["mean"] <= 1.0 and row["ci_low"] <= row["mean"] <= row["ci_high"]
    for name in ("runs.csv", "runs.json", "summary.csv", "summary.json", "summary.md"):
        assert os.path.isfile(os.path.join(out, name))
    with open(os.path.join(out, "runs.csv")) as handle:
        assert len(handle.readlines()) == 1 + 4 * 2 * 2  # header, then tasks x rates x seeds
    with open(os.path.join(out, "summary.md")) as handle:
        assert "| qa-builtin | f1 |" in handle.read()


@pytest.mark.parametrize("kind", ["sc", "tc", "qa", "ir"])
def test_task_models_carry_the_checkpoint_backbone(checkpoints, kind):
    saved = load_file(os.path.join(checkpoints["clm"], "model.safetensors"))
    model = load_task_model(kind, checkpoints["clm"], num_labels=3)
    weights = {
        name.split("layers.", 1)[-1]: p for name, p in model.named_parameters() if "layers.0.self_attn.q_proj" in name
    }
    assert len(weights) == 1  # e.g. LlamaForQuestionAnswering names its backbone `transformer`, not `model`
    assert torch.equal(next(iter(weights.values())), saved["model.layers.0.self_attn.q_proj.weight"])


def _first_position_changes(model, kind):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    changed = ids.clone()
    changed[0, -1] = 10
    backbone = model.backbone if kind in ("sc", "ir") else model.model
    with torch.no_grad():
        first, second = (
            backbone(input_ids=ids).last_hidden_state[0, 0],
            backbone(input_ids=changed).last_hidden_state[0, 0],
        )
    return not torch.allclose(first, second)


def test_attention_follows_the_checkpoint_unless_overridden(checkpoints):
    assert is_masked_lm(transformers.AutoConfig.from_pretrained(checkpoints["mlm"]))
    assert not is_masked_lm(transformers.AutoConfig.from_pretrained(checkpoints["clm"]))
    assert _first_position_changes(load_task_model("sc", checkpoints["mlm"]), "sc")  # bidirectional
    assert not _first_position_changes(load_task_model("tc", checkpoints["clm"]), "tc")  # causal
    assert _first_position_changes(load_task_model("tc", checkpoints["clm"], attention="bidirectional"), "tc")
    assert not _first_position_changes(load_task_model("ir", checkpoints["mlm"], attention="causal"), "ir")


def test_lora_trains_only_the_adapter_and_the_head(checkpoints, tmp_path):
    model = load_task_model("tc", checkpoints["clm"], num_labels=2, lora_rank=4)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("score.") for name in trainable)
    assert any(name.startswith("score.") for name in trainable)
    args = FinetuneArguments(model_name_or_path=[checkpoints["clm"]], tasks=["tc"], learning_rates=[1e-3], seeds=[0],
                             max_steps=2, lora_rank=4, output_dir=str(tmp_path))  # fmt: skip
    runs, summary = run_finetuning(args)
    assert len(runs) == 1 and math.isfinite(runs[0]["train_loss"])


def test_runs_are_reproducible_and_named_by_label(checkpoints):
    task = builtin_task("sc")
    args = FinetuneArguments(model_name_or_path=[checkpoints["clm"]], learning_rates=[1e-3], seeds=[3], max_steps=3)
    first, _ = run_finetuning(args, [task], labels=["my-clm"])
    second, _ = run_finetuning(args, [task], labels=["my-clm"])
    assert first[0]["checkpoint"] == "my-clm"
    drop = ("seconds",)
    assert {k: v for k, v in first[0].items() if k not in drop} == {
        k: v for k, v in second[0].items() if k not in drop
    }


def test_best_rate_is_chosen_on_validation_and_the_interval_uses_its_test_scores():
    task = builtin_task("sc")
    runs = [
        {"checkpoint": "c", "learning_rate": lr, "seed": seed, "validation_accuracy": val, "test_accuracy": test}
        for lr, seed, val, test in [
            (1e-4, 0, 0.60, 0.90), (1e-4, 1, 0.62, 0.92),  # best test, but worse validation
            (1e-3, 0, 0.70, 0.80), (1e-3, 1, 0.72, 0.84),
            (1e-2, 0, float("nan"), 0.5), (1e-2, 1, 0.5, 0.5),  # a diverged run
        ]
    ]  # fmt: skip
    row = summarize(runs, task)
    assert row["best_learning_rate"] == 1e-3 and row["validation_mean"] == pytest.approx(0.71)
    half = 12.706204736 * math.sqrt(0.0008) / math.sqrt(2)
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx((0.82, 0.82 - half, 0.82 + half))
    assert row["test_std"] == pytest.approx(math.sqrt(0.0008))
    assert row["lr_sensitivity"] == pytest.approx(0.71 - (0.61 + 0.71) / 2)  # the NaN rate is left out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "xx"], "tasks: 'xx' must start with a task type"),
        (["--learning_rates", "0"], "learning_rates must be positive"),
        (["--attention", "sideways"], "attention must be one of"),
        (["--warmup_ratio", "1.5"], "warmup_ratio must be in"),
    ],
)
def test_bad_settings_stop_with_a_message_naming_the_field(argv, message, capsys):
    with pytest.raises(SystemExit):
        _recipe("finetune_eval").main(["--model_name_or_path", "x", *argv])
    assert message in capsys.readouterr().err
