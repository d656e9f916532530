"""Publish an existing run directory on the Hub: its checkpoints as branches, its final model with a model card.

For runs trained without `--push_to_hub`, or whose pushes did not all go through (the end of a run says so):

    python recipes/push_checkpoints.py --run_dir outputs/quickstart --hub_model_id my-org/llama-mini-clm
    python recipes/push_checkpoints.py --run_dir outputs/quickstart --hub_model_id my-org/llama-mini-clm \
        --checkpoints checkpoint-200 --push_final false      # one checkpoint, nothing on main

Only complete checkpoints are pushed (weights whose safetensors headers read and match their sizes, config.json and
trainer_state.json): with `--checkpoints all` an incomplete one is skipped and named, one named explicitly is an
error. Branches already on the Hub are skipped, and staged copies (`.hub_staging/`) go once they are on the Hub.
The token comes from `HF_TOKEN` or `hf auth login`, never from the command line. Branch template and license
default to the run's own (`resolved_config.yaml`). `run_dir/hub_status.json` says what was published; the exit
status is 3 if a push failed after its retries.
"""

import os
import sys
from dataclasses import dataclass, field

import yaml

from hf_pretrain.cli import parse_config
from hf_pretrain.hub.publisher import (
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_REVISION_TEMPLATE,
    HubPublisher,
    PushResult,
    RetryPolicy,
    check_revision_template,
)
from hf_pretrain.hub.run import (
    HUB_INCOMPLETE_EXIT_CODE,
    checkpoint_job,
    final_job,
    hub_status,
    publishable_checkpoints,
    publishing_problem,
    write_hub_status,
)


@dataclass
class PushArguments:
    run_dir: str = field(metadata={"help": "The run's output_dir (with checkpoint-N folders and the final model)."})
    hub_model_id: str = field(metadata={"help": "The repository to publish to, e.g. 'my-org/llama-mini'."})
    checkpoints: str = field(
        default="all",
        metadata={"help": "'all', 'none', or comma-separated checkpoint folder names or steps (checkpoint-200,400)."},
    )
    push_final: bool = field(default=True, metadata={"help": "Push the final model and its model card."})
    hub_revision: str = field(default="main", metadata={"help": "The branch of the final model."})
    hub_revision_template: str | None = field(
        default=None,
        metadata={"help": "Branch name of a checkpoint ({step}, {tokens}, {tokens_h}); default: the run's."},
    )
    model_card_license: str | None = field(default=None, metadata={"help": "License id; default: the run's."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the repository as private."})
    hub_push_attempts: int = field(default=5, metadata={"help": "Attempts per push."})
    hub_retry_delay: float = field(default=5.0, metadata={"help": "Seconds before the first retry; then doubles."})
    hub_retry_max_delay: float = field(default=60.0, metadata={"help": "Longest wait between two attempts."})
    hub_request_timeout: float = field(
        default=DEFAULT_REQUEST_TIMEOUT,
        metadata={"help": "Seconds a request may go without progress before it fails (and its push is retried)."},
    )

    def __post_init__(self):
        if not os.path.isdir(self.run_dir):
            raise ValueError(f"run_dir: no such folder {self.run_dir!r}.")
        resolved = {}
        if os.path.isfile(os.path.join(self.run_dir, "resolved_config.yaml")):
            with open(os.path.join(self.run_dir, "resolved_config.yaml"), encoding="utf-8") as handle:
                resolved = yaml.safe_load(handle) or {}
        self.hub_revision_template = (
            self.hub_revision_template or resolved.get("hub_revision_template") or DEFAULT_REVISION_TEMPLATE
        )
        self.model_card_license = self.model_card_license or resolved.get("model_card_license") or "other"
        check_revision_template(self.hub_revision_template, "hub_revision_template")
        if self.push_final and not os.path.isfile(os.path.join(self.run_dir, "config.json")):
            raise ValueError(
                f"push_final: {self.run_dir!r} holds no final model (config.json); use --push_final false."
            )
        if self.push_final and (problem := publishing_problem(self.run_dir, needs_state=False)):
            raise ValueError(f"push_final: the final model in {self.run_dir!r} is incomplete ({problem}).")
        if self.hub_request_timeout <= 0:
            raise ValueError(f"hub_request_timeout must be positive (seconds), got {self.hub_request_timeout}.")
        self.retry = RetryPolicy(self.hub_push_attempts, self.hub_retry_delay, self.hub_retry_max_delay)
        complete, self.incomplete = publishable_checkpoints(self.run_dir)
        self.selected = self._select(complete)

    def _select(self, complete: list[str]) -> list[str]:
        if self.checkpoints in ("all", "none"):
            return complete if self.checkpoints == "all" else []
        by_name = {os.path.basename(path): path for path in complete}
        broken = {os.path.basename(path): problem for path, problem in self.incomplete.items()}
        selected = []
        for item in self.checkpoints.split(","):
            name = item.strip() if item.strip().startswith("checkpoint-") else f"checkpoint-{item.strip()}"
            if name in broken:
                raise ValueError(f"checkpoints: {name} in {self.run_dir!r} is incomplete ({broken[name]}).")
            if name not in by_name:
                raise ValueError(
                    f"checkpoints: no {name} in {self.run_dir!r} (found: {', '.join(by_name) or 'none'})."
                )
            selected.append(by_name[name])
        self.incomplete = {}  # the ones named are all complete: the others were not asked for
        return selected


def main(argv=None) -> list[PushResult]:
    """Push what the arguments select, one push at a time; print one line, write run_dir/hub_status.json."""
    (args,) = parse_config((PushArguments,), argv)
    for path, problem in args.incomplete.items():
        print(f"not pushing {path}: it is incomplete ({problem})", file=sys.stderr)
    publisher = HubPublisher(
        args.hub_model_id, private=args.hub_private_repo, retry=args.retry, request_timeout=args.hub_request_timeout
    )
    jobs = [
        checkpoint_job(path, args.run_dir, args.hub_revision_template, args.model_card_license, stage=False)
        for path in args.selected
    ]
    if args.push_final:  # last: its card lists the branches pushed before it
        jobs.append(final_job(args.run_dir, args.model_card_license, args.hub_revision))
    results = [publisher.push(job) for job in jobs]  # one at a time, in this process: nothing to wait for
    skipped = f", {len(args.incomplete)} incomplete checkpoint(s) not pushed" if args.incomplete else ""
    print(f"{publisher.repo_id}: {publisher.summary()}{skipped}")
    write_hub_status(args.run_dir, hub_status(publisher, args.incomplete))
    return results


def cli(argv=None) -> int:
    """The command's exit status: 0 when every selected push went through (or was already there), else 3."""
    return HUB_INCOMPLETE_EXIT_CODE if any(result.status == "failed" for result in main(argv)) else 0


if __name__ == "__main__":
    sys.exit(cli())
