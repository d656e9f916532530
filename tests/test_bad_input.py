"""Every bad input is one line naming the field, exit status 2, and nothing of an earlier run changes.

The table (`CASES`) is the 65-mistake trial of issue #16 reduced to one case per kind of mistake: what was already
a clean error, what was clear but behind a traceback, what was unclear, and what was silently accepted. Each case
runs in-process through the command's entry point (`recipes/pretrain.py`'s `cli`) against a world of files that
holds an earlier run (`resolved_config.yaml`, `.hub_staging/`, a checkpoint); the whole world must be byte-identical
afterwards. Two cases go through a real `accelerate launch`. `benchmarks/bad_input_table.py` runs the same table as
subprocesses and prints it.
"""

import hashlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from _runs import REPO, pretrain
from safetensors.torch import save_file
from transformers import LlamaConfig

from hf_pretrain.collators import DataCollatorForMaskedLM

RECIPE = os.path.join(REPO, "recipes", "pretrain.py")
DOCUMENTS = [f"Document {i} tells of rivers, stones and the wind over old walls." for i in range(40)]


def make_world(root: str) -> SimpleNamespace:
    """The files the cases point at, under `root`: good data, bad files, an earlier run, a broken model."""
    w = SimpleNamespace(root=root)

    def path(*parts):
        return os.path.join(root, *parts)

    def write(name, text, mode="w"):
        os.makedirs(os.path.dirname(path(name)), exist_ok=True)
        with open(path(name), mode) as handle:
            handle.write(text)
        return path(name)

    w.corpus = write("data/corpus.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in DOCUMENTS))
    w.empty = write("data/empty.jsonl", "")
    w.csv = write("data/corpus.csv", "text\nhello\n")
    w.yaml_unknown = write("configs/typo.yaml", "learning_rat: 1.0e-3\n")
    w.yaml_list = write("configs/list.yaml", "- block_size: 32\n")
    w.ds_scheduler = write("configs/ds_scheduler.json", json.dumps({"scheduler": {"type": "WarmupLR"}}))
    w.ds_broken = write("configs/ds_broken.json", '{"zero_optimization": {"stage": 2,}')
    w.a_file = write("not_a_folder", "a file where a folder is expected\n")
    # An earlier run: what a refused invocation must leave exactly as it was.
    w.previous = path("previous_run")
    write("previous_run/resolved_config.yaml", "# the earlier run's resolved config\nblock_size: 32\n")
    write("previous_run/.hub_staging/step-2/model.safetensors", "staged weights", "w")
    write("previous_run/runs/events.log", "earlier logs\n")
    w.with_checkpoint = path("checkpointed_run")
    write("checkpointed_run/checkpoint-3/trainer_state.json", json.dumps({"global_step": 3}))
    save_file({"w": torch.zeros(4)}, path("checkpointed_run/checkpoint-3/model.safetensors"))
    write("checkpointed_run/resolved_config.yaml", "# resolved\n")
    # A model folder whose weights were cut short (a copy that stopped half way).
    w.truncated_model = path("truncated_model")
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    os.makedirs(w.truncated_model)
    config.to_json_file(os.path.join(w.truncated_model, "config.json"))
    weights = os.path.join(w.truncated_model, "model.safetensors")
    save_file({"embed": torch.zeros(256, 16)}, weights)
    os.truncate(weights, os.path.getsize(weights) - 4096)
    return w


# Shared by every case: a tiny run on good data into the earlier run's folder.
def base(w) -> list[str]:
    return [
        "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "1024", "--block_size", "32",
        "--per_device_train_batch_size", "4", "--max_steps", "4", "--save_steps", "2", "--eval_steps", "2",
        "--data_files", w.corpus, "--output_dir", w.previous,
    ]  # fmt: skip


def without_data(w) -> list[str]:
    argv = base(w)
    index = argv.index("--data_files")
    return argv[:index] + argv[index + 2 :]


# (case, argv from the world, what the one line must contain: the field's name, and the gist)
CASES = [
    # ---- already clean: kept -------------------------------------------------------------------------------
    ("yaml unknown key", lambda w: [w.yaml_unknown, *base(w)], ["learning_rat", "Did you mean"]),
    ("wrong type", lambda w: [*base(w), "--block_size", "abc"], ["block_size"]),
    ("block_size < 2", lambda w: [*base(w), "--block_size", "1"], ["block_size"]),
    ("switch_fraction", lambda w: [*base(w), "--objective", "clm_then_mlm", "--switch_fraction", "1.5"],
     ["switch_fraction"]),
    ("decay_type", lambda w: [*base(w), "--decay_type", "cosin"], ["decay_type"]),
    ("missing data file", lambda w: [*base(w), "--data_files", os.path.join(w.root, "nope.txt")], ["data_files"]),
    ("missing yaml", lambda w: [os.path.join(w.root, "nope.yaml"), *base(w)], ["nope.yaml", "does not exist"]),
    ("misspelt objective", lambda w: [*base(w), "--objective", "clmm"], ["objective"]),
    ("unknown preset", lambda w: [*base(w), "--model_preset", "gpt-9"], ["model_preset"]),
    ("streaming without max_steps", lambda w: [*without_data(w), "--dataset_name", "some/corpus",
                                               "--streaming", "true", "--max_steps", "-1"], ["max_steps"]),
    ("push without hub_model_id", lambda w: [*base(w), "--push_to_hub", "true"], ["hub_model_id"]),
    ("yaml not a mapping", lambda w: [w.yaml_list, *base(w)], ["list.yaml", "mapping"]),
    ("bad boolean", lambda w: [*base(w), "--packing", "maybe"], ["packing"]),
    # ---- clear message, but behind a traceback ---------------------------------------------------------------
    ("warmup + decay > run", lambda w: [*base(w), "--warmup_steps", "3", "--decay_steps", "3"], ["warmup_steps"]),
    ("block_size > positions", lambda w: [*base(w), "--block_size", "4096"], ["block_size", "max_position"]),
    ("mlm on t5", lambda w: [*base(w), "--model_preset", "t5-tiny", "--objective", "mlm"], ["objective"]),
    ("span corruption on llama", lambda w: [*base(w), "--objective", "span_corruption"], ["span_decoder_only"]),
    ("deepspeed scheduler block", lambda w: [*base(w), "--deepspeed", w.ds_scheduler], ["deepspeed", "scheduler"]),
    ("resume from nowhere", lambda w: [*base(w), "--resume_from_checkpoint", os.path.join(w.root, "ckpt-9")],
     ["resume_from_checkpoint"]),
    ("output_dir holds checkpoints", lambda w: [*base(w), "--output_dir", w.with_checkpoint],
     ["output_dir", "resume_from_checkpoint"]),
    ("wrong text_column", lambda w: [*base(w), "--text_column", "body"], ["text_column", "body"]),
    ("unsupported file type", lambda w: [*base(w), "--data_files", w.csv], ["data_files", ".csv"]),
    # ---- unclear before ----------------------------------------------------------------------------------------
    ("empty data file", lambda w: [*base(w), "--data_files", w.empty], ["data_files", "empty"]),
    ("tokenizer folder missing", lambda w: [*base(w), "--tokenizer_name_or_path", os.path.join(w.root, "no_tok")],
     ["tokenizer_name_or_path"]),
    ("model folder missing", lambda w: [*base(w), "--model_name_or_path", os.path.join(w.root, "no_model")],
     ["model_name_or_path"]),
    ("model Hub id not there", lambda w: [*base(w), "--model_name_or_path", "nobody-here/no-such-model"],
     ["model_name_or_path"]),
    ("truncated model.safetensors", lambda w: [*base(w), "--model_name_or_path", w.truncated_model],
     ["model_name_or_path", "model.safetensors", "truncated"]),
    ("gradient_accumulation_steps 0", lambda w: [*base(w), "--gradient_accumulation_steps", "0"],
     ["gradient_accumulation_steps"]),
    ("max_steps 0", lambda w: [*base(w), "--max_steps", "0"], ["max_steps"]),
    ("per_device_train_batch_size 0", lambda w: [*base(w), "--per_device_train_batch_size", "0"],
     ["per_device_train_batch_size"]),
    ("output_dir under a file", lambda w: [*base(w), "--output_dir", os.path.join(w.a_file, "run")], ["output_dir"]),
    ("broken deepspeed json", lambda w: [*base(w), "--deepspeed", w.ds_broken], ["deepspeed", "ds_broken.json"]),
    ("negative learning_rate", lambda w: [*base(w), "--learning_rate", "-1e-3"], ["learning_rate", "-0.001"]),
    # ---- silently accepted before ----------------------------------------------------------------------------
    ("config_overrides typo", lambda w: [*base(w), "--config_overrides", '{"hiden_size": 128}'],
     ["config_overrides", "hiden_size", "hidden_size"]),
    ("learning_rate 0", lambda w: [*base(w), "--learning_rate", "0"], ["learning_rate", "allow_degenerate"]),
    ("mlm_probability 0", lambda w: [*base(w), "--objective", "mlm", "--mlm_probability", "0"],
     ["mlm_probability", "allow_degenerate"]),
    ("abbreviated flag", lambda w: [*base(w), "--learning_rat", "1e-3"], ["--learning_rat", "--learning_rate"]),
    ("negative max_steps", lambda w: [*base(w), "--max_steps", "-5"], ["max_steps"]),
    # ---- added -------------------------------------------------------------------------------------------------
    ("empty file in data_sources", lambda w: [*without_data(w), "--data_sources",
                                              json.dumps([{"name": "web", "data_files": [w.empty]}])],
     ["data_sources", "empty"]),
    ("dry run checks too", lambda w: [*base(w), "--data_files", w.empty, "--dry_run"], ["data_files", "empty"]),
]  # fmt: skip
IDS = [case[0] for case in CASES]


def snapshot(root: str) -> dict[str, str]:
    """Every file and folder under `root` with a digest of its bytes."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(folder, name), root) + "/"] = "dir"
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                out[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(str(tmp_path_factory.mktemp("world")))


@pytest.mark.parametrize(("case", "argv", "expected"), CASES, ids=IDS)
def test_a_bad_input_is_one_line_with_status_2_and_changes_nothing(world, capsys, monkeypatch, case, argv, expected):
    monkeypatch.setattr(sys, "argv", [RECIPE])  # the program name of the line, as when run from a shell
    before = snapshot(world.root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        pretrain.cli(argv(world))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("pretrain.py: error: "), err
    for text in expected:
        assert text in lines[0]
    assert snapshot(world.root) == before  # no file written, changed or removed: the earlier run is as it was


def test_masking_that_selects_nothing_in_a_whole_batch_is_an_error_unless_allowed(tokenizer):
    features = [{"input_ids": tokenizer("a short text of words")["input_ids"]} for _ in range(2)]
    refused = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.0, allow_empty_masking=False)
    with pytest.raises(ValueError, match=r"masking selected no token .*mlm_probability=0.0.*allow_degenerate"):
        refused(features)
    allowed = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.0)  # the library default, and allow_degenerate
    assert (allowed(features)["labels"] == -100).all()
    some = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, allow_empty_masking=False, seed=0)
    assert (some(features)["labels"] != -100).any()


def launch(world, launcher: list[str], extra: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, RECIPE, *base(world), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_under_accelerate_launch_quiet_the_line_is_the_last_thing_shown(world):
    before = snapshot(world.root)
    result = launch(world, ["-q", "--num_processes", "1", "--cpu"], ["--gradient_accumulation_steps", "0"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1  # accelerate's own status for a failed child under -q (ours is 2)
    assert lines[-1] == "pretrain.py: error: gradient_accumulation_steps must be at least 1, got 0.", result.stderr
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in result.stderr
    assert snapshot(world.root) == before


@pytest.mark.slow
def test_two_processes_print_the_line_once_and_the_launchers_report_names_it(world):
    config = os.path.join(REPO, "configs", "accelerate", "cpu_2proc.yaml")
    result = launch(world, ["-q", "--config_file", config, "--main_process_port", "29533"], ["--max_steps", "0"])
    line = "pretrain.py: error: max_steps=0 trains nothing"
    assert result.returncode == 1
    assert result.stderr.count(line) == 2, result.stderr  # printed once by rank 0, once in the launcher's report
    report = result.stderr[result.stderr.index("Root Cause") :]
    assert f"traceback : {line}" in report and "rank      : 0" in report and "Traceback" not in result.stderr
