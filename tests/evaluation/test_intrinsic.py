"""Intrinsic evaluation of every checkpoint of a run: CLM metrics before a CLM→MLM switch, MLM metrics after,
on the documents the run held out, written as CSV/JSON and plotted against tokens seen."""

import importlib.util
import json
import math
import os
import sys

import pytest

from hf_pretrain.data.build import held_out_blocks
from hf_pretrain.data.tokenizer import load_tokenizer
from hf_pretrain.evaluation.intrinsic import find_checkpoints
from hf_pretrain.resolve import load_run_arguments

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "recipes"))

import pretrain  # noqa: E402


def _evaluate_recipe():
    # Loaded under another module name: `recipes/evaluate.py` must not shadow the `evaluate` package.
    spec = importlib.util.spec_from_file_location("recipe_evaluate", os.path.join(REPO, "recipes", "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def switched_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("intrinsic") / "run")
    pretrain.main(["--model_preset", "llama-tiny", "--tokenizer_vocab_size", "1024", "--block_size", "32",
                   "--per_device_train_batch_size", "8", "--max_documents", "40", "--validation_fraction", "0.1",
                   "--objective", "clm_then_mlm", "--switch_fraction", "0.5", "--max_steps", "8", "--save_steps", "4",
                   "--eval_strategy", "no", "--disable_tqdm", "true", "--output_dir", out])  # fmt: skip
    return out


def test_every_checkpoint_is_scored_by_how_it_was_trained(switched_run, tmp_path):
    out = str(tmp_path / "eval")
    rows = _evaluate_recipe().main(
        ["--model_name_or_path", switched_run, "--mlm_probability", "0.2", "--output_dir", out]
    )
    assert [os.path.basename(r["checkpoint"]) for r in rows] == ["checkpoint-4", "run"]  # checkpoint-8 is the final
    causal, masked = rows
    assert (causal["objective"], masked["objective"]) == ("clm", "mlm")
    assert (causal["step"], masked["step"]) == (4, 8) and causal["tokens_seen"] < masked["tokens_seen"]
    assert causal["perplexity"] == pytest.approx(math.exp(causal["clm_loss"]))
    nll = causal["clm_loss"] * causal["eval_predicted_tokens"]
    assert causal["bits_per_byte"] == pytest.approx(nll / (math.log(2) * causal["eval_bytes"]))
    assert 0.0 <= masked["mlm_accuracy"] <= 1.0 and masked["mlm_probability"] == 0.2 and "perplexity" not in masked
    # The run's own held-out blocks (of 10% of 40 documents), rebuilt from its resolved_config.yaml.
    _, data_args, training_args = load_run_arguments(switched_run)
    blocks = held_out_blocks(data_args, load_tokenizer(switched_run), training_args.seed)
    assert causal["heldout"] == masked["heldout"] == "classic" and causal["block_size"] == 32
    assert causal["eval_blocks"] == masked["eval_blocks"] == len(blocks) > 0
    # Documents kept apart as in training: each document's first token is context only.
    pieces = sum(len(p) for p in blocks["document_lengths"])
    assert causal["eval_tokens"] == 32 * len(blocks) and causal["eval_predicted_tokens"] == 32 * len(blocks) - pieces
    for name in ("intrinsic.csv", "intrinsic.json", "intrinsic.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "intrinsic.json")) as handle:
        assert [row["checkpoint"] for row in json.load(handle)] == [r["checkpoint"] for r in rows]


def test_a_held_out_file_and_a_token_budget(switched_run, tmp_path):
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n\n".join(f"Paragraph {i} of the held-out text, with some words." for i in range(30)))
    checkpoint = os.path.join(switched_run, "checkpoint-4")
    argv = ["--model_name_or_path", checkpoint, "--data_files", str(heldout), "--validation_fraction", "0",
            "--block_size", "16", "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    (full,) = _evaluate_recipe().main(argv)
    (budget,) = _evaluate_recipe().main([*argv, "--max_eval_tokens", "60"])
    assert full["eval_documents"] == 30 and 1 <= budget["eval_documents"] < 30  # whole documents only
    assert full["eval_bytes"] == sum(
        len(f"Paragraph {i} of the held-out text, with some words.") + 1 for i in range(30)
    )


def test_find_checkpoints_orders_steps_numerically(tmp_path):
    for step in (10, 9, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert [os.path.basename(p) for p in find_checkpoints(str(tmp_path))] == [
        "checkpoint-9",
        "checkpoint-10",
        "checkpoint-100",
    ]
    with pytest.raises(ValueError, match="neither a model"):
        find_checkpoints(str(tmp_path / "checkpoint-9"))
