"""What a run publishes on the Hub, and where: each checkpoint on its own branch, the final model on main.

    output_dir/checkpoint-N/ → branch `hub_revision_template` (default `step{N}-tokens{T}`): weights, config,
                               generation config, tokenizer, `modeling_*.py` (remote code) and a short README
    output_dir/              → `main` (or `hub_revision`): the same files of the final model, the model card
                               (README.md), loss_curve.png, revisions.txt and resolved_config.yaml

Optimizer, scheduler and RNG states, `training_args.bin` and `trainer_state.json` stay local: a branch holds a
model that loads with `from_pretrained(repo, revision=branch)`, not a training checkpoint.

When a checkpoint is saved, its files are hard-linked into `output_dir/.hub_staging/` (free, and copied only where
links are not possible), so that checkpoint rotation (`save_total_limit`) can delete the folder while its push
waits for the Hub; the staged files go once the push succeeds, and stay, named in the report, if it fails.
Each branch pushed (or found already there) is recorded in `output_dir/revisions.txt`: repo, branch, step, tokens,
commit; main gets the rows of its repo.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass

from hf_pretrain.checkpoint_state import phases_from_checkpoint
from hf_pretrain.hub.model_card import (
    RunSummary,
    loss_curve_png,
    read_json,
    render_checkpoint_card,
    render_model_card,
)
from hf_pretrain.hub.publisher import HubPublisher, PushJob, PushResult, human_count, revision_name
from hf_pretrain.run_layout import LOSS_CURVE_FILE, RESOLVED_CONFIG_FILE, REVISIONS_FILE, STAGING_DIR

logger = logging.getLogger(__name__)

LOADABLE_PATTERNS = (
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
    "adapter_config.json", "adapter_model.bin", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "*.model", "chat_template.jinja",
    "modeling_*.py", "configuration_*.py", "tokenization_*.py",
)  # fmt: skip
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_records_lock = threading.Lock()


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
    """The push of one checkpoint to its branch. `stage`: hard-link its files first (see the module docstring)."""
    step, tokens = checkpoint_progress(checkpoint_dir)
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
            if stage:
                shutil.rmtree(source, ignore_errors=True)
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


def publish_final_model(publisher: HubPublisher, trainer) -> bool:
    """At the end of a run: push the final model after the pending checkpoint pushes, wait for all of them (at most
    `hub_wait_timeout` seconds) and report. True when everything is on the Hub; never raises."""
    args = trainer.args
    job = final_job(
        args.output_dir,
        args.model_card_license,
        args.hub_revision or "main",
        plan=getattr(trainer, "plan", None),
        schedule=getattr(trainer, "schedule", None),
    )
    publisher.submit(job)
    finished = publisher.wait(args.hub_wait_timeout)
    report = publisher.summary()
    publisher.close()
    if finished and not publisher.failures:
        logger.info("Hub: published %s: %s.", publisher.repo_id, report)
        return True
    logger.error(
        "Hub: publishing %s is incomplete: %s. Everything is kept locally; publish it later with: "
        "python recipes/push_checkpoints.py --run_dir %s --hub_model_id %s",
        publisher.repo_id, report, args.output_dir, publisher.repo_id,
    )  # fmt: skip
    return False
