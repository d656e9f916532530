"""Evaluation scores exactly the text a run held out: for a `data_sources` mixture and a prepared dataset, the blocks
rebuilt from the run's resolved_config.yaml are the ones its Trainer evaluated (same count, same loss), and held-out
text given on the command line is scored at the run's block size."""

import importlib.util
import json
import os

import numpy as np
import pytest
from _runs import REPO, pretrain

from hf_pretrain.data.build import held_out_blocks
from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus
from hf_pretrain.data.tokenizer import load_tokenizer
from hf_pretrain.resolve import load_run_arguments

EVAL_BATCH = 64
WORDS = ["the", "a", "of", "and", "to", "river", "stone", "light", "quiet", "north", "wind", "carries", "seeds", "over", "old", "walls", "fields"]  # fmt: skip
# Evaluated once, at the end (eval_steps beyond max_steps): the run's own eval_loss on its held-out blocks.
TINY = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "600", "--block_size", "32",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", str(EVAL_BATCH), "--learning_rate", "3e-3",
    "--max_steps", "3", "--logging_steps", "1", "--seed", "0", "--eval_strategy", "steps", "--eval_steps", "1000",
    "--save_steps", "1000", "--report_to", "none", "--disable_tqdm", "true",
]  # fmt: skip


def _evaluate_recipe():
    # Loaded under another module name: `recipes/evaluate.py` must not shadow the `evaluate` package.
    spec = importlib.util.spec_from_file_location("recipe_evaluate", os.path.join(REPO, "recipes", "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_text(path, count, seed) -> str:
    """`count` paragraphs of random words (one document each with text_sample_by: paragraph)."""
    rng = np.random.default_rng(seed)
    path.write_text("\n\n".join(" ".join(rng.choice(WORDS, rng.integers(8, 40))) for _ in range(count)))
    return str(path)


def final_eval_loss(run_dir: str) -> float:
    with open(os.path.join(run_dir, "eval_results.json")) as handle:
        return json.load(handle)["eval_loss"]


def run_blocks(run_dir: str):
    """The held-out blocks of the run, rebuilt independently of the evaluation code."""
    _, data_args, training_args = load_run_arguments(run_dir)
    return held_out_blocks(data_args, load_tokenizer(run_dir), training_args.seed)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heldout_mixed")
    sources = json.dumps([
        {"name": "web", "data_files": [write_text(folder / "web.txt", 80, 1)], "weight": 0.7},
        {"name": "books", "data_files": [write_text(folder / "books.txt", 60, 2)], "weight": 0.3},
    ])  # fmt: skip
    out = str(folder / "run")
    pretrain.main([*TINY, "--data_sources", sources, "--validation_fraction", "0.2", "--output_dir", out])
    return out


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("heldout_prepared")
    prepared = str(folder / "prepared")
    args = PrepareArguments(
        sources=[
            {"name": "web", "data_files": [write_text(folder / "web.txt", 80, 3)], "weight": 3},
            {"name": "code", "data_files": [write_text(folder / "code.txt", 60, 4)], "weight": 1},
        ],
        output_dir=prepared, block_size=32, quality_filters=["none"], near_dedup=False, exact_dedup=False,
        validation_fraction=0.2,
    )  # fmt: skip
    prepare_corpus(args, tokenizer=tokenizer)
    out = str(folder / "run")
    pretrain.main([*TINY, "--prepared_dataset_path", prepared, "--output_dir", out])
    return out


@pytest.mark.parametrize(("run", "kind"), [("mixed_run", "mixed"), ("prepared_run", "prepared")])
def test_the_run_is_scored_on_exactly_the_blocks_it_held_out(run, kind, request, tmp_path):
    run_dir = request.getfixturevalue(run)
    blocks = run_blocks(run_dir)
    (row,) = _evaluate_recipe().main(["--model_name_or_path", run_dir, "--output_dir", str(tmp_path / "eval")])
    assert (row["heldout"], row["block_size"], row["objective"]) == (kind, 32, "clm")
    assert row["eval_blocks"] == len(blocks) > 0
    assert row["eval_tokens"] == sum(len(ids) for ids in blocks["input_ids"])  # every held-out token, nothing else
    # document_attention: isolated (the default), as in training: every document of a block is scored alone, its
    # first token context only, so a block predicts block_size minus its number of document pieces.
    predicted = [_predicted(ids, pieces) for ids, pieces in zip(blocks["input_ids"], blocks["document_lengths"])]
    assert row["eval_predicted_tokens"] == sum(map(len, predicted)) < 31 * len(blocks)
    # The Trainer's eval_loss is the mean of per-batch token means, weighted by batch size; all held-out blocks fit
    # one evaluation batch here, so that is the mean over all predicted tokens, which run_intrinsic gives.
    assert len(blocks) <= EVAL_BATCH
    assert row["clm_loss"] == pytest.approx(final_eval_loss(run_dir), rel=1e-5)
    # Bits per byte over the UTF-8 bytes of the predicted tokens (one byte for each EOS separator).
    tokenizer = load_tokenizer(run_dir)
    special = set(tokenizer.all_special_ids)
    decoded = sum(
        len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8")) + sum(i in special for i in ids)
        for ids in predicted
    )
    assert row["eval_bytes"] == decoded
    total = row["eval_predicted_tokens"]
    assert row["bits_per_byte"] == pytest.approx(row["clm_loss"] * total / (np.log(2) * decoded))


def _predicted(ids, pieces):
    """The tokens of a block that causal LM predicts when its documents are kept apart: all but each one's first."""
    starts = set(np.cumsum([0, *pieces[:-1]]).tolist())
    return [token for position, token in enumerate(ids) if position not in starts]


def test_held_out_text_given_as_data_is_scored_at_the_run_block_size(mixed_run, tmp_path):
    heldout = tmp_path / "heldout.txt"
    write_text(heldout, 30, 5)
    argv = ["--model_name_or_path", mixed_run, "--data_files", str(heldout), "--validation_fraction", "0",
            "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    (row,) = _evaluate_recipe().main(argv)
    assert (row["heldout"], row["block_size"], row["eval_documents"]) == ("documents", 32, 30)  # not 512
    (explicit,) = _evaluate_recipe().main([*argv, "--block_size", "16"])  # given explicitly: it wins
    assert explicit["block_size"] == 16 and explicit["eval_tokens"] == row["eval_tokens"]
    assert explicit["clm_loss"] != pytest.approx(row["clm_loss"], abs=1e-6)  # less context per token


def test_a_model_that_belongs_to_no_run_needs_held_out_text(mixed_run, tmp_path):
    from hf_pretrain.evaluation.intrinsic import EvaluationDataArguments, IntrinsicArguments, run_intrinsic

    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(mixed_run, name)):
            os.link(os.path.join(mixed_run, name), model / name)
    args = IntrinsicArguments(model_name_or_path=[str(model)], output_dir=str(tmp_path / "eval"))
    with pytest.raises(ValueError, match="is not a run folder"):
        run_intrinsic(args, EvaluationDataArguments())
