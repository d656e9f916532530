"""The ablation's report: one row per model (intrinsic metrics, task scores with intervals, stability), the study's
claims as differences between models, and the plots.

Files under the ablation's output_dir: `results.md` (the table and the claims), `results.csv` (the same rows, with
the interval bounds), `intrinsic.csv/.json` (every checkpoint on held-out text), `finetune_runs.csv/.json` (every
fine-tuning run), `finetune_summary.csv/.json` (one row per model x task), `ablation.png` (task scores with their
intervals) and `intrinsic.png` (held-out metrics against tokens seen).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from hf_pretrain.evaluation.ablation_config import AblationArguments, GridEntry
from hf_pretrain.evaluation.intrinsic import METRICS
from hf_pretrain.evaluation.reporting import markdown_table, mean_with_interval, plot_bars, plot_curves, write_rows

logger = logging.getLogger(__name__)
TASK_COLUMNS = {"sc": "SC acc", "tc": "TC F1", "qa": "QA F1", "ir": "IR NDCG@10"}


def _nanmean(values: list[float]) -> float:
    """The mean of the defined values; NaN (without numpy's empty-slice warning) when none is, e.g. one seed."""
    defined = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def _comparisons(summary: list[dict], entries: list[GridEntry], args: AblationArguments) -> list[dict]:
    """The study's claims as differences of task means (A - B) with whether the two 95% intervals overlap."""
    labels = {e.kind + (f":{e.value:g}" if e.value is not None else ""): e.label for e in entries}
    p = f"{args.mlm_probability:g}"
    early = f"@{args.early_fraction:.0%}" if args.early_fraction else None
    pairs = [
        ("MLM beats CLM", labels.get(f"mlm:{p}"), labels.get("clm")),
        ("CLM→MLM 25/75 beats MLM", labels.get("clm_then_mlm:0.25"), labels.get(f"mlm:{p}")),
        ("CLM→MLM 50/50 beats MLM", labels.get("clm_then_mlm:0.5"), labels.get(f"mlm:{p}")),
        ("CPT from CLM beats CPT from MLM", labels.get("cpt_from_clm:0.5"), labels.get("cpt_from_mlm:0.5")),
    ]
    if early:
        pairs.append((f"CLM beats MLM early ({early[1:]})", f"clm{early}", f"{labels.get(f'mlm:{p}')}{early}"))
    cells = {(r["checkpoint"], r["task"]): r for r in summary}
    rows = []
    for claim, a, b in pairs:
        if not all((a, t) in cells and (b, t) in cells for t in args.tasks):
            continue
        row = {"claim": claim, "A": a, "B": b}
        for task in args.tasks:
            x, y = cells[(a, task)], cells[(b, task)]
            overlap = not (x["ci_low"] > y["ci_high"] or y["ci_low"] > x["ci_high"])
            row[task] = f"{x['mean'] - y['mean']:+.3f}" + (" (CIs overlap)" if overlap else " *")
        rows.append(row)
    return rows


def write_results(
    args: AblationArguments,
    entries: list[GridEntry],
    checkpoints: dict[str, str],
    intrinsic: list[dict],
    runs: list[dict],
    summary: list[dict],
) -> dict:
    """Write the files listed in the module doc; returns {"results": results.md, "tables", "plots", "rows"}.

    `checkpoints` maps each fine-tuned model's label (a grid label, or `label@25%` for an early checkpoint) to its
    folder; `intrinsic` has a row for each of those folders."""
    out = args.output_dir
    paths = [
        *write_rows(intrinsic, os.path.join(out, "intrinsic")),
        *write_rows(runs, os.path.join(out, "finetune_runs")),
        *write_rows(summary, os.path.join(out, "finetune_summary")),
    ]
    by_label = {e.label: e for e in entries}
    final = {r["checkpoint"]: r for r in intrinsic}  # keyed by folder
    rows = []
    for label, path in checkpoints.items():
        base, _, early = label.partition("@")
        scores = final[path]
        row = {"model": label, "pretraining": by_label[base].describe() + (f" (at {early})" if early else ""),
               "tokens_seen": scores.get("tokens_seen"), "perplexity": scores.get("perplexity"),
               "bits_per_byte": scores.get("bits_per_byte"), "mlm_accuracy": scores.get("mlm_accuracy")}  # fmt: skip
        cells = [r for r in summary if r["checkpoint"] == label]
        for cell in cells:
            row.update({f"{cell['task']}_{k}": cell[k] for k in ("mean", "ci_low", "ci_high", "best_learning_rate")})
        row["task_mean"] = float(np.mean([c["mean"] for c in cells]))
        row["seed_std"] = _nanmean([c["test_std"] for c in cells])
        row["lr_sensitivity"] = _nanmean([c["lr_sensitivity"] for c in cells])
        rows.append(row)
    paths += write_rows(rows, os.path.join(out, "results"))[:1]
    formats = {
        "tokens": lambda r: "–" if r["tokens_seen"] is None else f"{r['tokens_seen'] / 1e6:.3g}M",
        "CLM ppl": lambda r: f"{r['perplexity']:.1f}" if r["perplexity"] is not None else "–",
        "bits/byte": lambda r: f"{r['bits_per_byte']:.3f}" if r["bits_per_byte"] is not None else "–",
        f"MLM acc@{args.mlm_probability:g}": lambda r: (
            f"{r['mlm_accuracy']:.3f}" if r["mlm_accuracy"] is not None else "–"
        ),
        **{
            TASK_COLUMNS[t]: (lambda r, t=t: mean_with_interval(r[f"{t}_mean"], r[f"{t}_ci_low"], r[f"{t}_ci_high"]))
            for t in args.tasks
        },
        "task mean": lambda r: f"{r['task_mean']:.3f}",
        "seed std": lambda r: f"{r['seed_std']:.3f}",
        "LR sensitivity": lambda r: f"{r['lr_sensitivity']:.3f}",
    }
    table = markdown_table(rows, ["model", "pretraining", *formats], formats)
    comparisons = _comparisons(summary, entries, args)
    settings = (
        f"{args.model_preset}, {args.max_steps} steps x {args.batch_size} x {args.block_size} tokens per model, "
        f"peak LR {args.learning_rate:g}; fine-tuning: LRs {args.learning_rates}, seeds {args.seeds}, "
        f"tasks {args.task_sizes} (train/val/test) from the held-out {args.heldout_fraction:.0%} of the text"
    )
    text = [f"# Objective ablation\n\n{settings}.\n", "Test score at the best validation LR: mean ± 95% CI half-width over "
            "seeds. Seed std: mean over tasks of the test std at that LR; LR sensitivity: best minus grid-average "
            "validation score.\n", table]  # fmt: skip
    if comparisons:
        text += ["\n## The study's claims at this scale\n", "A − B per task; * = the 95% intervals do not overlap.\n"]
        text.append(markdown_table(comparisons, ["claim", "A", "B", *args.tasks]))
    results_md = os.path.join(out, "results.md")
    with open(results_md, "w") as handle:
        handle.write("\n".join(text) + "\n")
    plots = [plot_bars(summary, "checkpoint", "task", os.path.join(out, "ablation.png"), "fine-tuning, 95% CI")]
    curve = plot_curves(intrinsic, "tokens_seen", METRICS, "run", os.path.join(out, "intrinsic.png"), "held-out text")
    plots += [curve] if curve else []
    logger.info("Ablation results:\n%s", "\n".join(text))
    return {"results": results_md, "tables": paths, "plots": plots, "rows": rows}
