"""The study's recipes (recipes/configs/paper/, arXiv 2507.00994) at paper scale: each dry-runs on a CPU and prints
the resolved run and a compute plan whose figures match a hand count for the 610M model, and each trains two steps
when shrunk (tiny model, short blocks, small batch), keeping its objective and schedule structure."""

import json
import os
import re

import pytest
import yaml
from _runs import REPO, pretrain, train_logs
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM
from hf_pretrain.models import build_config
from hf_pretrain.presets import MODEL_PRESETS
from hf_pretrain.resolve import load_resolved

PAPER = os.path.join(REPO, "recipes", "configs", "paper")
FROM_SCRATCH = ["clm", "mlm", "clm_then_mlm_25_75", "clm_then_mlm_50_50"]
CPT = ["cpt_mlm_from_clm", "cpt_mlm_from_mlm"]
STEPS, CPT_STEPS, BATCH_TOKENS, BLOCK = 42_000, 22_000, 2_359_296, 2048
VOCAB = 128_256  # the study's (Llama-3) vocabulary
H100, MFU = 989e12, 0.4


def config_path(name: str) -> str:
    return os.path.join(PAPER, f"{name}.yaml")


def test_the_folder_holds_the_six_recipes():
    assert sorted(f[:-5] for f in os.listdir(PAPER) if f.endswith(".yaml")) == sorted(FROM_SCRATCH + CPT)


# ---- hand counts for the 610M model ------------------------------------------------------------------------


def llama_610m_counts(vocab: int = VOCAB) -> dict[str, int]:
    """Parameters of a Llama decoder of the 610M shape, counted by hand from its dimensions."""
    hidden, layers, heads, kv_heads, inter = 1152, 26, 18, 6, 4096
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim  # q, o; k, v (grouped-query)
    layer = attention + 3 * hidden * inter + 2 * hidden  # SwiGLU gate/up/down, two RMSNorms
    body = layers * layer + hidden  # and the final norm
    embedding = vocab * hidden
    return {"body": body, "embedding": embedding, "total": body + 2 * embedding, "layers": layers, "hidden": hidden}


def expected_plan(steps: int) -> dict[str, str]:
    counts = llama_610m_counts()
    tokens = steps * BATCH_TOKENS
    flops_6nd = 6 * counts["total"] * tokens
    matmul = counts["body"] - (2 * counts["layers"] + 1) * counts["hidden"] + counts["embedding"]  # no norms; head
    per_token = 6 * matmul + 12 * counts["layers"] * counts["hidden"] * BLOCK
    flops = per_token * tokens
    return {
        "total": f"{counts['total']:,} total",
        "non_embedding": f"{counts['body']:,} non-embedding",
        "tokens": f"{tokens:,} ",
        "flops_6nd": f"{flops_6nd:.4g} (6·N·D",
        "flops": f"{flops:.4g} (6·N'·D + 12·L·d·T·D",
        "gpu_hours": f"{flops / (H100 * MFU) / 3600:,.1f} at 40% MFU on H100",
    }


def plan_section(printed: str) -> str:
    assert "resolved_run:" in printed, printed
    return printed[printed.index("# Compute plan") :]


def dry_run(argv: list[str], capsys) -> tuple[dict, str]:
    pretrain.main([*argv, "--dry_run"])
    printed = capsys.readouterr().out
    return yaml.safe_load(printed), plan_section(printed)  # the plan is YAML comments: the output still loads


def test_the_610m_hand_count_is_the_preset():
    counts = llama_610m_counts()
    preset = MODEL_PRESETS["llama-610m"]
    assert (preset["hidden_size"], preset["num_hidden_layers"], preset["intermediate_size"]) == (1152, 26, 4096)
    # The study's names count one vocabulary matrix: 460.1M body + 147.8M embedding ≈ 610M.
    assert round((counts["body"] + counts["embedding"]) / 1e7) == 61


@pytest.mark.parametrize("name", FROM_SCRATCH)
def test_paper_config_dry_runs_with_its_compute_plan(name, tmp_path, capsys):
    out = tmp_path / "run"
    printed, plan = dry_run([config_path(name), "--output_dir", str(out)], capsys)
    derived = printed["resolved_run"]
    assert derived["total_steps"] == STEPS and derived["tokens_per_step"] == BATCH_TOKENS
    assert derived["schedule"]["warmup_steps"] == 2000 and derived["schedule"]["decay_steps"] == 2000
    assert printed["learning_rate"] == 5e-4 and printed["bf16"] is True and printed["block_size"] == BLOCK
    assert (printed["adam_beta1"], printed["adam_beta2"], printed["adam_epsilon"]) == (0.9, 0.95, 1e-5)
    for figure in expected_plan(STEPS).values():
        assert figure in plan, (figure, plan)
    assert f"{VOCAB:,} (assumed: tokenizer_vocab_size" in plan
    assert "world size 1 x 12 per device x 96 accumulation x 2,048 tokens" in plan
    if name.startswith("clm_then_mlm"):
        switch = {"clm_then_mlm_25_75": 10_500, "clm_then_mlm_50_50": 21_000}[name]
        assert [start for start, _ in derived["phases"]] == [0, switch]
        assert f"steps {switch:,}-{STEPS - 1:,}: {STEPS - switch:,} steps" in plan
    if name != "clm":
        assert printed["mlm_probability"] == 0.4 and printed["mask_replace_prob"] == 1.0
    assert not out.exists()  # a dry run writes nothing


@pytest.mark.parametrize("preset, total", [("llama-210m", 310_266_624), ("llama-1b", None)])
def test_other_sizes_are_one_override_away(preset, total, tmp_path, capsys):
    _, plan = dry_run([config_path("mlm"), "--model_preset", preset, "--output_dir", str(tmp_path / "run")], capsys)
    printed_total = int(re.search(r"parameters\s+([\d,]+) total", plan).group(1).replace(",", ""))
    assert printed_total == total if total else printed_total > 1e9


@pytest.fixture(scope="module")
def paper_scale_checkpoints(tmp_path_factory, tokenizer):
    """Config-only folders with the 610M shape (what a dry run reads of a checkpoint: its config and tokenizer)."""
    folders = {}
    settings = {k: v for k, v in MODEL_PRESETS["llama-610m"].items() if k != "model_type"}
    for name, architecture in (("clm", "LlamaForCausalLM"), ("mlm", "LlamaForMaskedLM")):
        folder = str(tmp_path_factory.mktemp(f"paper-{name}"))
        LlamaConfig(**settings, vocab_size=VOCAB, architectures=[architecture]).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.mark.parametrize("name", CPT)
def test_cpt_config_dry_runs_from_a_checkpoint(name, paper_scale_checkpoints, tmp_path, capsys):
    source = paper_scale_checkpoints[name.rsplit("_", 1)[1]]
    argv = [config_path(name), "--model_name_or_path", source, "--output_dir", str(tmp_path / "run")]
    printed, plan = dry_run(argv, capsys)
    derived = printed["resolved_run"]
    assert derived["model_source"] == "checkpoint" and derived["phases"] == [[0, "mlm"]]
    assert derived["total_steps"] == CPT_STEPS and printed["mlm_probability"] == 0.4
    for figure in expected_plan(CPT_STEPS).values():
        assert figure in plan, (figure, plan)
    assert f"{VOCAB:,} (the checkpoint's vocab_size; the checkpoint's tokenizer has" in plan


def test_the_cpt_placeholders_name_the_pretraining_runs():
    for name, source in (("cpt_mlm_from_clm", "clm"), ("cpt_mlm_from_mlm", "mlm")):
        with open(config_path(name)) as handle:
            cpt = yaml.safe_load(handle)
        with open(config_path(source)) as handle:
            pretraining = yaml.safe_load(handle)
        assert cpt["model_name_or_path"] == pretraining["output_dir"]  # that run's final model and tokenizer


# ---- two training steps of each recipe, shrunk -------------------------------------------------------------

# 2 per device x 2 accumulation x 64 tokens; warmup 0 and a 1-step decay fit a 2-step WSD. Every other setting
# (objective, switch, masking, optimizer) is the config's. The held-out documents are scored once, at the end.
SHRINK = [
    "--tokenizer_vocab_size", "1024", "--block_size", "64", "--per_device_train_batch_size", "2",
    "--per_device_eval_batch_size", "16", "--global_batch_tokens", "256", "--warmup_steps", "0", "--decay_steps", "1",
    "--max_documents", "20", "--bf16", "false", "--logging_steps", "1", "--eval_strategy", "no",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory, tokenizer):
    """A tiny causal Llama and a tiny masked one, saved with their tokenizer, to continue pretraining from."""
    config = build_config("llama-tiny", tokenizer)
    folders = {}
    for name, model_class in (("clm", AutoModelForCausalLM), ("mlm", LlamaForMaskedLM)):
        folder = str(tmp_path_factory.mktemp(f"tiny-{name}"))
        model = model_class.from_config(config) if model_class is AutoModelForCausalLM else model_class(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.mark.parametrize("name", FROM_SCRATCH + CPT)
def test_paper_config_trains_two_steps_when_shrunk(name, tiny_checkpoints, tmp_path):
    out = str(tmp_path / "run")
    # 25% of 2 steps rounds to a switch at step 0 (no CLM phase): 4 steps put it at step 1.
    steps = 4 if name == "clm_then_mlm_25_75" else 2
    source = ["--model_name_or_path", tiny_checkpoints[name.rsplit("_", 1)[1]]] if name in CPT else []
    size = [] if name in CPT else ["--model_preset", "llama-tiny"]
    argv = [config_path(name), *size, *source, *SHRINK, "--max_steps", str(steps), "--output_dir", out]
    metrics = pretrain.main(argv)
    assert metrics["num_input_tokens_seen"] == steps * 256 and metrics["eval_loss"] > 0
    assert sorted(train_logs(out)) == list(range(1, steps + 1))
    assert all(entry["loss"] > 0 for entry in train_logs(out).values())
    arguments, derived = load_resolved(out)
    assert derived["gradient_accumulation_steps"] == 2 and derived["total_steps"] == steps
    assert derived["schedule"]["decay_steps"] == 1 and arguments["learning_rate"] == 5e-4
    expected_phases = {"clm": ["clm"], "clm_then_mlm_25_75": ["clm", "mlm"], "clm_then_mlm_50_50": ["clm", "mlm"]}
    phases = [phase for _, phase in derived["phases"]]
    assert [p.split("_")[0] for p in phases] == expected_phases.get(name, ["mlm"])
    if name.startswith("clm_then_mlm"):
        assert derived["phases"][1][0] == 1  # the switch, at the config's fraction of the shrunk run
    with open(os.path.join(out, "config.json")) as handle:
        architecture = json.load(handle)["architectures"][0]
    assert architecture == ("LlamaForCausalLM" if name == "clm" else "EuroBertForMaskedLM")  # masked: as EuroBERT
