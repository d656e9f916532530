"""Result tables (CSV, JSON, Markdown) and plots (PNG) of the evaluation recipes.

Plots use matplotlib's object API with the Agg canvas: no pyplot global state and no display, so they work on a
headless machine and never change the backend of the caller's session.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence


def write_rows(rows: Sequence[dict], path_stem: str) -> list[str]:
    """Write `rows` to `<path_stem>.csv` and `<path_stem>.json`; returns the two paths. Columns: every key, in order
    of first appearance."""
    os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(f"{path_stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(f"{path_stem}.json", "w") as handle:
        json.dump(list(rows), handle, indent=2, default=float)
    return [f"{path_stem}.csv", f"{path_stem}.json"]


def markdown_table(rows: Sequence[dict], columns: Sequence[str], formats: dict[str, Callable] | None = None) -> str:
    """A Markdown table of `columns`; `formats` maps a column to a function of the row that renders its cell.

    >>> print(markdown_table([{"model": "clm", "acc": 0.5}], ["model", "acc"]))
    | model | acc |
    |---|---|
    | clm | 0.5 |
    """
    formats = formats or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [formats[c](row) if c in formats else _cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def mean_with_interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    """'0.812 ± 0.021' (the half-width of the interval), or the mean alone without an interval."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if low is None or math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def _figure(panels: int, width: float = 4.2, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def plot_curves(
    rows: Sequence[dict],
    x: str,
    metrics: Sequence[str],
    group: str,
    path: str,
    title: str = "",
    log_scale: Sequence[str] = ("perplexity",),
) -> str | None:
    """One panel per metric: the metric against `x` (e.g. tokens seen), one line per value of `group`. Metrics that
    no row has are left out; those in `log_scale` get a logarithmic axis (an untrained model's perplexity is the size
    of the vocabulary, which would flatten every trained curve). Returns the PNG path, or None when nothing can be
    drawn."""
    metrics = [m for m in metrics if any(_finite(r.get(m)) and _finite(r.get(x)) for r in rows)]
    if not metrics:
        return None
    figure, axes = _figure(len(metrics))
    colors = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(r[group] for r in rows))}  # one per group
    for axis, metric in zip(axes, metrics):
        for name, color in colors.items():
            points = sorted(
                (r[x], r[metric]) for r in rows if r[group] == name and _finite(r.get(metric)) and _finite(r.get(x))
            )
            if points:
                axis.plot(*zip(*points), marker="o", color=color, label=str(name))
        axis.set_xlabel(x.replace("_", " "))
        axis.set_title(metric.replace("_", " "))
        if metric in log_scale:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="x-small")
    if title:
        figure.suptitle(title)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def plot_bars(rows: Sequence[dict], group: str, panel: str, path: str, title: str = "") -> str:
    """One panel per value of `panel` (e.g. a task): a bar per `group` (e.g. a model) with its mean and the
    confidence interval (`mean`, `ci_low`, `ci_high` keys) as an error bar. Scores are in [0, 1]: intervals are
    drawn clipped to it (a t interval over few seeds can reach past the possible range)."""
    panels = list(dict.fromkeys(r[panel] for r in rows))
    figure, axes = _figure(len(panels), width=4.8)
    for axis, name in zip(axes, panels):
        selected = [r for r in rows if r[panel] == name]
        means = [r["mean"] for r in selected]
        lows = [min(max(r["ci_low"], 0.0), r["mean"]) if _finite(r["ci_low"]) else r["mean"] for r in selected]
        highs = [max(min(r["ci_high"], 1.0), r["mean"]) if _finite(r["ci_high"]) else r["mean"] for r in selected]
        errors = [[m - lo for m, lo in zip(means, lows)], [hi - m for m, hi in zip(means, highs)]]
        axis.bar(range(len(selected)), means, yerr=errors, capsize=3, color=[f"C{i}" for i in range(len(selected))])
        axis.set_xticks(
            range(len(selected)), [str(r[group]) for r in selected], rotation=40, ha="right", fontsize="small"
        )
        axis.set_title(f"{name} ({selected[0].get('metric', '')})")
        margin = max(max(highs) - min(lows), 0.05) * 0.2
        axis.set_ylim(max(0.0, min(lows) - margin), min(1.0, max(highs) + margin))
        axis.grid(axis="y", alpha=0.3)
    if title:
        figure.suptitle(title)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
