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
