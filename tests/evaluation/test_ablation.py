"""The objective ablation: grid parsing and checks, and a two-configuration smoke grid end to end."""

import ast
import csv
import importlib.util
import os

import pytest

from hf_pretrain.evaluation import AblationArguments, GridEntry
from hf_pretrain.resolve import load_run_arguments

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_grid_entries_parse_with_their_numbers():
    assert GridEntry.parse("mlm", 0.3) == GridEntry("mlm", "mlm", 0.3)
    assert GridEntry.parse("mlm:0.15", 0.3).value == 0.15
    entry = GridEntry.parse("clm_then_mlm:0.25", 0.3)
    assert (entry.kind, entry.value, entry.slug) == ("clm_then_mlm", 0.25, "clm_then_mlm_0.25")
    assert entry.describe() == "CLM 25% → MLM 75%"
    assert GridEntry.parse("cpt_from_clm:0.5", 0.3).describe() == "CLM 50% → MLM CPT 50%"


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["clm:0.5"], "clm takes no number"),
        (["bert"], "must start with one of"),
        (["clm_then_mlm"], "needs a fraction"),
        (["mlm:1.5"], "must be in"),
        (["mlm:x"], "is not a number"),
        (["cpt_from_clm:0.5"], "branches from the 'clm' run"),
        (["mlm", "cpt_from_mlm:0.5"], None),  # the source run is there: fine
        (["clm", "cpt_from_clm:0.3"], "branches at a step without a checkpoint"),
        (["clm", "clm"], "duplicate"),
    ],
)
def test_grid_checks_name_the_problem(grid, message):
    if message is None:
        AblationArguments(grid=grid)
        return
    with pytest.raises(ValueError, match=message):
        AblationArguments(grid=grid)


def test_other_settings_are_checked():
    with pytest.raises(ValueError, match="early_fraction=0.3 must be in"):
        AblationArguments(early_fraction=0.3)
    with pytest.raises(ValueError, match="tasks must be among"):
        AblationArguments(tasks=["sc", "ner"])
    with pytest.raises(ValueError, match="data_files: no such file"):
        AblationArguments(data_files=["/no/such/corpus.txt"])
    with pytest.raises(ValueError, match="weight_decay must be non-negative"):
        AblationArguments(weight_decay=-0.1)
    with pytest.raises(ValueError, match=r"adam_beta2 must be in \[0, 1\)"):
        AblationArguments(adam_beta2=1.0)
    with pytest.raises(ValueError, match="max_grad_norm must be non-negative"):
        AblationArguments(max_grad_norm=-1.0)
    defaults = AblationArguments()
    assert (defaults.weight_decay, defaults.adam_beta2, defaults.max_grad_norm) == (0.1, 0.95, 1.0)


def test_the_settings_and_the_report_do_not_import_the_ablation():
    """ablation → ablation_report → ablation_config, one direction only (no import circle)."""
    for name in ("ablation_config.py", "ablation_report.py"):
        with open(os.path.join(REPO, "hf_pretrain", "evaluation", name)) as handle:
            tree = ast.parse(handle.read())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "hf_pretrain.evaluation.ablation" not in imported, name


@pytest.mark.slow
def test_a_two_configuration_smoke_grid_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("recipe_ablation", os.path.join(REPO, "recipes", "ablation.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = str(tmp_path / "ablation")
    argv = ["--grid", "clm", "mlm", "--max_steps", "8", "--block_size", "32", "--batch_size", "8",
            "--max_characters", "60000", "--task_sizes", "24", "12", "12", "--learning_rates", "1e-3", "3e-3",
            "--seeds", "0", "1", "--finetune_max_steps", "2", "--save_fraction", "0.5", "--early_fraction", "0.5",
            "--weight_decay", "0.05", "--adam_beta2", "0.98", "--max_grad_norm", "0.5", "--output_dir", out]  # fmt: skip
    result = recipe.main(argv)
    # Each run was built from the dataclasses with the ablation's optimizer settings (its resolved_config.yaml).
    for run, objective, rate in (("clm", "clm", 0.15), ("mlm", "mlm", 0.3)):
        model_args, data_args, training_args = load_run_arguments(os.path.join(out, "runs", run))
        assert (training_args.weight_decay, training_args.adam_beta2, training_args.max_grad_norm) == (0.05, 0.98, 0.5)
        assert (training_args.objective, training_args.mlm_probability, training_args.max_steps) == (
            objective,
            rate,
            8,
        )
        assert (data_args.block_size, data_args.validation_fraction, model_args.model_preset) == (
            32,
            0.0,
            "llama-tiny",
        )
    assert [row["model"] for row in result["rows"]] == ["clm", "mlm", "clm@50%", "mlm@50%"]
    with open(result["results"]) as handle:
        text = handle.read()
    assert "| clm | CLM |" in text and "| mlm | MLM 30% |" in text and "MLM beats CLM" in text
    with open(os.path.join(out, "results.csv")) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for task in ("sc", "tc", "qa", "ir"):
            assert float(row[f"{task}_ci_low"]) <= float(row[f"{task}_mean"]) <= float(row[f"{task}_ci_high"])
    assert rows[0]["perplexity"] and not rows[0]["mlm_accuracy"] and rows[1]["mlm_accuracy"]
    assert [os.path.basename(p) for p in result["plots"]] == ["ablation.png", "intrinsic.png"]
    # Run again: finished pretraining runs are reused, not retrained.
    model_file = os.path.join(out, "runs", "clm", "model.safetensors")
    before = os.path.getmtime(model_file)
    recipe.main([*argv, "--tasks", "sc", "--learning_rates", "1e-3", "--seeds", "0"])
    assert os.path.getmtime(model_file) == before
