"""The model card (README.md) and loss curve of a published run, generated from what the run wrote.

Everything comes from the output directory, so a run can be published long after it ended: `trainer_state.json`
(steps, tokens seen, log history, and the objective plan and WSD schedule stored by their callbacks),
`all_results.json` (final metrics), `resolved_config.yaml` (hyper-parameters and data; `*_token` fields are
already redacted there, and nothing else is read from the arguments), `config.json` (how to load it) and
`revisions.txt` (the checkpoint branches).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field

import yaml
from huggingface_hub import ModelCardData

from hf_pretrain.checkpoint_state import phases_from_checkpoint, schedule_from_checkpoint
from hf_pretrain.cli import RESOLVED_SECTION
from hf_pretrain.objectives import OBJECTIVES, PHASES, ObjectivePlan
from hf_pretrain.run_layout import RESOLVED_CONFIG_FILE
from hf_pretrain.schedules import WSDSchedule

logger = logging.getLogger(__name__)

HYPERPARAMETERS = (
    "model_preset", "config_overrides", "tokenizer_vocab_size", "block_size", "per_device_train_batch_size",
    "gradient_accumulation_steps", "global_batch_tokens", "global_batch_size", "max_steps", "learning_rate",
    "lr_scheduler_type", "warmup_steps", "decay_steps", "decay_type", "min_lr_ratio", "optim", "weight_decay",
    "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "objective", "lora_rank", "bf16", "seed",
)  # fmt: skip
METRICS = ("train_loss", "eval_loss", "eval_perplexity", "eval_mlm_accuracy", "train_runtime")


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def count_parameters(folder: str) -> int | None:
    """Parameters in the safetensors weights of `folder`, read from the file headers (no tensor is loaded)."""
    from safetensors import safe_open

    index = read_json(os.path.join(folder, "model.safetensors.index.json"))
    names = sorted(set(index.get("weight_map", {}).values())) or ["model.safetensors"]
    paths = [os.path.join(folder, name) for name in names if os.path.isfile(os.path.join(folder, name))]
    if not paths:
        return None
    total = 0
    for path in paths:
        with safe_open(path, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())  # noqa: SIM118
    return total


@dataclass
class RunSummary:
    """What a card says about a run, read by `from_run_dir`."""

    config: dict = field(default_factory=dict)
    resolved: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    plan: ObjectivePlan | None = None
    schedule: WSDSchedule | None = None
    parameters: int | None = None
    adapter: dict | None = None

    @classmethod
    def from_run_dir(cls, run_dir: str, plan=None, schedule=None) -> RunSummary:
        """Read `run_dir`; `plan` and `schedule` (the trainer's, at the end of a run) win over the stored ones."""
        resolved = {}
        if os.path.isfile(os.path.join(run_dir, RESOLVED_CONFIG_FILE)):
            with open(os.path.join(run_dir, RESOLVED_CONFIG_FILE), encoding="utf-8") as handle:
                resolved = yaml.safe_load(handle) or {}
        if plan is None and (phases := phases_from_checkpoint(run_dir)):
            plan = ObjectivePlan.from_dict({"phases": phases})
        return cls(
            config=read_json(os.path.join(run_dir, "config.json")),
            resolved=resolved,
            state=read_json(os.path.join(run_dir, "trainer_state.json")),
            metrics=read_json(os.path.join(run_dir, "all_results.json")),
            plan=plan,
            schedule=schedule if schedule is not None else schedule_from_checkpoint(run_dir),
            parameters=count_parameters(run_dir),
            adapter=read_json(os.path.join(run_dir, "adapter_config.json")) or None,
        )

    @property
    def steps(self) -> int:
        return int(self.state.get("global_step") or 0)

    @property
    def tokens(self) -> int:
        return int(self.state.get("num_input_tokens_seen") or 0)


def how_to_load(config: dict, adapter: dict | None = None) -> tuple[str, bool]:
    """(Auto class, trust_remote_code) for a saved model: remote code only when `config.json` has an `auto_map`.

    >>> how_to_load({"architectures": ["LlamaForCausalLM"]})
    ('AutoModelForCausalLM', False)
    >>> how_to_load({"architectures": ["LlamaForMaskedLM"], "auto_map": {"AutoModelForMaskedLM": "m.LlamaForMaskedLM"}})
    ('AutoModelForMaskedLM', True)

    A masked decoder saved before its CLM→MLM switch (`is_causal: true`) is still a causal LM, with no remote code:

    >>> how_to_load({"architectures": ["LlamaForMaskedLM"], "auto_map": {"AutoModelForMaskedLM": "m"}, "is_causal": True})
    ('AutoModelForCausalLM', False)
    """
    if adapter:
        return "AutoPeftModelForCausalLM", False
    if config.get("is_causal") is True:
        return "AutoModelForCausalLM", False
    if config.get("auto_map"):
        return next(iter(config["auto_map"])), True
    architecture = (config.get("architectures") or [""])[0]
    for suffix, auto_class in (
        ("ForCausalLM", "AutoModelForCausalLM"),
        ("ForMaskedLM", "AutoModelForMaskedLM"),
        ("ForConditionalGeneration", "AutoModelForSeq2SeqLM"),
    ):
        if architecture.endswith(suffix):
            return auto_class, False
    return "AutoModel", False


def _paragraph(text: str) -> str:
    return f"\n\n{text}" if text else ""


def _steps(first: int, last: int | None) -> str:
    if last is None:
        return f"{first:,} onwards"
    return f"{first:,}–{last:,}" if last != first else f"{first:,}"


def objective_ranges(plan: ObjectivePlan, total_steps: int) -> list[tuple[str, int, int | None]]:
    """(objective, first step, last step) per phase, e.g. [("clm_unshifted", 0, 2499), ("mlm", 2500, 9999)]."""
    ranges = []
    for index, (start, name) in enumerate(plan.phases):
        end = plan.phases[index + 1][0] - 1 if index + 1 < len(plan.phases) else (total_steps - 1 or None)
        if total_steps and start >= total_steps:
            break
        ranges.append((name, start, end))
    return ranges


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _objectives_section(summary: RunSummary) -> str:
    if summary.plan is None:
        return f"## Objective\n\n{summary.resolved.get('objective', 'unknown')}"
    ranges = objective_ranges(summary.plan, summary.steps)
    sentence = ", then ".join(f"{PHASES[name].label} for steps {_steps(a, b)}" for name, a, b in ranges)
    rows = [(PHASES[name].label, _steps(a, b), PHASES[name].description) for name, a, b in ranges]
    return f"## Objectives\n\n{sentence}.\n\n" + _table(("objective", "steps", "what it trains"), rows)


def _schedule_section(summary: RunSummary) -> str:
    peak, schedule = summary.resolved.get("learning_rate"), summary.schedule
    if schedule is None:
        kind = summary.resolved.get("lr_scheduler_type", "unknown")
        return f"## Learning-rate schedule\n\n`{kind}`, peak learning rate {peak}."
    low = f"{schedule.min_lr_ratio:g} × peak"
    rows, start = [], 0
    for phase, length, rate in (
        ("warmup", schedule.warmup_steps, f"{schedule.warmup_type} from {low} to {peak}"),
        ("stable", schedule.stable_steps, f"{peak}"),
        ("decay", schedule.decay_steps, f"{schedule.decay_type} from {peak} to {low}"),
    ):
        if length:
            rows.append((phase, _steps(start, start + length - 1), rate))
        start += length
    title = "Warmup-Stable-Decay" if schedule.stable_steps else "Cooldown (warmup and decay only)"
    return f"## Learning-rate schedule\n\n{title}:\n\n" + _table(("phase", "steps", "learning rate"), rows)


def _sources_rows(resolved: dict) -> list[tuple[str, str]]:
    """(source, mixing weight) rows for every data path: prepared, mixed sources, a Hub dataset, files, built in."""
    if resolved.get("prepared_dataset_path"):
        stats = read_json(os.path.join(resolved["prepared_dataset_path"], "stats.json"))
        mixture = stats.get("mixture", {})
        names, weights = mixture.get("names") or [], mixture.get("weights") or []
        prepared = f"prepared dataset `{os.path.basename(os.path.normpath(resolved['prepared_dataset_path']))}`"
        return [(f"{name} ({prepared})", f"{weight:.0%}") for name, weight in zip(names, weights)] or [
            (prepared, "100%")
        ]
    sources = resolved.get("data_sources") or []
    if isinstance(sources, str):  # a JSON string from the command line
        sources = json.loads(sources)
    if sources:  # read as written, not re-validated: a card may be made where the files are not
        total = sum(float(s.get("weight", 1.0)) for s in sources)
        return [(f"`{s.get('name')}`", f"{float(s.get('weight', 1.0)) / total:.0%}") for s in sources]
    if resolved.get("dataset_name"):
        name, subset = resolved["dataset_name"], resolved.get("dataset_config_name")
        how = f"subset `{subset}`, " if subset else ""
        how += "streamed" if resolved.get("streaming") else "downloaded"
        return [(f"[{name}](https://huggingface.co/datasets/{name}) ({how})", "100%")]
    if resolved.get("data_files"):
        files = resolved["data_files"]
        weight = "100%" if len(files) == 1 else "by size"
        return [(f"`{os.path.basename(path)}`", weight) for path in files]
    return [("CPython's English reference documentation (`pydoc_data.topics`), built in", "100%")]


def _data_section(resolved: dict) -> str:
    rows = _sources_rows(resolved)
    derived = resolved.get(RESOLVED_SECTION) or {}
    held_out = derived.get("held_out") or (
        ", ".join(f"`{os.path.basename(path)}`" for path in resolved.get("validation_files") or [])
        or f"{resolved.get('validation_fraction', 0):.0%} of the documents"
    )
    several = (
        "Files are concatenated: each weighs in proportion to its size (no re-weighting). "
        if len(rows) > 1 and not (resolved.get("data_sources") or resolved.get("prepared_dataset_path"))
        else "Sources are mixed at the token level by weight. "
        if len(rows) > 1
        else ""
    )
    return (
        "## Data\n\n"
        + _table(("source", "mixing weight"), rows)
        + f"\n\n{several}Documents are packed into blocks of {resolved.get('block_size')} tokens with an EOS between them. "
        + f"Held out for evaluation: {held_out}."
    )


def _hyperparameters_section(summary: RunSummary) -> str:
    resolved = summary.resolved
    objective = OBJECTIVES.get(resolved.get("objective"))
    keys = HYPERPARAMETERS + (objective.hyperparameters if objective is not None else ())
    rows = [(f"`{key}`", f"`{resolved[key]}`") for key in keys if resolved.get(key) not in (None, {}, [])]
    for key in ("model_name_or_path", "cooldown_from"):  # local folders by name only: no paths of this machine
        if resolved.get(key):
            value = resolved[key]
            rows.append((f"`{key}`", f"`{os.path.basename(value) if os.path.isdir(value) else value}`"))
    if summary.parameters:
        rows.insert(0, ("parameters", f"{summary.parameters:,}"))
    if summary.steps and summary.tokens:
        rows.insert(1, ("tokens per optimizer step", f"{summary.tokens // summary.steps:,}"))
    return "## Training hyper-parameters\n\n" + _table(("hyper-parameter", "value"), rows)


def _results_section(summary: RunSummary, loss_curve: str | None) -> str:
    rows = [("steps", f"{summary.steps:,}"), ("tokens seen", f"{summary.tokens:,}")]
    rows += [(f"`{key}`", _number(summary.metrics[key])) for key in METRICS if key in summary.metrics]
    image = f"\n\n![Training and evaluation loss]({loss_curve})" if loss_curve else ""
    return "## Results\n\n" + _table(("metric", "value"), rows) + image


def _usage(repo_id: str, config: dict, adapter: dict | None, revision: str | None = None) -> str:
    auto_class, remote_code = how_to_load(config, adapter)
    module = "peft" if adapter else "transformers"
    options = "".join(
        (f', revision="{revision}"' if revision else "", ", trust_remote_code=True" if remote_code else "")
    )
    imports = (
        f"AutoTokenizer, {auto_class}"
        if module == "transformers"
        else f"{auto_class}\nfrom transformers import AutoTokenizer"
    )
    code = (
        f"from {module} import {imports}\n\n"
        f'model = {auto_class}.from_pretrained("{repo_id}"{options})\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{options.replace(", trust_remote_code=True", "")})'
    )
    note = (
        "\n\n`trust_remote_code=True` runs the `modeling_*.py` saved with the weights; with `pip install hf_pretrain`, "
        "`import hf_pretrain` registers the same class and the flag can be left out."
        if remote_code
        else ""
    )
    return f"```python\n{code}\n```{note}"


def format_note(config: dict) -> str:
    """Which format the weights are saved in, in one sentence (masked decoders: native EuroBERT, or remote code).

    >>> format_note({"model_type": "eurobert", "architectures": ["EuroBertForMaskedLM"]})[:44]
    'Saved in the native EuroBERT format (`model_'
    """
    architecture = (config.get("architectures") or [""])[0]
    if config.get("model_type") == "eurobert":
        return (
            "Saved in the native EuroBERT format (`model_type: eurobert`, `EuroBertForMaskedLM`): it loads with "
            "transformers alone, without remote code, as `AutoModelForMaskedLM`, `AutoModelForSequenceClassification` "
            'or `AutoModelForTokenClassification`, and in `pipeline("fill-mask")`.'
        )
    if config.get("auto_map") and architecture.endswith("ForMaskedLM"):
        return (
            f"Saved as `{architecture}` with its modeling file (remote code): transformers has no native masked-LM "
            f"class this {config.get('model_type')} backbone can be written as."
        )
    return ""


def _revisions_section(repo_id: str, summary: RunSummary, revisions: list) -> str:
    if not revisions:
        return ""
    rows = [(f"`{r.branch}`", f"{r.step:,}", f"{r.tokens:,}", f"`{(r.commit or '')[:8]}`") for r in revisions]
    return (
        "## Intermediate checkpoints\n\nEvery saved checkpoint is a branch of this repository (also listed in "
        "`revisions.txt`); each branch's README says how to load it:\n\n"
        + _table(("branch", "step", "tokens", "commit"), rows)
        + "\n\n"
        + _usage(repo_id, summary.config, summary.adapter, revision=revisions[0].branch)
    )


def card_metadata(summary: RunSummary, license: str) -> ModelCardData:
    auto_class, _ = how_to_load(summary.config, summary.adapter)
    pipeline = {"AutoModelForCausalLM": "text-generation", "AutoModelForMaskedLM": "fill-mask"}.get(auto_class)
    objectives = summary.plan.names if summary.plan else [summary.resolved.get("objective") or "pretraining"]
    tags = [
        "hf_pretrain",
        "pretraining",
        *dict.fromkeys(PHASES[n].label.lower() if n in PHASES else n for n in objectives),
    ]
    dataset = summary.resolved.get("dataset_name")
    return ModelCardData(
        license=license,
        library_name="peft" if summary.adapter else "transformers",
        pipeline_tag=pipeline if pipeline and not summary.adapter else None,
        tags=[tag.replace(" ", "-") for tag in tags],
        datasets=[dataset] if dataset and not os.path.isdir(dataset) else None,  # Hub datasets, not local folders
    )


def render_model_card(summary: RunSummary, repo_id: str, license: str, revisions=(), loss_curve=None) -> str:
    """The README.md of the final model: metadata, then objectives, schedule, data, hyper-parameters, results,
    checkpoints and how to load it. `revisions` are `hub_run.RevisionRecord`s; `loss_curve` an image path."""
    architecture = (summary.config.get("architectures") or [summary.config.get("model_type", "model")])[0]
    size = f" with {summary.parameters / 1e6:.1f}M parameters" if summary.parameters else ""
    intro = (
        f"`{architecture}`{size}, pretrained with `hf_pretrain` for {summary.steps:,} steps "
        f"on {summary.tokens:,} tokens."
    )
    sections = [
        f"# {repo_id.split('/')[-1]}\n\n{intro}",
        "## How to use\n\n"
        + _usage(repo_id, summary.config, summary.adapter)
        + _paragraph(format_note(summary.config)),
        _objectives_section(summary),
        _schedule_section(summary),
        _data_section(summary.resolved),
        _hyperparameters_section(summary),
        _results_section(summary, loss_curve),
        _revisions_section(repo_id, summary, list(revisions)),
        "The exact configuration of the run is in `resolved_config.yaml`.",
    ]
    body = "\n\n".join(section for section in sections if section)
    return f"---\n{card_metadata(summary, license).to_yaml()}\n---\n\n{body}\n"


def render_checkpoint_card(
    repo_id: str, branch: str, step: int, tokens: int, config: dict, *, phases=None, adapter=None, license="other"
) -> str:
    """The README.md of a checkpoint branch: what it is, how to load it, and where the full card is.
    `phases` are the objective plan's ([[first step, name], ...]) stored in the checkpoint."""
    objective = ""
    if phases:
        name = ObjectivePlan.from_dict({"phases": phases}).at(max(step - 1, 0)).name
        objective = f" Its last step trained {PHASES[name].label} ({PHASES[name].description})."
    metadata = ModelCardData(license=license, library_name="peft" if adapter else "transformers")
    return (
        f"---\n{metadata.to_yaml()}\n---\n\n# {repo_id.split('/')[-1]} at step {step:,}\n\n"
        f"The checkpoint saved after {step:,} optimizer steps and {tokens:,} tokens.{objective} The final model, "
        "the training details and every checkpoint branch are on the `main` branch.\n\n"
        + _usage(repo_id, config, adapter, revision=branch)
        + "\n"
    )


def loss_curve_png(log_history: list[dict], switch_steps=()) -> bytes | None:
    """A PNG of training (and evaluation) loss against the step, with the objective switches marked; None without
    losses or without matplotlib (then the card simply has no image)."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    if not train and not evaluation:
        return None
    try:  # the object-oriented API, not pyplot: this runs in the publisher's thread, and pyplot is not thread-safe
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: the model card has no loss curve (pip install matplotlib).")
        return None
    figure = Figure(figsize=(7, 3.5), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", linewidth=1.2)
    if evaluation:
        axes.plot(*zip(*evaluation, strict=True), "o-", label="evaluation loss", markersize=3)
    for step in switch_steps:
        axes.axvline(step, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
