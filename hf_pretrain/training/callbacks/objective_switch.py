"""Mark the CLM→MLM switch in a run: a checkpoint at the boundary, and the plan stored in every checkpoint."""

from __future__ import annotations

import logging

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

logger = logging.getLogger(__name__)


class ObjectiveSwitchCallback(TrainerCallback, ExportableState):
    """Save a checkpoint at every objective boundary, and keep the objective plan in each checkpoint.

    The switch itself is a pure function of the global step (`ObjectivePlan.at`): the trainer picks the batch view,
    attention and loss from it at every step, so nothing here has to reach DataLoader workers. This callback only
    makes the boundary visible: the checkpoint taken there is the "CLM model before MLM" of the study, and its
    `trainer_state.json` records the plan so a resumed run switches at the same step even if arguments changed.
    """

    def __init__(self, phases: list[list] | None = None):
        self.phases = phases  # [[first step, objective name], ...]; set by the trainer once total steps are known

    def state(self) -> dict:
        return {"args": {"phases": self.phases}, "attributes": {}}

    @property
    def switch_steps(self) -> list[int]:
        return [int(start) for start, _ in (self.phases or [])[1:]]

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.switch_steps:
            name = next(name for start, name in self.phases if start == state.global_step)
            logger.info("Step %d: switching objective to %s; saving the boundary checkpoint.", state.global_step, name)
            control.should_save = True
        return control
