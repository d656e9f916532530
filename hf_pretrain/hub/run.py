"""What a run publishes on the Hub, and where: each checkpoint on its own branch, the final model on main.

    output_dir/checkpoint-N/ → branch `hub_revision_template` (default `step{N}-tokens{T}`): weights, config,
                               generation config, tokenizer, `modeling_*.py` (remote code) and a short README
    output_dir/              → `main` (or `hub_revision`): the same files of the final model, the model card
                               (README.md), loss_curve.png, revisions.txt and resolved_config.yaml

Optimizer, scheduler and RNG states, `training_args.bin` and `trainer_state.json` stay local: a branch holds a
model that loads with `from_pretrained(repo, revision=branch)`, not a training checkpoint.

Only a complete checkpoint is published (`publishing_problem`: weights whose safetensors headers read and whose
sizes match them, a config.json and a trainer_state.json that parse); a half-written one is skipped, by name.

When a checkpoint is saved, its files are hard-linked into `output_dir/.hub_staging/` (free, and copied only where
links are not possible), so that checkpoint rotation (`save_total_limit`) can delete the folder while its push
waits for the Hub; the staged files go once the push succeeds (the folder too, once empty), and stay, named in the
report, if it fails. Each branch pushed (or found already there) is recorded in `output_dir/revisions.txt`: repo,
branch, step, tokens, commit; main gets the rows of its repo.

At the end, `output_dir/hub_status.json` says what was pushed, skipped, failed or still pending, and a run whose
publishing is incomplete raises `HubPublishingIncomplete` once everything is saved: `recipes/pretrain.py` and
`recipes/push_checkpoints.py` then exit with status 3 (`HUB_INCOMPLETE_EXIT_CODE`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import shutil
import threading
import zipfile
from dataclasses import dataclass

from hf_pretrain.checkpoint_state import phases_from_checkpoint
from hf_pretrain.hub.model_card import (
    RunSummary,
    loss_curve_png,
    read_json,
    render_checkpoint_card,
    render_model_card,
)
from hf_pretrain.hub.publisher import WEIGHT_FILES, HubPublisher, PushJob, PushResult, human_count, revision_name
from hf_pretrain.run_layout import LOSS_CURVE_FILE, RESOLVED_CONFIG_FILE, REVISIONS_FILE, STAGING_DIR
from hf_pretrain.training.checkpoints import checkpoint_problem, safetensors_problem

logger = logging.getLogger(__name__)

LOADABLE_PATTERNS = (
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
    "adapter_config.json", "adapter_model.bin", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "*.model", "chat_template.jinja",
    "modeling_*.py", "configuration_*.py", "tokenization_*.py",
)  # fmt: skip
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_records_lock = threading.Lock()
HUB_STATUS_FILE = "hub_status.json"  # what the end of a run (or push_checkpoints.py) published, and what not
HUB_INCOMPLETE_EXIT_CODE = 3  # the exit status of a run that trained and saved everything but did not publish it all


class HubPublishingIncomplete(RuntimeError):
    """Raised at the very end of a run (everything trained and saved) whose pushes did not all reach the Hub."""

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics or {}


# ---- which checkpoints can be published --------------------------------------------------------------------------


def _whole(path: str) -> str | None:
    try:
        return safetensors_problem(path)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as error:  # a header of the wrong shape
        return f"{os.path.basename(path)} has an unreadable header ({type(error).__name__})"


def _weights_problem(folder: str) -> str | None:
    present = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not present:
        return f"no model weights ({', '.join(WEIGHT_FILES)})"
    for name in present:
        path = os.path.join(folder, name)
        if name.endswith(".safetensors"):
            problem = _whole(path)
        elif name.endswith(".index.json"):
            try:
                shards = sorted(set(read_json(path)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return f"{name} does not parse"
            missing = [shard for shard in shards if not os.path.isfile(os.path.join(folder, shard))]
            if missing:
                return f"{missing[0]} (a shard of {name}) is missing"
            problem = next((p for s in shards if (p := _whole(os.path.join(folder, s)))), None)
        else:  # pytorch_model.bin: a zip archive, whose directory is at its end
            problem = None if zipfile.is_zipfile(path) else f"{name} is not a complete torch archive"
        if problem:
            return problem
    return None


def publishing_problem(folder: str, needs_state: bool = True) -> str | None:
    """Why `folder` cannot be published as a model that loads (None when it can): weights the Hub branch can load
    (each safetensors file, shards included, of the size its header gives; a ZeRO checkpoint's `global_step*`
    shards alone are not), config.json (adapter_config.json for a LoRA run's adapter alone) and, with
    `needs_state` (a checkpoint), what makes it a complete checkpoint for resuming too (`checkpoint_problem` of
    hf_pretrain.training.checkpoints: its completion marker's files, trainer_state.json with a global_step, which
    names the branch). Only headers and sizes are read."""
    problem = _weights_problem(folder)
    if problem:
        return problem
    # A LoRA run's checkpoint: the Trainer saves the adapter alone, described by its adapter_config.json.
    adapter = not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(
        os.path.join(folder, "adapter_model.safetensors")
    )
    config = "adapter_config.json" if adapter else "config.json"
    try:
        content = read_json(os.path.join(folder, config))
    except (OSError, ValueError):
        return f"{config} does not parse"
    if not isinstance(content, dict) or not content:
        return f"{config} is missing" if not content else f"{config} is incomplete"
    return checkpoint_problem(folder) if needs_state else None


def publishable_checkpoints(run_dir: str) -> tuple[list[str], dict[str, str]]:
    """The complete checkpoints of `run_dir` by step (`list_checkpoints`), and {folder: problem} of the others."""
    complete, incomplete = [], {}
    for folder in list_checkpoints(run_dir):
        problem = publishing_problem(folder)
        if problem:
            incomplete[folder] = problem
        else:
            complete.append(folder)
    return complete, incomplete


def loadable_files(folder: str) -> list[str]:
    """The files of `folder` (top level only) that `from_pretrained` needs, sorted."""
    names = [name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name))]
    return sorted(name for name in names if any(fnmatch.fnmatch(name, p) for p in LOADABLE_PATTERNS))


def checkpoint_progress(checkpoint_dir: str) -> tuple[int, int]:
    """(global step, tokens seen) of a checkpoint, from its trainer_state.json (the folder name gives the step)."""
    state = read_json(os.path.join(checkpoint_dir, "trainer_state.json"))
    match = _CHECKPOINT.fullmatch(os.path.basename(os.path.normpath(checkpoint_dir)))
    step = state.get("global_step", int(match.group(1)) if match else 0)
    return int(step), int(state.get("num_input_tokens_seen") or 0)


def list_checkpoints(run_dir: str) -> list[str]:
    """`checkpoint-N` folders of a run by step, with staged copies of those rotated away while their push failed."""
    found = {}
    for root in (os.path.join(run_dir, STAGING_DIR), run_dir):  # the real folder wins over its staged copy
        if os.path.isdir(root):
            for name in os.listdir(root):
                if _CHECKPOINT.fullmatch(name) and os.path.isdir(os.path.join(root, name)):
                    found[name] = os.path.join(root, name)
    return [found[name] for name in sorted(found, key=lambda name: int(name.split("-")[1]))]


def stage_checkpoint(checkpoint_dir: str, staging_root: str) -> str:
    """Hard-link the loadable files and trainer_state.json of `checkpoint_dir` into `staging_root/<name>`."""
    staged = os.path.join(staging_root, os.path.basename(os.path.normpath(checkpoint_dir)))
    if os.path.realpath(staged) == os.path.realpath(checkpoint_dir):
        return staged  # a staged copy whose checkpoint was rotated away (a push left over from an earlier run)
    shutil.rmtree(staged, ignore_errors=True)
    os.makedirs(staged)
    for name in [*loadable_files(checkpoint_dir), "trainer_state.json"]:
        source = os.path.join(checkpoint_dir, name)
        if os.path.isfile(source):
            try:
                os.link(source, os.path.join(staged, name))
            except OSError:  # another filesystem, or one without hard links
                shutil.copy2(source, os.path.join(staged, name))
    return staged


def unstage(run_dir: str, name: str) -> None:
    """Remove the staged copy `name` (pushed: it is on the Hub), and the staging folder once it is empty."""
    root = os.path.join(run_dir, STAGING_DIR)
    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty (other pushes pending, or failed and kept) or already gone
        os.rmdir(root)


@dataclass(frozen=True)
class RevisionRecord:
    repo: str
    branch: str
    step: int
    tokens: int
    commit: str


def read_revisions(run_dir: str, repo_id: str | None = None) -> list[RevisionRecord]:
    """The branches recorded in `run_dir/revisions.txt` (of `repo_id` only, if given), by step."""
    path = os.path.join(run_dir, REVISIONS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip() and not line.startswith("#")]
    records = [RevisionRecord(repo, b, int(s), int(t), c) for repo, b, s, t, c in rows]
    return sorted((r for r in records if repo_id in (None, r.repo)), key=lambda r: (r.step, r.branch))


def revisions_text(records: list[RevisionRecord]) -> str:
    """The contents of revisions.txt: a header, then repo, branch, step, tokens and commit, tab-separated."""
    lines = ["# repo\tbranch\tstep\ttokens\tcommit"]
    lines += [f"{r.repo}\t{r.branch}\t{r.step}\t{r.tokens}\t{r.commit}" for r in records]
    return "\n".join(lines) + "\n"


def record_revision(run_dir: str, record: RevisionRecord) -> None:
    """Add or update `record` in `run_dir/revisions.txt` (written whole, then renamed: never half a file).

    A run may be published to several repositories (e.g. again with the recipe), hence the repo column.
    """
    with _records_lock:
        records = {(r.repo, r.branch): r for r in read_revisions(run_dir)}
        records[(record.repo, record.branch)] = record
        path = os.path.join(run_dir, REVISIONS_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(revisions_text(sorted(records.values(), key=lambda r: (r.repo, r.step, r.branch))))
        os.replace(path + ".tmp", path)


def checkpoint_job(checkpoint_dir: str, run_dir: str, template: str, license: str = "other", stage=True) -> PushJob:
    """The push of one checkpoint to its branch. `stage`: hard-link its files first (see the module docstring).

    Once it is on the Hub (pushed, or found there), its staged copy in `run_dir` is removed, whether this push
    staged it or an earlier run did; a failed push keeps it."""
    step, tokens = checkpoint_progress(checkpoint_dir)
    name = os.path.basename(os.path.normpath(checkpoint_dir))
    branch = revision_name(template, step, tokens)
    phases = phases_from_checkpoint(checkpoint_dir)
    source = stage_checkpoint(checkpoint_dir, os.path.join(run_dir, STAGING_DIR)) if stage else checkpoint_dir

    def files(repo_id: str) -> dict[str, str | bytes]:
        paths = {name: os.path.join(source, name) for name in loadable_files(source)}
        config, adapter = read_json(paths.get("config.json", "")), read_json(paths.get("adapter_config.json", ""))
        card = render_checkpoint_card(repo_id, branch, step, tokens, config, phases=phases, adapter=adapter or None,
                                      license=license)  # fmt: skip
        return {**paths, "README.md": card.encode()}

    def on_done(result: PushResult) -> None:
        if result.status != "failed":
            record_revision(run_dir, RevisionRecord(result.repo_id, branch, step, tokens, result.commit or ""))
            unstage(run_dir, name)
        elif stage:
            logger.error("Hub: %s was not pushed; its files are kept in %s.", branch, source)

    message = f"Checkpoint at step {step:,} ({human_count(tokens)} tokens)"
    return PushJob(branch, files, message, replace=True, skip_if_published=True, on_done=on_done)


def final_job(run_dir: str, license: str = "other", revision: str = "main", plan=None, schedule=None) -> PushJob:
    """The push of the final model in `run_dir` with its model card, loss curve and the list of checkpoint branches.

    The card is written when the push runs, after the checkpoint pushes queued before it, so it lists them all.
    """

    def files(repo_id: str) -> dict[str, str | bytes]:
        summary = RunSummary.from_run_dir(run_dir, plan=plan, schedule=schedule)
        out: dict[str, str | bytes] = {name: os.path.join(run_dir, name) for name in loadable_files(run_dir)}
        switches = summary.plan.switch_steps if summary.plan is not None else ()
        png = loss_curve_png(summary.state.get("log_history", []), switches)
        if png is not None:
            out[LOSS_CURVE_FILE] = png
        revisions = read_revisions(run_dir, repo_id)
        if revisions:
            out[REVISIONS_FILE] = revisions_text(revisions).encode()
        if os.path.isfile(os.path.join(run_dir, RESOLVED_CONFIG_FILE)):
            out[RESOLVED_CONFIG_FILE] = os.path.join(run_dir, RESOLVED_CONFIG_FILE)
        card = render_model_card(summary, repo_id, license, revisions, LOSS_CURVE_FILE if png else None)
        out["README.md"] = card.encode()
        return out

    return PushJob(revision, files, "Final model and model card")


def hub_status(publisher: HubPublisher, incomplete: dict[str, str] | None = None) -> dict:
    """What `hub_status.json` holds: `complete` (true when every push went through and none is pending), the repo,
    the branches pushed / skipped (already there) / failed (with the error) / still pending, the checkpoints not
    published because they are incomplete (with why), and the exit status the recipes give."""
    pending = publisher.pending
    complete = not publisher.failures and not pending
    return {
        "complete": complete,
        "repo": publisher.repo_id,
        "pushed": [r.revision for r in publisher.results if r.status == "pushed"],
        "skipped": [r.revision for r in publisher.results if r.status == "skipped"],
        "failed": {r.revision: r.error for r in publisher.failures},
        "pending": pending,
        "incomplete_checkpoints": {os.path.basename(k): v for k, v in (incomplete or {}).items()},
        "exit_code": 0 if complete else HUB_INCOMPLETE_EXIT_CODE,
    }


def write_hub_status(run_dir: str, status: dict) -> str:
    """Write `status` to `run_dir/hub_status.json` (whole, then renamed); returns its path."""
    path = os.path.join(run_dir, HUB_STATUS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(status, handle, indent=2)
        handle.write("\n")
    os.replace(path + ".tmp", path)
    return path


def publish_final_model(publisher: HubPublisher, trainer) -> bool:
    """At the end of a run: push the final model after the pending checkpoint pushes, wait for all of them (at most
    `hub_wait_timeout` seconds in all: a push still retrying then is abandoned, and a request in flight is left to
    its daemon thread), write hub_status.json and log one line. True when everything is on the Hub; never raises."""
    args = trainer.args
    job = final_job(
        args.output_dir,
        args.model_card_license,
        args.hub_revision or "main",
        plan=getattr(trainer, "plan", None),
        schedule=getattr(trainer, "schedule", None),
    )
    publisher.submit(job)
    publisher.wait(args.hub_wait_timeout)
    report = publisher.summary()
    status = hub_status(publisher)
    publisher.close()
    try:
        path = write_hub_status(args.output_dir, status)
    except OSError as error:  # a full disk must not turn a finished run into a crash
        path = f"(not written: {error})"
    if status["complete"]:
        logger.info("Hub: published %s: %s. Status in %s.", publisher.repo_id, report, path)
        return True
    logger.error(
        "Hub: publishing %s is incomplete: %s. Status in %s; everything is kept locally; publish it later with: "
        "python recipes/push_checkpoints.py --run_dir %s --hub_model_id %s",
        publisher.repo_id, report, path, args.output_dir, publisher.repo_id,
    )  # fmt: skip
    return False
