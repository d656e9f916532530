"""Push every saved checkpoint to its own Hub branch, in the background, as Pythia and OLMo publish theirs."""

from __future__ import annotations

import logging
import os

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_pretrain.hub.publisher import DEFAULT_REVISION_TEMPLATE, HubPublisher
from hf_pretrain.hub.run import checkpoint_job, list_checkpoints, publishing_problem

logger = logging.getLogger(__name__)


class HubRevisionsCallback(TrainerCallback):
    """On every save, queue the new `checkpoint-N` for its branch (`template` filled with step and tokens seen).

    The push runs in the publisher's thread, so training goes on at once; it never raises into training, and the
    checkpoint folder is left as it is. At the start of a resumed run, the checkpoints already in `output_dir` are
    queued too (a push may have been cut short by the interruption): the branches already on the Hub are skipped,
    so nothing is uploaded twice. A checkpoint that is not complete (`publishing_problem`, e.g. one half written
    when the earlier run was killed) is not pushed, and the log says why. Only the main process pushes.

    Args:
        publisher: the `HubPublisher` of the run's repository.
        template: branch name, with `{step}`, `{tokens}` and `{tokens_h}` (see `hf_pretrain.hub.revision_name`).
        license: license id for the branches' READMEs.
        wait_at_train_end: at the end of training, wait at most this many seconds for the pushes and log a report;
            None: do not wait (the pipeline waits after pushing the final model instead).
    """

    def __init__(
        self,
        publisher: HubPublisher,
        template: str = DEFAULT_REVISION_TEMPLATE,
        license: str = "other",
        wait_at_train_end: float | None = 600.0,
    ):
        self.publisher = publisher
        self.template = template
        self.license = license
        self.wait_at_train_end = wait_at_train_end
        self._queued: set[str] = set()

    def _queue(self, checkpoint_dir: str, run_dir: str) -> None:
        name = os.path.basename(checkpoint_dir)
        if name in self._queued or not os.path.isdir(checkpoint_dir):
            return
        problem = publishing_problem(checkpoint_dir)
        if problem:
            logger.warning("Hub: not pushing %s: it is not a complete, loadable model (%s).", checkpoint_dir, problem)
            return
        try:
            self.publisher.submit(checkpoint_job(checkpoint_dir, run_dir, self.template, self.license))
            self._queued.add(name)
        except Exception:  # staging the files failed (disk full?): report, and let training go on
            logger.exception("Hub: could not queue %s for pushing.", checkpoint_dir)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            for checkpoint_dir in list_checkpoints(args.output_dir):
                self._queue(checkpoint_dir, args.output_dir)
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint_dir = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            self._queue(checkpoint_dir, args.output_dir)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.wait_at_train_end is not None:
            finished = self.publisher.wait(self.wait_at_train_end)
            log = logger.info if finished and not self.publisher.failures else logger.error
            log("Hub: checkpoint branches of %s: %s.", self.publisher.repo_id, self.publisher.summary())
        return control


def hub_revision_callbacks(publisher: HubPublisher | None, args) -> list[TrainerCallback]:
    """The callbacks a run with `push_to_hub` needs ([] without a publisher or with push_checkpoint_revisions off)."""
    if publisher is None or not args.push_checkpoint_revisions:
        return []
    return [HubRevisionsCallback(publisher, args.hub_revision_template, args.model_card_license, None)]
