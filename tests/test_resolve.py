"""One resolved run: settings decided once, attention enforced and probed, features that combine.

Each `test_failure_*` reproduces a measured failure of the version before the resolve step (it failed there).
"""

import ast
import json
import os
import pathlib

import numpy as np
import pytest
import torch
import yaml
from _runs import REPO, pretrain

import hf_pretrain.pipeline
from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus
from hf_pretrain.data.tokenizer import train_tokenizer
from hf_pretrain.objectives import OBJECTIVES, PHASES
from hf_pretrain.resolve import load_resolved, load_run_arguments
from hf_pretrain.training.attention import probe_attention
from hf_pretrain.training.document_mask import isolate_documents

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "river",
    "stone",
    "light",
    "quiet",
    "north",
    "wind",
    "carries",
    "seeds",
    "over",
    "old",
    "walls",
    "fields",
]
TINY = [
    "--model_preset", "llama-tiny", "--block_size", "32", "--per_device_train_batch_size", "4",
    "--learning_rate", "3e-3", "--logging_steps", "1", "--seed", "0", "--report_to", "none",
    "--save_strategy", "no", "--eval_strategy", "no", "--warmup_steps", "0", "--decay_steps", "1",
]  # fmt: skip


def _texts(count, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(8, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two small sources, a prepared dataset and one shared tokenizer, so every data path and checkpoint agree."""
    root = tmp_path_factory.mktemp("corpus")
    files = {}
    for name, seed in (("a", 1), ("b", 2)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": text}) + "\n" for text in _texts(120, seed)))
        files[name] = str(path)
    tokenizer = train_tokenizer(_texts(200, 3), vocab_size=600)
    tokenizer.save_pretrained(root / "tokenizer")
    sources = [{"name": "a", "data_files": [files["a"]], "weight": 0.7}, {"name": "b", "data_files": [files["b"]], "weight": 0.3}]  # fmt: skip
    prepare_corpus(
        PrepareArguments(
            sources=sources,
            output_dir=str(root / "prepared"),
            block_size=32,
            tokenizer_name_or_path=str(root / "tokenizer"),
            quality_filters=[],
            near_dedup=False,
            validation_fraction=0.1,
        )
    )
    return {
        "files": files,
        "sources": sources,
        "tokenizer": str(root / "tokenizer"),
        "prepared": str(root / "prepared"),
    }


DATA_PATHS = ("classic", "mixed", "prepared", "streamed")


def data_argv(corpus, path):
    if path == "classic":
        return ["--data_files", corpus["files"]["a"], "--tokenizer_name_or_path", corpus["tokenizer"]]
    if path == "prepared":
        return ["--prepared_dataset_path", corpus["prepared"]]
    sources = ["--data_sources", json.dumps(corpus["sources"]), "--tokenizer_name_or_path", corpus["tokenizer"]]
    return sources + (
        ["--streaming", "true", "--validation_files", corpus["files"]["b"]] if path == "streamed" else []
    )


@pytest.fixture(scope="module")
def checkpoints(corpus, tmp_path_factory):
    """A causal and a masked checkpoint (the 'other attention kind' for every objective), on the shared tokenizer."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for objective in ("clm", "mlm"):
        out[objective] = str(root / objective)
        pretrain.main([*TINY, *data_argv(corpus, "classic"), "--objective", objective, "--max_steps", "2", "--output_dir", out[objective]])  # fmt: skip
    return out


class Recorder(hf_pretrain.pipeline.PretrainingTrainer):
    """The run's trainer, kept so a test can look at what it trained with."""

    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Recorder.last = self


def _mask_implementation(trainer):
    return trainer._mask_implementation()


# --- every objective x attention implementation x data path x start ----------------------------------------------

COMBINATIONS = [
    (objective, attn, path, start)
    for objective in OBJECTIVES
    for attn in ("eager", "sdpa")
    for path in DATA_PATHS
    for start in ("scratch", "other")
]


def _expected_last_attention(objective):
    return OBJECTIVES[objective].phases[-1].attention


@pytest.mark.parametrize("objective,attn,path,start", COMBINATIONS)  # 96 two-step runs, ~1 s each
def test_combinations_train_with_the_attention_they_promise(
    corpus, checkpoints, tmp_path, monkeypatch, objective, attn, path, start
):
    monkeypatch.setattr(hf_pretrain.pipeline, "PretrainingTrainer", Recorder)
    spec = OBJECTIVES[objective]
    argv = [*TINY, *data_argv(corpus, path), "--objective", objective, "--attn_implementation", attn]
    argv += ["--max_steps", "4" if objective == "clm_then_mlm" else "2", "--output_dir", str(tmp_path / "run")]
    if spec.decoder_flag:
        argv += [f"--{spec.decoder_flag}", "true"]
    if start == "other":  # a checkpoint whose attention differs from the objective's first phase
        other = "mlm" if spec.phases[0].attention != "bidirectional" else "clm"
        argv += ["--model_name_or_path", checkpoints[other]]
        if path == "prepared":
            argv += ["--tokenizer_name_or_path", checkpoints[other]]
    pretrain.main(argv)

    trainer = Recorder.last
    model = trainer.accelerator.unwrap_model(trainer.model)
    last = _expected_last_attention(objective)
    # The probe of the trainer ran at the first step (and at the switch); measure the final model once more.
    probe_attention(model, last, attn)
    if spec.uses_4d_mask(decoder_only=True):  # the mask format the collator emits is the model's
        assert _mask_implementation(trainer) == attn == model.config._attn_implementation
        batch = trainer.data_collator([{"input_ids": list(range(5, 37))}])
        # No (T, T) mask leaves the workers: per-token columns, built into the model's format on the device.
        assert batch["attention_mask"].shape == batch["prefix_mask"].shape == batch["document_ids"].shape
        device = isolate_documents(batch, causal=True, implementation=attn, dtype=torch.float32)
        assert device["attention_mask"].dtype == (torch.bool if attn == "sdpa" else torch.float32)
        assert trainer._documents_probed == spec.phases[-1].attention
    _, derived = load_resolved(str(tmp_path / "run"))
    assert derived["data_path"] == path and derived["attn_implementation"] == attn
    assert [a for _, a in derived["attention"]] == [p.attention for p in spec.phases]


# --- the six measured failures ------------------------------------------------------------------------------------


def _causal_probe(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    return probe_attention(model, "causal")  # raises when the loaded "causal" model is bidirectional


def test_failure_1_a_masked_checkpoint_continued_with_clm_trains_and_saves_a_causal_model(
    corpus, checkpoints, tmp_path
):
    # A masked result is saved as EuroBERT, which no causal class reads (before: is_causal: false made the
    # LlamaForCausalLM that loaded a masked folder silently bidirectional); with the recipe it continues as the
    # Llama decoder it is, made causal.
    from transformers import AutoModelForCausalLM

    saved = json.loads(pathlib.Path(checkpoints["mlm"], "config.json").read_text())
    assert saved["model_type"] == "eurobert" and "is_causal" not in saved
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForCausalLM.from_pretrained(checkpoints["mlm"])
    for flag in ("--model_name_or_path", "--cooldown_from"):
        out = tmp_path / flag.strip("-")
        pretrain.main([*TINY, *data_argv(corpus, "classic"), "--objective", "clm", "--max_steps", "2", flag, checkpoints["mlm"], "--output_dir", str(out)])  # fmt: skip
        saved = json.loads((out / "config.json").read_text())
        assert saved.get("is_causal", True) is True and saved["architectures"] == ["LlamaForCausalLM"]
        _causal_probe(str(out))


def test_failure_1_an_old_masked_checkpoint_that_says_is_causal_false_is_made_causal(corpus, checkpoints, tmp_path):
    old = tmp_path / "old_format"
    from transformers import AutoConfig

    from hf_pretrain.model_families import decoder_equivalent
    from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM

    # The format masked Llamas had before they were saved as EuroBERT: LlamaForMaskedLM with its modeling file.
    config = decoder_equivalent(AutoConfig.from_pretrained(checkpoints["mlm"]))
    LlamaForMaskedLM.from_pretrained(checkpoints["mlm"], config=config).save_pretrained(old)
    assert json.loads((old / "config.json").read_text())["architectures"] == ["LlamaForMaskedLM"]
    config = json.loads((old / "config.json").read_text())
    config["is_causal"] = False  # what checkpoints written before the fix say
    (old / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.isfile(os.path.join(checkpoints["mlm"], name)):
            (old / name).write_bytes(pathlib.Path(checkpoints["mlm"], name).read_bytes())
    out = tmp_path / "continued"
    pretrain.main([*TINY, *data_argv(corpus, "classic"), "--objective", "clm", "--max_steps", "2", "--model_name_or_path", str(old), "--output_dir", str(out)])  # fmt: skip
    _causal_probe(str(out))


def test_failure_2_eager_prefix_lm_gets_an_additive_mask_and_masks_the_future(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_pretrain.pipeline, "PretrainingTrainer", Recorder)
    argv = [*TINY, *data_argv(corpus, "classic"), "--objective", "prefix_lm", "--attn_implementation", "eager"]
    pretrain.main([*argv, "--max_steps", "2", "--output_dir", str(tmp_path / "run")])
    trainer = Recorder.last
    model = trainer.accelerator.unwrap_model(trainer.model)
    batch = trainer.data_collator([{"input_ids": list(range(5, 21)), "prefix_length": 8}])
    batch = isolate_documents(batch, causal=True, implementation="eager", dtype=torch.float32)  # as on the device
    assert batch["attention_mask"].dtype == torch.float32  # before: a bool mask, which eager adds as 0/1
    ids = batch["input_ids"].clone()
    changed = ids.clone()
    changed[0, -1] += 1
    with torch.no_grad():
        first = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[0, 8]
        again = model(input_ids=changed, attention_mask=batch["attention_mask"]).logits[0, 8]
    assert torch.equal(first, again)  # the first target position does not see the last token
    with pytest.raises(RuntimeError, match="does not act as one"):  # and the probe catches a mismatched format
        probe_attention(model, "prefix", "sdpa")


def _training_args_bin(folder):
    return torch.load(os.path.join(folder, "training_args.bin"), weights_only=False)


@pytest.mark.parametrize("path", ["prepared", "mixed"])
def test_failure_4_resolved_config_is_what_ran(corpus, tmp_path, path):
    out = tmp_path / "run"
    argv = [*TINY, *data_argv(corpus, path), "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "4"]
    argv += ["--curriculum_lengths", "16", "--curriculum_ends", "2", "--output_dir", str(out)]
    pretrain.main(argv)
    arguments, derived = load_resolved(str(out))
    ran = _training_args_bin(out / "checkpoint-4")
    for key in ("train_sampling_strategy", "remove_unused_columns", "gradient_accumulation_steps", "eval_strategy"):
        value = getattr(ran, key)
        assert arguments[key] == getattr(value, "value", value), key  # the file says what training_args.bin says
    assert arguments["train_sampling_strategy"] == "sequential" and arguments["remove_unused_columns"] is False
    assert derived["data_path"] == path and derived["total_steps"] == 4
    _, data_args, training_args = load_run_arguments(str(out / "checkpoint-4"))  # a checkpoint finds its run
    assert data_args.block_size == 32 and training_args.train_sampling_strategy == "sequential"


# --- the registry is the only place that knows objective names -----------------------------------------------------


def test_no_code_outside_the_registry_compares_objective_names():
    names = set(OBJECTIVES) | set(PHASES)
    offenders = []
    for path in pathlib.Path(REPO, "hf_pretrain").rglob("*.py"):
        if path.name == "objectives.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            constants = {
                c.value
                for operand in operands
                for c in ast.walk(operand)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }
            text = ast.unparse(node)
            if constants & names and "objective" in text:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {text}")
    assert not offenders, offenders


def test_resolved_config_loads_again_as_a_config(corpus, tmp_path):
    out = tmp_path / "run"
    pretrain.main([*TINY, *data_argv(corpus, "classic"), "--max_steps", "2", "--output_dir", str(out)])
    text = (out / "resolved_config.yaml").read_text()
    assert "resolved_run:" in text and yaml.safe_load(text)["resolved_run"]["total_steps"] == 2
    model_args, data_args, training_args = load_run_arguments(str(out))
    assert training_args.max_steps == 2 and data_args.data_files == [corpus["files"]["a"]]


def test_the_model_card_names_the_data_a_mixed_or_prepared_run_trained_on(corpus):
    from hf_pretrain.hub.model_card import _data_section

    mixed = _data_section({"data_sources": corpus["sources"], "block_size": 32, "resolved_run": {"held_out": "x"}})
    assert "`a` | 70%" in mixed and "`b` | 30%" in mixed and "pydoc" not in mixed  # before: the built-in corpus
    prepared = _data_section({"prepared_dataset_path": corpus["prepared"], "block_size": 32})
    assert "a (prepared dataset `prepared`) | 70%" in prepared and "pydoc" not in prepared


def test_dry_run_prints_the_resolved_run_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    pretrain.main([os.path.join(REPO, "recipes/configs/quickstart.yaml"), "--max_steps", "40", "--output_dir", str(out), "--dry_run"])  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["max_steps"] == 40 and printed["resolved_run"]["schedule"]["decay_steps"] > 0
    assert printed["resolved_run"]["phases"] == [[0, "clm"]] and not out.exists()


def test_validation_files_are_the_held_out_set_of_a_mixed_run(corpus, tmp_path):
    out = tmp_path / "run"
    argv = [*TINY, *data_argv(corpus, "mixed"), "--validation_files", corpus["files"]["b"], "--max_steps", "2"]
    pretrain.main(
        [*argv, "--eval_strategy", "steps", "--eval_steps", "2", "--output_dir", str(out)]
    )  # before: ignored
    results = json.loads((out / "eval_results.json").read_text())
    _, derived = load_resolved(str(out))
    assert results["eval_loss"] > 0 and derived["held_out"].startswith("validation_files")


@pytest.mark.parametrize("path", DATA_PATHS)
@pytest.mark.parametrize("preset, objective", [("bert-tiny", "mlm"), ("qwen2-tiny", "clm_then_mlm")])
def test_other_families_run_on_every_data_path(corpus, tmp_path, preset, objective, path):
    # An encoder's MLM and a non-Llama decoder's CLM->MLM on classic, mixed, prepared and streamed data.
    out = tmp_path / "run"
    argv = [*TINY, *data_argv(corpus, path), "--model_preset", preset, "--objective", objective, "--max_steps", "4"]
    metrics = pretrain.main([*argv, "--output_dir", str(out)])
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    architecture = json.loads((out / "config.json").read_text())["architectures"][0]
    assert architecture == {"bert-tiny": "BertForMaskedLM", "qwen2-tiny": "Qwen2ForMaskedLM"}[preset]


def test_flex_attention_cannot_train_on_cpu_and_says_so_before_any_work():
    from transformers import AutoConfig

    from hf_pretrain.model_families import resolve_attention

    config = AutoConfig.for_model("llama")
    with pytest.raises(ValueError, match=r"attn_implementation='flex_attention' cannot train on cpu .*use sdpa"):
        resolve_attention(config, "flex_attention", "cpu")
    assert resolve_attention(config, "flex_attention") == "flex_attention"  # no device given: evaluation, a probe
