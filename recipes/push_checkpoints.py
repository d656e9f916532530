"""Publish an existing run directory on the Hub: its checkpoints as branches, its final model with a model card.

For runs trained without `--push_to_hub`, or whose pushes did not all go through (the end of a run says so):

    python recipes/push_checkpoints.py --run_dir outputs/quickstart --hub_model_id my-org/llama-mini-clm
    python recipes/push_checkpoints.py --run_dir outputs/quickstart --hub_model_id my-org/llama-mini-clm \
        --checkpoints checkpoint-200 --push_final false      # one checkpoint, nothing on main

Branches already on the Hub are skipped. The token comes from `HF_TOKEN` or `hf auth login`, never from the command
line. Branch template and license default to the run's own (`resolved_config.yaml`). Exits with status 1 if a push
failed after its retries.
"""

import os
import sys
from dataclasses import dataclass, field

import yaml

from hf_pretrain.cli import parse_config
from hf_pretrain.hub.publisher import (
    DEFAULT_REVISION_TEMPLATE,
    HubPublisher,
    PushResult,
    RetryPolicy,
    check_revision_template,
)
from hf_pretrain.hub.run import checkpoint_job, final_job, list_checkpoints


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
    hub_push_attempts: int = field(default=8, metadata={"help": "Attempts per push."})
    hub_retry_delay: float = field(default=5.0, metadata={"help": "Seconds before the first retry; then doubles."})
    hub_retry_max_delay: float = field(default=300.0, metadata={"help": "Longest wait between two attempts."})

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
        self.retry = RetryPolicy(self.hub_push_attempts, self.hub_retry_delay, self.hub_retry_max_delay)
        self.selected = self._select(list_checkpoints(self.run_dir))

    def _select(self, available: list[str]) -> list[str]:
        if self.checkpoints in ("all", "none"):
            return available if self.checkpoints == "all" else []
        by_name = {os.path.basename(path): path for path in available}
        selected = []
        for item in self.checkpoints.split(","):
            name = item.strip() if item.strip().startswith("checkpoint-") else f"checkpoint-{item.strip()}"
            if name not in by_name:
                raise ValueError(
                    f"checkpoints: no {name} in {self.run_dir!r} (found: {', '.join(by_name) or 'none'})."
                )
            selected.append(by_name[name])
        return selected


def main(argv=None) -> list[PushResult]:
    (args,) = parse_config((PushArguments,), argv)
    publisher = HubPublisher(args.hub_model_id, private=args.hub_private_repo, retry=args.retry)
    jobs = [
        checkpoint_job(path, args.run_dir, args.hub_revision_template, args.model_card_license, stage=False)
        for path in args.selected
    ]
    if args.push_final:  # last: its card lists the branches pushed before it
        jobs.append(final_job(args.run_dir, args.model_card_license, args.hub_revision))
    results = [publisher.push(job) for job in jobs]  # one at a time, in this process: nothing to wait for
    print(f"{publisher.repo_id}: {publisher.summary()}")
    return results


if __name__ == "__main__":
    sys.exit(1 if any(result.status == "failed" for result in main()) else 0)
