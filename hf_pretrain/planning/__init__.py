"""Compute planner: Chinchilla-optimal tokens, training FLOPs, steps and wall time.

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models") found that for a compute budget C the
loss-optimal model has N parameters trained on D ≈ 20·N tokens, with C ≈ 6·N·D FLOPs (forward and backward
matmuls; parameters counted with embeddings, as the paper does). So from N: D = 20·N; from C: N = sqrt(C / 120).
Chinchilla itself is the anchor: 70B parameters ↔ 1.4T tokens, about 5.9e23 FLOPs.

Wall time is FLOPs / (GPUs · peak FLOP/s · MFU); the peak comes from `throughput.PEAK_BF16_FLOPS` by GPU name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hf_pretrain.training.throughput import PEAK_BF16_FLOPS, peak_flops_per_device

CHINCHILLA_TOKENS_PER_PARAMETER = 20.0
FLOPS_PER_PARAMETER_TOKEN = 6.0
FAR_FROM_OPTIMAL = 4.0  # a run is "far" from compute-optimal beyond this factor either side of 20 tokens/parameter


def chinchilla_tokens(parameters: float, tokens_per_parameter: float = CHINCHILLA_TOKENS_PER_PARAMETER) -> float:
    """Compute-optimal training tokens for a model of `parameters`.

    >>> f"{chinchilla_tokens(70e9):.3g}"
    '1.4e+12'
    """
    return tokens_per_parameter * parameters


def training_flops(parameters: float, tokens: float) -> float:
    """Training FLOPs ≈ 6·N·D."""
    return FLOPS_PER_PARAMETER_TOKEN * parameters * tokens


def optimal_for_budget(
    flops: float, tokens_per_parameter: float = CHINCHILLA_TOKENS_PER_PARAMETER
) -> tuple[float, float]:
    """(parameters, tokens) that spend `flops` compute-optimally: C = 6·N·(r·N), so N = sqrt(C / 6r)."""
    parameters = math.sqrt(flops / (FLOPS_PER_PARAMETER_TOKEN * tokens_per_parameter))
    return parameters, tokens_per_parameter * parameters


def optimality_warning(parameters: float, tokens: float, factor: float = FAR_FROM_OPTIMAL) -> str | None:
    """A sentence when tokens per parameter is more than `factor` away from Chinchilla's 20, else None."""
    ratio = tokens / parameters
    optimal = CHINCHILLA_TOKENS_PER_PARAMETER
    if ratio < optimal / factor:
        return (
            f"{_ratio(ratio)} tokens per parameter is far below the compute-optimal ~{optimal:g}: the same compute "
            f"would reach a lower loss with a smaller model or more data (optimal for this model: "
            f"{chinchilla_tokens(parameters):.3g} tokens)."
        )
    if ratio > optimal * factor:
        return (
            f"{_ratio(ratio)} tokens per parameter is far above the compute-optimal ~{optimal:g}: fine when inference "
            f"cost matters (a smaller model trained longer), otherwise a larger model would use this compute "
            f"better (optimal for these tokens: {tokens / optimal:.3g} parameters)."
        )
    return None


@dataclass
class PlanArguments:
    """What `python -m hf_pretrain.planning` plans from: parameters and/or a FLOPs budget, and the hardware."""

    parameters: float | None = field(
        default=None, metadata={"help": "Model parameters (with embeddings, as Chinchilla counts), e.g. 7e9."}
    )
    flops: float | None = field(
        default=None, metadata={"help": "Training compute budget in FLOPs, e.g. 1e23 (sets parameters if unset)."}
    )
    tokens: float | None = field(
        default=None, metadata={"help": "Training tokens; unset: the compute-optimal count (tokens_per_parameter)."}
    )
    tokens_per_parameter: float = field(
        default=CHINCHILLA_TOKENS_PER_PARAMETER, metadata={"help": "Tokens per parameter of the optimum (20)."}
    )
    global_batch_tokens: float | None = field(
        default=None, metadata={"help": "Tokens per optimizer step over all GPUs, for the step count."}
    )
    gpus: int = field(default=1, metadata={"help": "Number of GPUs, for the wall time."})
    gpu: str = field(
        default="H100", metadata={"help": f"GPU name for its bf16 peak, one of {[n for n, _ in PEAK_BF16_FLOPS]}."}
    )
    peak_flops: float | None = field(default=None, metadata={"help": "Peak FLOP/s of one GPU (instead of gpu)."})
    mfu: float = field(default=0.4, metadata={"help": "Expected model FLOPs utilisation, in (0, 1]."})

    def __post_init__(self):
        if self.parameters is None and self.flops is None:
            raise ValueError("Give parameters, flops, or both.")
        for name in ("parameters", "flops", "tokens", "global_batch_tokens", "peak_flops"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        if self.parameters is not None and self.flops is not None and self.tokens is not None:
            raise ValueError("parameters, flops and tokens over-determine the plan (C = 6·N·D): give two of them.")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"mfu must be in (0, 1], got {self.mfu}.")
        if self.gpus < 1:
            raise ValueError(f"gpus must be at least 1, got {self.gpus}.")
        if self.tokens_per_parameter <= 0:
            raise ValueError(f"tokens_per_parameter must be positive, got {self.tokens_per_parameter}.")
        if self.peak_flops is None and peak_flops_per_device(self.gpu) is None:
            raise ValueError(f"gpu={self.gpu!r} has no known peak; give peak_flops (FLOP/s of one GPU).")


@dataclass(frozen=True)
class ComputePlan:
    parameters: float
    tokens: float
    flops: float
    steps: int | None
    wall_seconds: float
    gpus: int
    mfu: float
    peak_flops: float

    @property
    def tokens_per_parameter(self) -> float:
        return self.tokens / self.parameters

    def describe(self) -> str:
        days = self.wall_seconds / 86400
        rows = [
            ("parameters", f"{self.parameters:.4g}"),
            ("tokens", f"{self.tokens:.4g}"),
            ("tokens per parameter", f"{_ratio(self.tokens_per_parameter)} (compute-optimal ≈ 20)"),
            ("training FLOPs (6·N·D)", f"{self.flops:.4g}"),
            ("optimizer steps", "-" if self.steps is None else f"{self.steps:,}"),
            (
                "wall time",
                f"{self.wall_seconds / 3600:,.1f} h ({days:,.1f} days) on {self.gpus} GPU(s) of {self.peak_flops:.3g} "
                f"FLOP/s at {self.mfu:.0%} MFU",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
        warning = optimality_warning(self.parameters, self.tokens)
        return "\n".join(lines + ([f"warning: {warning}"] if warning else []))


def plan_compute(args: PlanArguments) -> ComputePlan:
    """Fill in the plan: N and D from whichever of parameters, flops and tokens were given."""
    parameters, tokens, flops = args.parameters, args.tokens, args.flops
    if parameters is None:  # from the budget: compute-optimal, or the model that spends it on the given tokens
        if tokens is None:
            parameters, tokens = optimal_for_budget(flops, args.tokens_per_parameter)
        else:
            parameters = flops / (FLOPS_PER_PARAMETER_TOKEN * tokens)
    elif tokens is None:
        tokens = flops / (FLOPS_PER_PARAMETER_TOKEN * parameters) if flops else parameters * args.tokens_per_parameter
    flops = training_flops(parameters, tokens)
    peak = args.peak_flops or peak_flops_per_device(args.gpu)
    steps = math.ceil(tokens / args.global_batch_tokens) if args.global_batch_tokens else None
    wall = flops / (args.gpus * peak * args.mfu)
    return ComputePlan(parameters, tokens, flops, steps, wall, args.gpus, args.mfu, peak)


def run_summary(parameters: float, tokens: float) -> tuple[str, str | None]:
    """The line a training run logs at start, and a warning when it is far from compute-optimal (else None).

    >>> run_summary(1e6, 2e7)[0]
    'Compute: 1e+06 parameters × 2e+07 tokens = 20 tokens per parameter (compute-optimal ≈ 20, i.e. 2e+07 tokens); ≈ 1.2e+14 training FLOPs (6·N·D).'
    """
    if parameters <= 0 or tokens < 0:
        raise ValueError(f"run_summary needs a positive parameter count and tokens >= 0, got {parameters}, {tokens}.")
    message = (
        f"Compute: {parameters:.3g} parameters × {tokens:.3g} tokens = {_ratio(tokens / parameters)} tokens per "
        f"parameter (compute-optimal ≈ 20, i.e. {chinchilla_tokens(parameters):.3g} tokens); ≈ "
        f"{training_flops(parameters, tokens):.3g} training FLOPs (6·N·D)."
    )
    return message, optimality_warning(parameters, tokens)


def _ratio(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
