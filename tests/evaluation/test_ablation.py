"""The objective ablation: grid parsing and checks, and a two-configuration smoke grid end to end."""

import csv
import importlib.util
import os

import pytest

from hf_pretrain.evaluation import AblationArguments, GridEntry

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


@pytest.mark.slow
def test_a_two_configuration_smoke_grid_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("recipe_ablation", os.path.join(REPO, "recipes", "ablation.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = str(tmp_path / "ablation")
    argv = ["--grid", "clm", "mlm", "--max_steps", "8", "--block_size", "32", "--batch_size", "8",
            "--max_characters", "60000", "--task_sizes", "24", "12", "12", "--learning_rates", "1e-3", "3e-3",
            "--seeds", "0", "1", "--finetune_max_steps", "2", "--save_fraction", "0.5", "--early_fraction", "0.5",
            "--output_dir", out]  # fmt: skip
    result = recipe.main(argv)
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
