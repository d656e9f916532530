"""Every run draws its curves: the figures from a hand-made log history (axes labelled, WSD phases shaded, the
objective switch marked), then one recipe run that writes plots/ at its save and at the end, and TensorBoard
events offline."""

import glob
import math
import os
import types

import pytest
from _runs import pretrain

from hf_pretrain.schedules import wsd_schedule
from hf_pretrain.training.plots import PLOTS_DIR, RunPlotsCallback, draw_plots, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(with_mfu=True):
    """A CLM→MLM run of 100 steps logged every 10: loss, LR, tokens (256 per step), speed; evaluation every 50."""
    schedule = wsd_schedule(100, 10, 20)
    history = []
    for step in range(10, 101, 10):
        entry = {
            "step": step,
            "loss": 6.0 - step / 25,
            "learning_rate": 1e-3 * schedule.lr_ratio(step),
            "num_input_tokens_seen": 256 * step,
            "tokens_per_second": 1000.0 + step,
            **({"mfu": 0.2} if with_mfu else {}),
        }
        entry.update({"perplexity": math.exp(entry["loss"])} if step < 50 else {"mlm_accuracy": step / 200})
        history.append(entry)
        if step % 50 == 0:
            history.append({"step": step, "eval_loss": entry["loss"] + 0.1, "eval_mlm_accuracy": step / 250})
    history.append({"step": 100, "train_loss": 4.0, "train_runtime": 1.0})  # the Trainer's closing summary
    return history, schedule


def _labels(axes):
    return [artist.get_label() for artist in (*axes.patches, *axes.lines)]


def test_figures_by_hand():
    history, schedule = _history()
    figures = draw_plots(history, schedule, [(50, "mlm")])
    assert sorted(figures) == ["learning_rate.png", "loss.png", "metrics.png", "throughput.png"]

    by_step, by_tokens = figures["loss.png"].axes
    assert (by_step.get_xlabel(), by_tokens.get_xlabel()) == ("optimizer step", "tokens seen")
    assert by_step.get_ylabel().startswith("loss")
    # the WSD phases as shaded spans with their step ranges, the switch as a vertical line at step 50
    spans = {patch.get_label(): patch.get_x() for patch in by_step.patches}
    assert spans == {"warmup": 0, "stable": 10, "decay": 80}
    switch = next(line for line in by_step.lines if line.get_label() == "switch to mlm")
    assert list(switch.get_xdata()) == [50, 50]
    train = next(line for line in by_tokens.lines if line.get_label() == "training loss")
    assert list(train.get_xdata()) == [256 * s for s in range(10, 101, 10)]
    evaluation = next(line for line in by_tokens.lines if line.get_label() == "evaluation loss")
    assert list(evaluation.get_xdata()) == [256 * 50, 256 * 100]  # tokens interpolated from the training logs

    (rate,) = figures["learning_rate.png"].axes
    assert rate.get_ylabel() == "learning rate" and {"warmup", "stable", "decay", "learning rate"} <= set(
        _labels(rate)
    )
    speed, mfu = figures["throughput.png"].axes  # MFU on a twin axis
    assert speed.get_ylabel().startswith("tokens per second") and mfu.get_ylabel() == "MFU (%)"
    perplexity, accuracy = figures["metrics.png"].axes
    assert perplexity.get_yscale() == "log" and accuracy.get_ylabel() == "masked-LM accuracy"
    assert set(_labels(accuracy)) >= {"training", "evaluation", "switch to mlm"}


def test_only_what_was_logged(tmp_path):
    history, _ = _history(with_mfu=False)
    history = [
        {k: v for k, v in e.items() if k not in ("perplexity", "mlm_accuracy", "eval_mlm_accuracy")} for e in history
    ]
    paths = write_plots(history, str(tmp_path / "plots"))  # no schedule, no switch, no MFU, no metric
    assert sorted(os.path.basename(p) for p in paths) == ["learning_rate.png", "loss.png", "throughput.png"]
    assert len(draw_plots(history)["throughput.png"].axes) == 1  # no MFU axis when no peak FLOPs were known
    assert write_plots([], str(tmp_path / "empty")) == []


def test_callback_draws_on_the_main_process_only(tmp_path):
    history, schedule = _history()
    callback = RunPlotsCallback(schedule, [(50, "mlm")])
    args = types.SimpleNamespace(output_dir=str(tmp_path))
    callback.on_save(args, types.SimpleNamespace(is_world_process_zero=False, log_history=history), None)
    assert not (tmp_path / PLOTS_DIR).exists()
    callback.on_evaluate(args, types.SimpleNamespace(is_world_process_zero=True, log_history=history), None)
    assert not (tmp_path / PLOTS_DIR).exists()  # a periodic evaluation is drawn at the next save, not here
    callback.on_save(args, types.SimpleNamespace(is_world_process_zero=True, log_history=history), None)
    assert len(os.listdir(tmp_path / PLOTS_DIR)) == 4


def test_a_run_writes_plots_and_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard", reason="report_to: tensorboard needs the tensorboard package (extra: test)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    pretrain.main(
        [
            "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "512", "--block_size", "32",
            "--per_device_train_batch_size", "4", "--max_documents", "24", "--seed", "0", "--max_steps", "4",
            "--logging_steps", "1", "--eval_steps", "4", "--save_steps", "2", "--warmup_steps", "1",
            "--per_device_eval_batch_size", "32",
            "--decay_steps", "2", "--output_dir", str(out), "--report_to", "tensorboard",
        ]
    )  # fmt: skip
    plots = sorted(os.path.basename(p) for p in glob.glob(str(out / PLOTS_DIR / "*.png")))
    assert plots == ["learning_rate.png", "loss.png", "metrics.png", "throughput.png"]
    for name in plots:
        with open(out / PLOTS_DIR / name, "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
    events = glob.glob(str(out / "runs" / "*" / "events.out.tfevents.*"))
    assert events, os.listdir(out)
    accumulator = EventAccumulator(os.path.dirname(events[0]))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "eval/loss"} <= set(scalars), scalars
    assert [event.step for event in accumulator.Scalars("train/loss")] == [1, 2, 3, 4]
