"""WSD schedules: the closed form against hand-computed values and against transformers, steps vs fractions,
errors, cooldown branches, and phase boundaries that survive a real Trainer checkpoint and resume."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, get_wsd_schedule

from hf_pretrain.checkpoint_state import schedule_from_checkpoint
from hf_pretrain.schedules import (
    SCHEDULE_TYPES,
    ScheduleStateCallback,
    WSDSchedule,
    cooldown_schedule,
    resolve_steps,
    wsd_schedule,
)

# ---- closed form: total 100 = warmup 10 + stable 70 + decay 20 (steps 80..99), min_lr_ratio 0.1 -----------------
# Expected ratios written from the formulas, not from the code: ratio = 0.1 + 0.9 * shape(progress), where warmup
# progress = step / 10 and decay progress = (step - 80) / 20.
M = 0.1


def _scaled(factor: float) -> float:
    return M + (1 - M) * factor


WARMUP_AND_STABLE = {  # the same for every decay type
    0: _scaled(0.0),  # warmup starts at min_lr_ratio, not 0
    5: _scaled(0.5),
    9: _scaled(0.9),
    10: 1.0,
    50: 1.0,
    79: 1.0,
    80: 1.0,  # first decay step: progress 0
}
DECAY_TABLE = {
    "linear": {85: _scaled(0.75), 90: _scaled(0.5), 95: _scaled(0.25), 99: _scaled(0.05)},
    "cosine": {
        85: _scaled(0.5 + math.sqrt(2) / 4),  # 0.5 * (1 + cos(pi/4))
        90: _scaled(0.5),
        95: _scaled(0.5 - math.sqrt(2) / 4),
        99: _scaled(0.5 * (1 + math.cos(math.pi * 0.95))),
    },
    "1-sqrt": {
        85: _scaled(0.5),
        90: _scaled(1 - math.sqrt(0.5)),
        95: _scaled(1 - math.sqrt(0.75)),
        99: _scaled(1 - math.sqrt(0.95)),
    },
}
AFTER_DECAY = {100: M, 150: M}


@pytest.mark.parametrize("decay_type", SCHEDULE_TYPES)
def test_lr_ratio_matches_the_hand_computed_table(decay_type):
    schedule = wsd_schedule(100, warmup=10, decay=20, decay_type=decay_type, min_lr_ratio=M)
    assert (schedule.warmup_steps, schedule.stable_steps, schedule.decay_steps) == (10, 70, 20)
    table = {**WARMUP_AND_STABLE, **DECAY_TABLE[decay_type], **AFTER_DECAY}
    got = {step: schedule.lr_ratio(step) for step in table}
    assert got == pytest.approx(table, abs=1e-12)


@pytest.mark.parametrize(
    ("warmup_type", "step", "expected"),
    [
        ("cosine", 5, 0.5),  # 0.5 * (1 - cos(pi/2))
        ("cosine", 2, 0.5 * (1 - math.cos(math.pi * 0.2))),
        ("1-sqrt", 5, 1 - math.sqrt(0.5)),
        ("1-sqrt", 2, 1 - math.sqrt(0.8)),
    ],
)
def test_warmup_shapes_match_the_hand_computed_values(warmup_type, step, expected):
    schedule = wsd_schedule(100, warmup=10, decay=20, warmup_type=warmup_type, min_lr_ratio=M)
    assert schedule.lr_ratio(step) == pytest.approx(_scaled(expected), abs=1e-12)


def test_phases_and_boundaries():
    schedule = wsd_schedule(100, warmup=10, decay=20)
    assert schedule.decay_start == 80 and schedule.total_steps == 100
    phases = [schedule.phase(step) for step in (0, 9, 10, 79, 80, 99, 100, 1000)]
    assert phases == ["warmup", "warmup", "stable", "stable", "decay", "decay", "done", "done"]
    assert wsd_schedule(10, warmup=0, decay=0).phase(0) == "stable"


# ---- the closed form is transformers' schedule, exactly --------------------------------------------------------
PHASES = [(0, 5, 5), (3, 0, 4), (3, 4, 0), (0, 0, 6), (1, 1, 1), (7, 20, 9)]


def _lrs(scheduler, optimizer, steps: int) -> list[float]:
    """The learning rate before each of `steps` optimizer steps, then the one after the last."""
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return [*lrs, scheduler.get_last_lr()[0]]


def _optimizer(lr: float = 0.3) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("phases", PHASES)
@pytest.mark.parametrize("decay_type", SCHEDULE_TYPES)
@pytest.mark.parametrize("warmup_type", SCHEDULE_TYPES)
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.25])
def test_lr_ratio_equals_build_and_get_wsd_schedule(phases, decay_type, warmup_type, min_lr_ratio):
    warmup, stable, decay = phases
    schedule = WSDSchedule(warmup, stable, decay, decay_type, warmup_type, min_lr_ratio)
    steps = schedule.total_steps + 3  # run past the end: the ratio must stay at min_lr_ratio
    expected = [0.3 * schedule.lr_ratio(step) for step in range(steps + 1)]

    optimizer = _optimizer()
    assert _lrs(schedule.build(optimizer), optimizer, steps) == expected  # exact, not approximate

    # transformers given the total instead of the stable steps: an independent path to the same schedule.
    optimizer = _optimizer()
    reference = get_wsd_schedule(
        optimizer,
        num_warmup_steps=warmup,
        num_decay_steps=decay,
        num_training_steps=schedule.total_steps,
        warmup_type=warmup_type,
        decay_type=decay_type,
        min_lr_ratio=min_lr_ratio,
    )
    assert _lrs(reference, optimizer, steps) == expected


def test_a_scheduler_reloaded_mid_run_continues_the_schedule():
    schedule = wsd_schedule(30, warmup=0.1, decay=0.3, decay_type="cosine", min_lr_ratio=0.05)
    optimizer = _optimizer()
    scheduler = schedule.build(optimizer)
    _lrs(scheduler, optimizer, 17)
    resumed_optimizer = _optimizer()
    resumed = schedule.build(resumed_optimizer)
    resumed.load_state_dict(scheduler.state_dict())
    assert _lrs(resumed, resumed_optimizer, 15) == [0.3 * schedule.lr_ratio(step) for step in range(17, 33)]


# ---- steps or fractions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "total", "steps"),
    [(0, 200, 0), (0.1, 200, 20), (20, 200, 20), (20.0, 200, 20), (0.15, 10, 2), (0.001, 100, 1), (0.07, 100, 7)],
)
def test_resolve_steps(value, total, steps):
    # 0.15 of 10 = 1.5 rounds up; 0.001 of 100 is not 0 steps; 0.07 of 100 is 7 though 100 * 0.07 = 7.000000000000001.
    assert resolve_steps(value, total, "warmup") == steps


def test_fractions_and_steps_give_the_same_schedule():
    assert wsd_schedule(200, warmup=0.1, decay=0.2) == wsd_schedule(200, warmup=20, decay=40)
    study = WSDSchedule(warmup_steps=2000, stable_steps=38000, decay_steps=2000)
    assert wsd_schedule(42000, warmup=2000, decay=2000) == study
    assert wsd_schedule(40000, warmup=0.05, decay=0.05) == WSDSchedule(2000, 36000, 2000)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), total=st.integers(min_value=2, max_value=100_000))
def test_fractions_of_the_total_resolve_to_the_same_steps(data, total):
    warmup = data.draw(st.integers(min_value=0, max_value=total - 1), label="warmup")
    decay = data.draw(st.integers(min_value=0, max_value=min(total - 1, total - warmup)), label="decay")
    by_fraction = wsd_schedule(total, warmup=warmup / total, decay=decay / total)
    by_steps = wsd_schedule(total, warmup=warmup, decay=decay)
    assert by_fraction == by_steps
    assert by_steps.total_steps == total and by_steps.stable_steps == total - warmup - decay


# ---- errors name the field -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"total_steps": 100, "warmup": 60, "decay": 50},
            r"warmup \(60 -> 60 steps\) \+ decay \(50 -> 50 steps\).*total_steps=100",
        ),
        (
            {"total_steps": 100, "warmup": 0.6, "decay": 0.5},
            r"warmup \(0\.6 -> 60 steps\) \+ decay \(0\.5 -> 50 steps\)",
        ),
        ({"total_steps": 100, "warmup": -1}, "warmup must be >= 0"),
        ({"total_steps": 100, "decay": -0.1}, "decay must be >= 0"),
        ({"total_steps": 100, "warmup": 20.5}, "warmup=20.5 is >= 1, so it is a step count"),
        ({"total_steps": 100, "decay": float("nan")}, "decay must be a finite number"),
        ({"total_steps": 100, "decay_type": "exponential"}, "decay_type must be one of"),
        ({"total_steps": 100, "warmup_type": "step"}, "warmup_type must be one of"),
        ({"total_steps": 100, "min_lr_ratio": -0.1}, r"min_lr_ratio must be a number in \[0, 1\]"),
        ({"total_steps": 100, "min_lr_ratio": 1.5}, r"min_lr_ratio must be a number in \[0, 1\]"),
        ({"total_steps": 0}, "total_steps must be a positive integer"),
        ({"total_steps": 10.5}, "total_steps must be a positive integer"),
    ],
)
def test_wsd_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wsd_schedule(**kwargs)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"warmup_steps": -1}, "warmup_steps must be a non-negative integer"),
        ({"stable_steps": 2.0}, "stable_steps must be a non-negative integer"),
        ({"decay_steps": True}, "decay_steps must be a non-negative integer"),
        ({"decay_type": "Linear"}, "decay_type must be one of"),
        ({"min_lr_ratio": float("nan")}, "min_lr_ratio"),
    ],
)
def test_wsd_schedule_fields_are_validated(fields, match):
    with pytest.raises(ValueError, match=match):
        WSDSchedule(**{"warmup_steps": 1, "stable_steps": 1, "decay_steps": 1, **fields})


def test_other_misuse_is_named():
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        WSDSchedule(1, 1, 1).lr_ratio(-1)
    with pytest.raises(ValueError, match=r"Unknown WSDSchedule fields \['warmup'\]"):
        WSDSchedule.from_dict({"warmup": 1, "stable_steps": 1, "decay_steps": 1})
    with pytest.raises(ValueError, match="either a WSDSchedule or its fields"):
        ScheduleStateCallback(SCHEDULE, warmup_steps=2)


def test_dict_round_trip_through_json():
    schedule = wsd_schedule(1000, warmup=0.02, decay=0.2, decay_type="1-sqrt", min_lr_ratio=0.1, warmup_type="cosine")
    assert WSDSchedule.from_dict(json.loads(json.dumps(schedule.to_dict()))) == schedule


# ---- cooldown branches ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("decay_type", SCHEDULE_TYPES)
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1])
def test_cooldown_decays_from_the_peak_to_min_lr_ratio(decay_type, min_lr_ratio):
    n = 37
    cooldown = cooldown_schedule(n, decay_type=decay_type, min_lr_ratio=min_lr_ratio)
    ratios = [cooldown.lr_ratio(step) for step in range(n + 5)]
    assert ratios[0] == 1.0 and cooldown.phase(0) == "decay"
    assert ratios[n:] == [min_lr_ratio] * 5
    assert all(later <= earlier for earlier, later in zip(ratios, ratios[1:]))
    assert ratios[n - 1] > min_lr_ratio  # it really decays over n steps, not fewer


def test_a_cooldown_branched_at_the_decay_start_retraces_the_main_decay():
    main = wsd_schedule(420, warmup=20, decay=20, decay_type="cosine", min_lr_ratio=0.1)
    cooldown = cooldown_schedule(20, decay_type="cosine", min_lr_ratio=0.1)
    assert [cooldown.lr_ratio(i) for i in range(25)] == [main.lr_ratio(main.decay_start + i) for i in range(25)]
    # Branching earlier (any stable-phase step) starts from the same peak, so the LR does not jump.
    assert all(main.lr_ratio(step) == cooldown.lr_ratio(0) == 1.0 for step in range(20, main.decay_start))


# ---- checkpoints: a real Trainer saves the phases, and a resumed run follows them -------------------------------
SCHEDULE = wsd_schedule(8, warmup=2, decay=0.25, decay_type="cosine", min_lr_ratio=0.1)  # phases 2 + 4 + 2
PEAK_LR = 1e-3


def _train(output_dir, schedule: WSDSchedule, callback_schedule: WSDSchedule, resume_from=None) -> Trainer:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (16, 8)).tolist()]
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=8,
        per_device_train_batch_size=2,
        save_steps=4,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        restore_callback_states_from_checkpoint=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        optimizers=(optimizer, schedule.build(optimizer)),
        callbacks=[ScheduleStateCallback(callback_schedule)],
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return trainer


def _logged_lrs(trainer: Trainer) -> dict[int, float]:
    return {log["step"]: log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("wsd_run")
    return output_dir, _train(output_dir, SCHEDULE, SCHEDULE)


def test_each_checkpoint_stores_the_schedule(uninterrupted):
    output_dir, trainer = uninterrupted
    for step in (4, 8):
        assert schedule_from_checkpoint(output_dir / f"checkpoint-{step}") == SCHEDULE
    state = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["ScheduleStateCallback"] == {"args": SCHEDULE.to_dict(), "attributes": {}}
    # The Trainer logs at step s the LR that update used, set after s - 1 scheduler steps: peak * ratio(s - 1).
    expected = {s: PEAK_LR * SCHEDULE.lr_ratio(s - 1) for s in range(1, 9)}
    assert _logged_lrs(trainer) == pytest.approx(expected, abs=1e-15)


def test_a_resumed_run_follows_the_schedule_it_started_with(uninterrupted, tmp_path):
    output_dir, trainer = uninterrupted
    checkpoint = tmp_path / "checkpoint-4"  # a copy, so resuming does not write into the shared run
    checkpoint.mkdir()
    for path in (output_dir / "checkpoint-4").iterdir():
        (checkpoint / path.name).write_bytes(path.read_bytes())
    # The arguments changed since the run started (now 4 decay steps); the checkpoint's phases win.
    changed = wsd_schedule(8, warmup=2, decay=0.5, decay_type="linear")
    stored = schedule_from_checkpoint(checkpoint)
    assert stored == SCHEDULE != changed
    resumed = _train(tmp_path, stored, changed, resume_from=checkpoint)

    # Steps 1-4 come from the checkpoint's log history; steps 5-8 ran after the resume.
    assert _logged_lrs(resumed) == _logged_lrs(trainer)
    after_resume = [lr for s, lr in sorted(_logged_lrs(trainer).items()) if s > 4]
    assert [PEAK_LR * changed.lr_ratio(s - 1) for s in range(5, 9)] != after_resume  # the jump the stored phases avoid
    # restore_callback_states_from_checkpoint rebuilt the callback from the checkpoint: ScheduleStateCallback(**args).
    (callback,) = [cb for cb in resumed.callback_handler.callbacks if isinstance(cb, ScheduleStateCallback)]
    assert callback.schedule == SCHEDULE
    assert schedule_from_checkpoint(tmp_path / "checkpoint-8") == SCHEDULE


def test_a_checkpoint_without_a_schedule(tmp_path):
    assert schedule_from_checkpoint(tmp_path) is None  # no trainer_state.json (e.g. a save_model folder)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"stateful_callbacks": {"TrainerControl": {}}}))
    assert schedule_from_checkpoint(tmp_path) is None
    # A callback whose schedule was not set yet stores empty args: the Trainer rebuilds it as ScheduleStateCallback().
    unset = ScheduleStateCallback(None).state()
    assert unset == {"args": {}, "attributes": {}} and ScheduleStateCallback(**unset["args"]).schedule is None
    (tmp_path / "trainer_state.json").write_text(json.dumps({"stateful_callbacks": {"ScheduleStateCallback": unset}}))
    assert schedule_from_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
        schedule_from_checkpoint(tmp_path / "checkpoint-999")


def test_several_stored_schedules_must_agree(tmp_path):
    entry = ScheduleStateCallback(SCHEDULE).state()
    other = ScheduleStateCallback(**cooldown_schedule(5).to_dict()).state()
    state = {"stateful_callbacks": {"ScheduleStateCallback": [entry, entry]}}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    assert schedule_from_checkpoint(tmp_path) == SCHEDULE
    state["stateful_callbacks"]["ScheduleStateCallback"].append(other)
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="2 different WSD schedules"):
        schedule_from_checkpoint(tmp_path)
