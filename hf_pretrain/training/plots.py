"""Every run draws its curves: PNGs under `output_dir/plots/`, redrawn at each save and at the end of training.

From `TrainerState.log_history` alone (what `trainer_state.json` holds, so a finished run can be redrawn too):

- `loss.png`: training and evaluation loss against optimizer steps and against tokens seen;
- `learning_rate.png`: the learning rate, with the WSD phases (warmup, stable, decay) shaded;
- `throughput.png`: tokens/s, and MFU on a second axis when the peak FLOPs of the device are known;
- `metrics.png`: perplexity (causal phases) and masked-LM accuracy (masked phases), training and evaluation.

Every panel against steps marks the objective switches (CLM→MLM) with a dashed line. The WSD phases and the
switches are given at construction (`RunPlotsCallback(schedule, switches)`), from the run's resolved schedule and
objective plan, never read back from the trainer. Drawn with matplotlib's object API on the Agg canvas (no pyplot:
no global figure state, no display needed), on the main process only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
from transformers import TrainerCallback

from hf_pretrain.schedules import WSDSchedule

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"  # under output_dir
_PHASE_COLOURS = {"warmup": "tab:orange", "stable": "tab:green", "decay": "tab:purple"}
_TOKENS = "num_input_tokens_seen"


def _series(history: Sequence[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the log entries that have both `x` and `key`, in log order."""
    points = [(entry[x], entry[key]) for entry in history if key in entry and x in entry and entry[key] is not None]
    if not points:
        return np.empty(0), np.empty(0)
    xs, ys = zip(*points, strict=True)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _tokens_at(history: Sequence[dict], steps: np.ndarray) -> np.ndarray | None:
    """Tokens seen at `steps`, interpolated from the training logs (evaluation logs do not carry the count)."""
    known_steps, tokens = _series(history, _TOKENS)
    if known_steps.size == 0:
        return None
    return np.interp(steps, np.concatenate([[0.0], known_steps]), np.concatenate([[0.0], tokens]))


def _new_figure(rows: int = 1, columns: int = 1, width: float = 7.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False).ravel()


def _mark_run(axes, schedule: WSDSchedule | None, switches: Sequence[tuple[int, str]], label: bool = True) -> None:
    """Shade the WSD phases and draw a dashed line at each objective switch on a steps axis."""
    if schedule is not None:
        start = 0
        for phase, length in (
            ("warmup", schedule.warmup_steps),
            ("stable", schedule.stable_steps),
            ("decay", schedule.decay_steps),
        ):
            if length:
                axes.axvspan(start, start + length, color=_PHASE_COLOURS[phase], alpha=0.12, lw=0, label=phase)
            start += length
    for step, name in switches:
        axes.axvline(step, color="black", linestyle="--", linewidth=1, label=f"switch to {name}" if label else None)


def _finish(axes, xlabel: str, ylabel: str, title: str | None = None) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)


def _loss_figure(history, schedule, switches):
    train_steps, train_loss = _series(history, "loss")
    eval_steps, eval_loss = _series(history, "eval_loss")
    if train_steps.size == 0 and eval_steps.size == 0:
        return None
    figure, (by_step, by_tokens) = _new_figure(1, 2, width=11.0)
    _mark_run(by_step, schedule, switches)
    for axes, x_train, x_eval in (
        (by_step, train_steps, eval_steps),
        (by_tokens, _tokens_at(history, train_steps), _tokens_at(history, eval_steps)),
    ):
        if x_train is None:  # no token counts logged (include_num_input_tokens_seen: no)
            axes.text(0.5, 0.5, "tokens seen not logged", ha="center", transform=axes.transAxes)
            continue
        if train_steps.size:
            axes.plot(x_train, train_loss, label="training loss", linewidth=1.2)
        if eval_steps.size:
            axes.plot(x_eval, eval_loss, "o-", label="evaluation loss", markersize=3)
    _finish(by_step, "optimizer step", "loss (cross-entropy, nats)", "loss against steps")
    from matplotlib.ticker import EngFormatter

    by_tokens.xaxis.set_major_formatter(EngFormatter())  # 200k, 1.5M, 2G tokens
    _finish(by_tokens, "tokens seen", "loss (cross-entropy, nats)", "loss against tokens")
    return figure


def _learning_rate_figure(history, schedule, switches):
    steps, rates = _series(history, "learning_rate")
    if steps.size == 0:
        return None
    figure, (axes,) = _new_figure()
    _mark_run(axes, schedule, switches)
    axes.plot(steps, rates, color="tab:blue", label="learning rate")
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    title = f"learning rate ({schedule.decay_type} WSD)" if schedule is not None else "learning rate"
    _finish(axes, "optimizer step", "learning rate", title)
    return figure


def _throughput_figure(history, schedule, switches):
    steps, speed = _series(history, "tokens_per_second")
    if steps.size == 0:
        return None
    figure, (axes,) = _new_figure()
    _mark_run(axes, None, switches)
    axes.plot(steps, speed, color="tab:blue", label="tokens/s")
    mfu_steps, mfu = _series(history, "mfu")
    if mfu_steps.size:
        twin = axes.twinx()
        twin.plot(mfu_steps, 100 * mfu, color="tab:red", linewidth=1, label="MFU")
        twin.set_ylabel("MFU (%)", color="tab:red")
        twin.set_ylim(bottom=0)
        twin.legend(*twin.get_legend_handles_labels(), loc="lower right", fontsize=8)
    axes.set_ylim(bottom=0)
    _finish(
        axes,
        "optimizer step",
        "tokens per second (all devices)",
        "throughput" + (" and MFU" if mfu_steps.size else ""),
    )
    return figure


def _metrics_figure(history, schedule, switches):
    panels = [
        (key, title)
        for key, title in (("perplexity", "perplexity (causal LM)"), ("mlm_accuracy", "masked-LM accuracy"))
        if _series(history, key)[0].size or _series(history, f"eval_{key}")[0].size
    ]
    if not panels:
        return None
    figure, axes_list = _new_figure(1, len(panels), width=5.5 * len(panels))
    for axes, (key, title) in zip(axes_list, panels, strict=True):
        _mark_run(axes, None, switches)
        for prefix, style, label in (("", "-", "training"), ("eval_", "o-", "evaluation")):
            steps, values = _series(history, prefix + key)
            if steps.size:
                axes.plot(steps, values, style, markersize=3, linewidth=1.2, label=label)
        if key == "perplexity":
            axes.set_yscale("log")
        _finish(axes, "optimizer step", title.split(" (")[0], title)
    return figure


_FIGURES = {
    "loss.png": _loss_figure,
    "learning_rate.png": _learning_rate_figure,
    "throughput.png": _throughput_figure,
    "metrics.png": _metrics_figure,
}


def draw_plots(
    history: Sequence[dict], schedule: WSDSchedule | None = None, switches: Sequence[tuple[int, str]] = ()
) -> dict:
    """{file name: matplotlib Figure} of the run's curves from `history` (TrainerState.log_history); a figure whose
    values were never logged is left out. `switches`: (first step, phase name) of each phase after the first."""
    figures = {name: draw(history, schedule, tuple(switches)) for name, draw in _FIGURES.items()}
    return {name: figure for name, figure in figures.items() if figure is not None}


def write_plots(
    history: Sequence[dict],
    folder: str,
    schedule: WSDSchedule | None = None,
    switches: Sequence[tuple[int, str]] = (),
) -> list[str]:
    """`draw_plots` saved as PNGs into `folder` (created); returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, figure in draw_plots(history, schedule, switches).items():
        path = os.path.join(folder, name)
        figure.savefig(path, format="png")
        written.append(path)
    return written


class RunPlotsCallback(TrainerCallback):
    """Redraws `output_dir/plots/` at every checkpoint save, at the end of training and after the final
    evaluation, on the main process. Plotting never stops a run: a failure is logged as a warning."""

    def __init__(self, schedule: WSDSchedule | None = None, switches: Sequence[tuple[int, str]] = ()):
        self.schedule = schedule
        self.switches = tuple((int(step), str(name)) for step, name in switches)
        self._trained = False

    def _draw(self, args, state) -> None:
        if not state.is_world_process_zero:
            return
        try:
            write_plots(state.log_history, os.path.join(args.output_dir, PLOTS_DIR), self.schedule, self.switches)
        except Exception as error:  # a broken font cache or a full disk must not cost the run
            logger.warning("Could not draw the run's plots: %s: %s", type(error).__name__, error)

    def on_save(self, args, state, control, **kwargs):
        self._draw(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._trained = True
        self._draw(args, state)

    def on_evaluate(self, args, state, control, **kwargs):
        if self._trained:  # the evaluation after training: its point belongs on the final curves
            self._draw(args, state)
