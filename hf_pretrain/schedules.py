"""Warmup-Stable-Decay (WSD) learning-rate schedules as pure functions, and the checkpoint state that pins them.

transformers' `get_wsd_schedule` wants absolute step counts for every phase; here warmup and decay may each be a
step count or a fraction of the run, and the resolved phases live in a frozen `WSDSchedule`. Its `lr_ratio` is the
closed form of transformers' lambda (so a schedule can be inspected or plotted without an optimizer), and `build`
hands the phases to `get_wsd_schedule` itself, so training uses transformers' code, not a copy of it.

Why the checkpoint state: a `LambdaLR` checkpoint stores the step, not the lambda. A resumed run rebuilds the lambda
from its *current* arguments, so changing `max_steps` or the decay fraction makes the learning rate jump.
`ScheduleStateCallback` writes the phase boundaries into each checkpoint's `trainer_state.json`, and
`hf_pretrain.checkpoint_state.schedule_from_checkpoint` reads them back so the resumed run can rebuild the schedule it started with. The same
file gives the stable-phase checkpoints from which `cooldown_schedule` branches off a decay-only run.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import torch
from transformers import get_wsd_schedule
from transformers.trainer_callback import ExportableState, TrainerCallback

SCHEDULE_TYPES = ("linear", "cosine", "1-sqrt")
_COSINE_CYCLES = 0.5  # get_wsd_schedule's default num_cycles: one half-cosine from the peak down to min_lr_ratio
_FRACTION_TOLERANCE = 1e-9  # relative float noise ignored when a fraction times the total lands on an integer


def resolve_steps(value: float, total_steps: int, name: str) -> int:
    """A step count from `value`, read as transformers reads `warmup_steps`.

    A value >= 1 is a step count (and must be a whole number); a value in [0, 1) is a fraction of `total_steps`,
    rounded up, so a non-zero fraction never gives zero steps.

    One deliberate difference from `TrainingArguments.get_warmup_steps`: a product that is an integer up to float
    noise counts as that integer (0.07 of 100 is 7 steps; `math.ceil(100 * 0.07)` alone gives 8).

    >>> resolve_steps(0.1, 200, "warmup"), resolve_steps(20, 200, "warmup"), resolve_steps(0.07, 100, "warmup")
    (20, 20, 7)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of steps or a fraction in [0, 1), got {value!r}.")
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer (needed to resolve {name}), got {total_steps!r}.")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (a step count, or a fraction in [0, 1)), got {value}.")
    if value >= 1:
        if value != int(value):  # transformers silently truncates 20.5 to 20; a typo should fail instead
            raise ValueError(f"{name}={value} is >= 1, so it is a step count and must be a whole number.")
        return int(value)
    steps = total_steps * value
    nearest = round(steps)
    if abs(steps - nearest) <= _FRACTION_TOLERANCE * max(1.0, steps):
        return int(nearest)
    return math.ceil(steps)


@dataclass(frozen=True)
class WSDSchedule:
    """The phases of a Warmup-Stable-Decay schedule, in optimizer steps; `lr_ratio` multiplies the peak LR.

    The ratio rises from `min_lr_ratio` to 1 over warmup, stays at 1, falls back to `min_lr_ratio` over decay and
    stays there afterwards. The schedule of arXiv 2507.00994 (2,000 warmup, 38,000 stable, 2,000 linear decay):

    >>> s = WSDSchedule(warmup_steps=2000, stable_steps=38000, decay_steps=2000)
    >>> s.total_steps, s.decay_start
    (42000, 40000)
    >>> [s.lr_ratio(step) for step in (0, 1000, 2000, 40000, 41000, 41500, 42000)]
    [0.0, 0.5, 1.0, 1.0, 0.5, 0.25, 0.0]
    >>> s.phase(1999), s.phase(2000), s.phase(40000), s.phase(42000)
    ('warmup', 'stable', 'decay', 'done')
    """

    warmup_steps: int
    stable_steps: int
    decay_steps: int
    decay_type: str = "linear"
    warmup_type: str = "linear"
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        for name in ("warmup_steps", "stable_steps", "decay_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
            object.__setattr__(self, name, int(value))  # numpy ints -> int, so equality and JSON behave
        for name in ("decay_type", "warmup_type"):
            if getattr(self, name) not in SCHEDULE_TYPES:
                raise ValueError(f"{name} must be one of {SCHEDULE_TYPES}, got {getattr(self, name)!r}.")
        ratio = self.min_lr_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be a number in [0, 1], got {ratio!r}.")
        object.__setattr__(self, "min_lr_ratio", float(ratio))

    @property
    def decay_start(self) -> int:
        """The first step of the decay phase: the last stable-phase checkpoint a cooldown can branch from."""
        return self.warmup_steps + self.stable_steps

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.stable_steps + self.decay_steps

    def phase(self, step: int) -> str:
        """'warmup', 'stable', 'decay' or 'done' (at and after `total_steps`, where the ratio is `min_lr_ratio`)."""
        _check_step(step)
        if step < self.warmup_steps:
            return "warmup"
        if step < self.decay_start:
            return "stable"
        return "decay" if step < self.total_steps else "done"

    def lr_ratio(self, step: int) -> float:
        """The LR multiplier after `step` optimizer steps: `_get_wsd_scheduler_lambda`, operation for operation.

        Kept in the same float operations as transformers so that `lr_ratio(s) == build(opt).lr_lambdas[0](s)`
        exactly, not approximately: the tests compare with `==`.
        """
        phase = self.phase(step)
        if phase == "stable":
            return 1.0
        if phase == "done":
            return self.min_lr_ratio
        if phase == "warmup":
            progress = float(step) / float(max(1, self.warmup_steps))
            if self.warmup_type == "linear":
                factor = progress
            elif self.warmup_type == "cosine":
                factor = 0.5 * (1.0 - math.cos(math.pi * progress))
            else:  # 1-sqrt
                factor = 1.0 - math.sqrt(1.0 - progress)
        else:
            progress = float(step - self.decay_start) / float(max(1, self.decay_steps))
            if self.decay_type == "linear":
                factor = 1.0 - progress
            elif self.decay_type == "cosine":
                factor = 0.5 * (1.0 + math.cos(math.pi * _COSINE_CYCLES * 2.0 * progress))
            else:  # 1-sqrt
                factor = 1.0 - math.sqrt(progress)
        # Warmup starts at min_lr_ratio (not 0) in transformers; decay ends there.
        return max(0.0, factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WSDSchedule:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown WSDSchedule fields {sorted(unknown)}; expected those of WSDSchedule.to_dict().")
        return cls(**data)

    def build(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1) -> torch.optim.lr_scheduler.LambdaLR:
        """transformers' WSD `LambdaLR` for these phases (num_stable_steps given, so no total is re-derived)."""
        return get_wsd_schedule(
            optimizer,
            num_warmup_steps=self.warmup_steps,
            num_decay_steps=self.decay_steps,
            num_stable_steps=self.stable_steps,
            warmup_type=self.warmup_type,
            decay_type=self.decay_type,
            min_lr_ratio=self.min_lr_ratio,
            num_cycles=_COSINE_CYCLES,
            last_epoch=last_epoch,
        )


def _check_step(step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}.")


def wsd_schedule(
    total_steps: int,
    warmup: float = 0,
    decay: float = 0.1,
    decay_type: str = "linear",
    min_lr_ratio: float = 0.0,
    warmup_type: str = "linear",
) -> WSDSchedule:
    """A WSD schedule over `total_steps`: warmup and decay each a step count (>= 1) or a fraction (< 1) of the run.

    The stable phase is whatever is left, so the phases always add up to `total_steps`.

    >>> wsd_schedule(200, warmup=0.1, decay=0.2) == wsd_schedule(200, warmup=20, decay=40)
    True
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}.")
    warmup_steps = resolve_steps(warmup, total_steps, "warmup")
    decay_steps = resolve_steps(decay, total_steps, "decay")
    if warmup_steps + decay_steps > total_steps:
        raise ValueError(
            f"warmup ({warmup} -> {warmup_steps} steps) + decay ({decay} -> {decay_steps} steps) = "
            f"{warmup_steps + decay_steps} steps exceeds total_steps={total_steps}."
        )
    return WSDSchedule(
        warmup_steps=warmup_steps,
        stable_steps=total_steps - warmup_steps - decay_steps,
        decay_steps=decay_steps,
        decay_type=decay_type,
        warmup_type=warmup_type,
        min_lr_ratio=min_lr_ratio,
    )


def cooldown_schedule(
    decay_steps: int, decay_type: str = "linear", min_lr_ratio: float = 0.0, warmup_steps: int = 0
) -> WSDSchedule:
    """A cooldown branch: no stable phase, an optional short warmup, then the decay to `min_lr_ratio`.

    The branch loads the weights of a stable-phase checkpoint (where the LR was the peak) and trains
    `warmup_steps + decay_steps` more steps with a fresh scheduler from this schedule, counting from 0; the warmup
    is there because the branch's optimizer state is fresh.

    >>> [cooldown_schedule(4).lr_ratio(step) for step in range(5)]
    [1.0, 0.75, 0.5, 0.25, 0.0]
    >>> cooldown_schedule(4, warmup_steps=2).lr_ratio(1), cooldown_schedule(4, warmup_steps=2).total_steps
    (0.5, 6)
    """
    return WSDSchedule(warmup_steps, 0, decay_steps, decay_type=decay_type, min_lr_ratio=min_lr_ratio)


class ScheduleStateCallback(TrainerCallback, ExportableState):
    """Stores a `WSDSchedule` in every checkpoint's `trainer_state.json` (under `stateful_callbacks`).

    The Trainer saves `state()` of every `ExportableState` callback and, with
    `restore_callback_states_from_checkpoint=True`, rebuilds it on resume as `ScheduleStateCallback(**state["args"])`:
    hence the keyword form of the constructor. The schedule may be None at first and set later (`.schedule = ...`),
    since a Trainer knows its total steps only when it creates the scheduler, after the callbacks exist; until then
    `state()` stores empty args, which `schedule_from_checkpoint` reads as "no schedule".
    """

    def __init__(self, schedule: WSDSchedule | None = None, **schedule_fields):
        if schedule is not None and schedule_fields:
            raise ValueError("Give ScheduleStateCallback either a WSDSchedule or its fields as keywords, not both.")
        self.schedule = WSDSchedule.from_dict(schedule_fields) if schedule_fields else schedule

    def state(self) -> dict:
        return {"args": self.schedule.to_dict() if self.schedule is not None else {}, "attributes": {}}
