"""Change a masked-LM collator's masking rate during training (a masking-ratio curriculum)."""

from __future__ import annotations

import math
from collections.abc import Callable

from transformers import TrainerCallback


class MaskingRateCallback(TrainerCallback):
    """Set a masked-LM collator's `mlm_probability` from the global step at the start of every training step.

    Args:
        collator: the collator (or anything with a settable `mlm_probability` and `set_epoch`).
        schedule: global step → rate in [0, 1], e.g. `lambda step: 0.3 - 0.15 * min(step / 10_000, 1)`.
        update_epoch: also call `collator.set_epoch(int(state.epoch))` at the start of each epoch, so repeated
            data gets fresh masks.

    The rate is read by DataLoader workers when they build a batch, so batches already prefetched (by default
    `prefetch_factor` = 2 per worker) still carry the previous rate.

    >>> from types import SimpleNamespace
    >>> from hf_pretrain.training.callbacks.masking_rate import MaskingRateCallback
    >>> class Collator:
    ...     mlm_probability = 0.15
    >>> collator = Collator()
    >>> callback = MaskingRateCallback(collator, lambda step: 0.4 if step < 100 else 0.15, update_epoch=False)
    >>> _ = callback.on_step_begin(None, SimpleNamespace(global_step=10), None)
    >>> collator.mlm_probability
    0.4
    """

    def __init__(self, collator, schedule: Callable[[int], float], update_epoch: bool = True):
        self.collator = collator
        self.schedule = schedule
        self.update_epoch = update_epoch

    def _apply(self, state) -> None:
        self.collator.mlm_probability = self.schedule(int(state.global_step))

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state)  # the right rate for the first batches, also when resuming mid-schedule
        return control

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.update_epoch:
            self.collator.set_epoch(int(math.floor(state.epoch or 0)))
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state)
        return control
