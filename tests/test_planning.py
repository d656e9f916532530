"""The compute planner reproduces the published Chinchilla figures and the 6·N·D arithmetic."""

import pytest

from hf_pretrain.planning import (
    PlanArguments,
    chinchilla_tokens,
    optimal_for_budget,
    optimality_warning,
    plan_compute,
    run_summary,
    training_flops,
)
from hf_pretrain.planning import __main__ as plan  # python -m hf_pretrain.planning
from hf_pretrain.presets import MODEL_PRESETS


def test_chinchilla_70b_parameters_is_1_4t_tokens():
    assert chinchilla_tokens(70e9) == pytest.approx(1.4e12)
    assert training_flops(70e9, 1.4e12) == pytest.approx(5.88e23)
    # Hoffmann et al. give Chinchilla's budget as 5.76e23 FLOPs: the optimum for it is 70B / 1.4T within 2%.
    parameters, tokens = optimal_for_budget(5.76e23)
    assert parameters == pytest.approx(70e9, rel=0.02) and tokens == pytest.approx(1.4e12, rel=0.02)


@pytest.mark.parametrize(
    "parameters, published_tokens",  # Table 3 of Hoffmann et al. (approach 1)
    [(400e6, 8.0e9), (1e9, 20.2e9), (10e9, 205.1e9), (175e9, 3.7e12), (280e9, 5.9e12), (1e12, 21.2e12)],
)
def test_table_3_of_the_paper_within_8_percent(parameters, published_tokens):
    assert chinchilla_tokens(parameters) == pytest.approx(published_tokens, rel=0.08)


def test_steps_and_wall_time():
    args = PlanArguments(parameters=1e9, global_batch_tokens=2**20, gpus=8, peak_flops=1e15, mfu=0.5)
    result = plan_compute(args)
    assert result.tokens == 2e10 and result.flops == pytest.approx(1.2e20)
    assert result.steps == 19_074  # ceil(2e10 / 1,048,576)
    assert result.wall_seconds == pytest.approx(1.2e20 / (8 * 1e15 * 0.5))
    budget = plan_compute(PlanArguments(flops=1.2e20, tokens=1e10, peak_flops=1e15))
    assert budget.parameters == pytest.approx(2e9)  # the model that spends the budget on these tokens


def test_warnings_far_from_compute_optimal():
    assert optimality_warning(1e9, 20e9) is None and optimality_warning(1e9, 70e9) is None
    assert "far below" in optimality_warning(1e9, 1e9)
    assert "far above" in optimality_warning(1e9, 1e12)
    message, warning = run_summary(1e6, 1e9)
    assert "1,000 tokens per parameter" in message and "far above" in warning


def test_cli_prints_the_plan(capsys):
    text = plan.main(["--parameters", "70e9", "--global_batch_tokens", "4e6", "--gpus", "1024", "--gpu", "A100"])
    assert "1.4e+12" in text and "350,000" in text and "A100" not in text and "3.12e+14" in text
    assert "warning" not in text and capsys.readouterr().out.strip() == text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "Give parameters, flops, or both"),
        ({"parameters": -1}, "parameters must be positive"),
        ({"parameters": 1e9, "flops": 1e20, "tokens": 1e10}, "over-determine"),
        ({"parameters": 1e9, "mfu": 1.5}, "mfu must be in"),
        ({"parameters": 1e9, "gpu": "TPU"}, "no known peak"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlanArguments(**kwargs)


# ---- the compute plan of a dry run (hf_pretrain.planning.dry_run) --------------------------------------------


def _preset_config(preset: str, vocab: int | None):
    from transformers import AutoConfig

    from hf_pretrain.presets import preset_settings

    settings = preset_settings(preset)
    if vocab is not None:
        settings["vocab_size"] = vocab
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def test_meta_count_is_the_hand_count_and_allocates_no_weights(monkeypatch):
    from hf_pretrain import models
    from hf_pretrain.planning.dry_run import count_parameters_on_meta

    built = []
    build_model = models.build_model
    monkeypatch.setattr(models, "build_model", lambda *a, **k: built.append(build_model(*a, **k)) or built[-1])
    counts = count_parameters_on_meta(_preset_config("llama-610m", 128_256), masked_decoder=True)
    assert type(built[0]).__name__ == "LlamaForMaskedLM" and all(p.is_meta for p in built[0].parameters())
    hidden, layers, inter, kv_dim = 1152, 26, 4096, 6 * 64
    body = layers * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter + 2 * hidden) + hidden
    embedding = 128_256 * hidden
    assert (counts.total, counts.non_embedding, counts.embedding, counts.head) == (
        body + 2 * embedding, body, embedding, embedding
    )  # fmt: skip
    # MFU counts matmul weights only (throughput.flop_counted_parameters): the norms are out, the head is in
    assert counts.matmul == body - (2 * layers + 1) * hidden + embedding and not counts.head_tied


def test_a_tied_head_is_counted_once_and_positions_are_embeddings():
    from hf_pretrain.planning.dry_run import count_parameters_on_meta

    config = _preset_config("gpt2-tiny", 1000)  # GPT-2: tied head, learned positions (512 x 64)
    counts = count_parameters_on_meta(config)
    assert counts.head_tied and counts.head == 1000 * 64 and counts.embedding == (1000 + 512) * 64
    assert counts.non_embedding == counts.total - counts.embedding
    # The trainer's MFU count (throughput.flop_counted_parameters): the Linear/Conv1D weights (attention, MLP) and
    # the tied head once; norms, biases and the position table are no matmul.
    assert counts.matmul == 2 * (64 * 192 + 64 * 64 + 2 * 64 * 256) + 1000 * 64


def _plan(**changes):
    from hf_pretrain.planning.dry_run import BatchShape, DryRunPlan, ParameterCounts, Vocabulary

    fields = {
        "parameters": ParameterCounts(total=1_000, embedding=200, head=200, head_tied=False, matmul=800),
        "vocabulary": Vocabulary(100, "assumed"),
        "batch": BatchShape(world_size=4, per_device=2, accumulation=3, block_size=16),
        "steps": 10,
        "flops_per_token": 5_000.0,
        "mfu": 0.5,
        "peak_flops": 1e6,
        "gpu": "a test GPU",
    }
    return DryRunPlan(**{**fields, **changes})


def test_dry_run_plan_arithmetic():
    plan = _plan(phases=((0, "clm"), (4, "mlm")), schedule="WSD: 1 warmup, 8 stable, 1 linear decay")
    assert plan.batch.tokens_per_step == 4 * 2 * 3 * 16 and plan.tokens == 10 * 384
    assert plan.parameters.non_embedding == 600 and plan.flops_6nd == pytest.approx(6 * 1_000 * 3_840)
    assert plan.flops == pytest.approx(5_000 * 3_840)
    assert plan.gpu_hours == pytest.approx(5_000 * 3_840 / (1e6 * 0.5) / 3600)
    assert plan.wall_hours == pytest.approx(plan.gpu_hours / 4)  # the world size the batch was resolved for
    text = plan.describe()
    assert all(line.startswith("#") for line in text.splitlines())  # YAML comments: the dry run still loads
    assert "384 tokens per step = world size 4 x 2 per device x 3 accumulation x 16 tokens" in text
    assert "steps 0-3: 4 steps, 1,536 tokens" in text and "steps 4-9: 6 steps, 2,304 tokens" in text
    assert "10 (WSD: 1 warmup, 8 stable, 1 linear decay)" in text and "at 50% MFU on a test GPU" in text


def test_a_run_by_epochs_plans_what_it_can():
    plan = _plan(steps=None)
    assert plan.tokens is None and plan.flops is None and plan.gpu_hours is None
    text = plan.describe()
    assert "known once the data is read" in text and "GPU-hours" not in text and "1,000 total" in text


def test_the_vocabulary_comes_from_the_tokenizer_the_run_will_load(tmp_path, tokenizer):
    from types import SimpleNamespace

    from hf_pretrain.planning.dry_run import planned_vocabulary

    folder = str(tmp_path / "tok")
    tokenizer.save_pretrained(folder)
    size = len(tokenizer)

    def model_args(**kwargs):
        return SimpleNamespace(
            **{"tokenizer_name_or_path": None, "model_name_or_path": None, "tokenizer_vocab_size": 4096, **kwargs}
        )

    data_args = SimpleNamespace(prepared_dataset_path=None)
    given = planned_vocabulary(model_args(tokenizer_name_or_path=folder), data_args, None, None)
    assert given.size == size and "tokenizer_name_or_path" in given.source
    assumed = planned_vocabulary(model_args(), data_args, str(tmp_path / "fresh"), None)
    assert assumed.size == 4096 and assumed.source.startswith("assumed: tokenizer_vocab_size")
    missing = planned_vocabulary(model_args(tokenizer_name_or_path=str(tmp_path / "none")), data_args, None, None)
    assert missing.size == 4096 and "did not load here" in missing.source
    # A checkpoint keeps its embeddings unless its tokenizer is larger (then they are resized to the tokenizer).
    larger = planned_vocabulary(model_args(model_name_or_path=folder), data_args, None, size + 10)
    assert larger.size == size + 10 and "the checkpoint's vocab_size" in larger.source
    assert planned_vocabulary(model_args(model_name_or_path=folder), data_args, None, size - 10).size == size
    # A resumed run reuses the tokenizer it trained into output_dir.
    tokenizer.save_pretrained(str(tmp_path / "run" / "tokenizer"))
    assert planned_vocabulary(model_args(), data_args, str(tmp_path / "run"), None).size == size


def test_the_plan_of_a_resolved_run_uses_the_stated_peak(tmp_path):
    import os

    from _runs import REPO

    from hf_pretrain import DataArguments, ModelArguments, PretrainingArguments, parse_config
    from hf_pretrain.planning.dry_run import plan_run
    from hf_pretrain.resolve import resolve_run

    config = os.path.join(REPO, "recipes/configs/quickstart.yaml")
    argv = [config, "--output_dir", str(tmp_path / "run"), "--peak_flops_per_device", "1e15"]
    args = parse_config((ModelArguments, DataArguments, PretrainingArguments), argv)
    run = resolve_run(*args)
    plan = plan_run(*args, run)
    assert plan.peak_flops == 1e15 and "peak_flops_per_device" in plan.describe()
    assert plan.steps == 300 and plan.vocabulary.size == 4096 and plan.parameters.matmul > 0
    with pytest.raises(ValueError, match="mfu must be in"):
        plan_run(*args, run, mfu=0)
    with pytest.raises(ValueError, match="gpu='TPU' has no known peak"):
        args[2].peak_flops_per_device = None
        plan_run(*args, run, gpu="TPU")


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_every_preset_is_counted_on_the_meta_device(preset):
    from hf_pretrain.model_families import family_of
    from hf_pretrain.planning.dry_run import count_parameters_on_meta, with_vocabulary

    # A small vocabulary: the preset's default special-token ids (ModernBERT pads with 50,283) lie past its end.
    config = with_vocabulary(_preset_config(preset, None), 600)
    for masked in (False, True) if family_of(config).masked_lm else (False,):
        counts = count_parameters_on_meta(config, masked_decoder=masked)
        assert 0 < counts.non_embedding < counts.total and counts.embedding >= 600 * 16
