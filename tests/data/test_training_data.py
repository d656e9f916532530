"""Training on mixed, streamed and prepared data: per-source tokens in the logs, exact stream resume, curriculum."""

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from _runs import pretrain

from hf_pretrain.checkpoint_state import stream_position_from_checkpoint
from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus
from hf_pretrain.data.streaming import MixedBlockStream
from hf_pretrain.training.callbacks.data_position import SourceTokensCallback, StreamPositionCallback

WORDS = ["the", "a", "of", "and", "to", "river", "stone", "light", "quiet", "north", "wind", "carries", "seeds", "over", "old", "walls", "fields"]  # fmt: skip
TINY = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "600", "--block_size", "32",
    "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "1", "--seed", "0",
    "--eval_strategy", "no", "--report_to", "none",
]  # fmt: skip


def write_jsonl(path, count, seed):
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        for _ in range(count):
            handle.write(json.dumps({"text": " ".join(rng.choice(WORDS, rng.integers(5, 40)))}) + "\n")
    return str(path)


def history(output_dir):
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        return [entry for entry in json.load(handle)["log_history"] if "loss" in entry]


def test_tokens_per_source_wrap_around_epochs():
    callback = SourceTokensCallback(["a", "b"], [1, 1], block_size=10, blocks_per_epoch=6)
    assert callback.tokens_after(6) == {"tokens_seen/a": 30, "tokens_seen/b": 30}
    assert callback.tokens_after(8) == {"tokens_seen/a": 40, "tokens_seen/b": 40}


def test_the_position_of_the_last_trained_block_goes_into_the_checkpoint(tmp_path):
    class Stream(MixedBlockStream):  # stands in for a stream behind accelerate's DataLoader wrappers
        def __init__(self):
            pass

        def position(self, blocks):
            return {"blocks": blocks, "sources": {}}

    loader = SimpleNamespace(base_dataloader=SimpleNamespace(dataset=Stream()))
    callback = StreamPositionCallback()
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=3, world_size=2)
    callback.on_step_end(
        args, SimpleNamespace(global_step=5, is_world_process_zero=True), None, train_dataloader=loader
    )
    assert callback.state()["attributes"]["position"]["blocks"] == 5 * 4 * 3 * 2
    state = {"stateful_callbacks": {"StreamPositionCallback": callback.state()}}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    assert stream_position_from_checkpoint(tmp_path)["blocks"] == 120
    assert stream_position_from_checkpoint(tmp_path / "missing") is None


@pytest.mark.slow
def test_a_resumed_streamed_mixture_trains_exactly_like_the_uninterrupted_run(tmp_path):
    sources = json.dumps([
        {"name": "web", "data_files": [write_jsonl(tmp_path / "web.jsonl", 300, 1)], "weight": 0.7},
        {"name": "code", "data_files": [write_jsonl(tmp_path / "code.jsonl", 100, 2)], "weight": 0.3},
    ])  # fmt: skip
    run = [*TINY, "--data_sources", sources, "--streaming", "true", "--max_steps", "8", "--save_steps", "4"]
    full_dir, resumed_dir = str(tmp_path / "full"), str(tmp_path / "resumed")
    pretrain.main([*run, "--output_dir", full_dir])
    full = history(full_dir)
    assert [e["tokens_seen/web"] + e["tokens_seen/code"] for e in full] == [128 * s for s in range(1, 9)]
    assert abs(full[-1]["tokens_seen/web"] / (8 * 128) - 0.7) <= 1 / 32  # within a block of the weight
    position = stream_position_from_checkpoint(os.path.join(full_dir, "checkpoint-4"))
    assert (
        position["blocks"] == 16 and position["sources"]["web"]["blocks"] + position["sources"]["code"]["blocks"] == 16
    )

    pretrain.main([*run, "--output_dir", resumed_dir])  # the same run, then "interrupted" after checkpoint-4
    for name in os.listdir(resumed_dir):
        if name not in ("checkpoint-4", "tokenizer"):
            path = os.path.join(resumed_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    pretrain.main([*run, "--output_dir", resumed_dir, "--resume_from_checkpoint", "true"])
    resumed = history(resumed_dir)
    assert [e["step"] for e in resumed] == list(range(1, 9))
    assert [e["loss"] for e in resumed] == pytest.approx([e["loss"] for e in full], rel=1e-5)
    assert [e["tokens_seen/code"] for e in resumed] == [e["tokens_seen/code"] for e in full]


def test_training_on_prepared_data_with_a_curriculum(tmp_path, tokenizer):
    prepared = str(tmp_path / "prepared")
    args = PrepareArguments(
        sources=[
            {"name": "web", "data_files": [write_jsonl(tmp_path / "web.jsonl", 200, 1)], "weight": 3},
            {"name": "code", "data_files": [write_jsonl(tmp_path / "code.jsonl", 100, 2)], "weight": 1},
        ],
        output_dir=prepared, block_size=32, quality_filters=["none"], near_dedup=False,
    )  # fmt: skip
    prepare_corpus(args, tokenizer=tokenizer)
    out = str(tmp_path / "run")
    pretrain.main([*TINY, "--prepared_dataset_path", prepared, "--max_steps", "6", "--output_dir", out,
                   "--curriculum_lengths", "8", "16", "--curriculum_ends", "2", "4"])  # fmt: skip
    logs = history(out)
    assert [e["sequence_length"] for e in logs] == [8, 8, 16, 16, 32, 32]
    assert [e["num_input_tokens_seen"] for e in logs] == [128 * s for s in range(1, 7)]  # constant tokens per step
    assert [e["tokens_seen/web"] for e in logs] == [96 * s for s in range(1, 7)]  # 3:1 of 4 blocks of 32 a step
    assert [e["tokens_seen/code"] for e in logs] == [32 * s for s in range(1, 7)]
