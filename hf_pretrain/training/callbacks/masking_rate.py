"""Change a masked-LM collator's masking rate during training (a masking-ratio curriculum)."""

from __future__ import annotations

import math
from collections.abc import Callable

from transformers import TrainerCallback

from hf_pretrain.data.training_data import blocks_per_step


class MaskingRateCallback(TrainerCallback):
    """Mask every training block at `schedule(step)`, the global step that trains on it.

    Args:
        collator: the collator, or a wrapper of it (`CurriculumCollator`, `MultiObjectiveCollator`) that forwards
            `set_masking_schedule`; or anything with a settable `mlm_probability` (and `set_epoch`).
        schedule: global step → rate in [0, 1], e.g. `lambda step: 0.3 - 0.15 * min(step / 10_000, 1)`. A
            spawned DataLoader worker needs a picklable one (a module-level function, a `functools.partial`).
        update_epoch: also call `collator.set_epoch(int(state.epoch))` at the start of each epoch, so repeated
            data gets fresh masks.

    Two modes, by what the features carry:
    - with their global `block_index` (the pretraining recipe, `hf_pretrain.data.block_order`): at train begin,
      before the DataLoader starts its workers, the schedule is installed in the collator chain
      (`set_masking_schedule`); each row is masked at the rate of its block's step, block_index //
      blocks_per_step, whatever the workers, their prefetching or a resume.
    - without (a plain script): the collator's shared-memory `mlm_probability` is set at every step, so workers
      use it from their next batch on; batches already prefetched (`prefetch_factor` per worker) lag behind.

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
        if not hasattr(collator, "set_masking_schedule") and not hasattr(collator, "mlm_probability"):
            raise ValueError(
                f"{type(collator).__name__} has neither set_masking_schedule nor mlm_probability: a masking-rate "
                "schedule would not reach its masked-LM collator."
            )
        self.collator = collator
        self.schedule = schedule
        self.update_epoch = update_epoch

    def _apply(self, state) -> None:
        self.collator.mlm_probability = self.schedule(int(state.global_step))

    def on_train_begin(self, args, state, control, **kwargs):
        # The Trainer has built the DataLoader but starts its workers only when the first epoch iterates it.
        install = getattr(self.collator, "set_masking_schedule", None)
        if install is not None and args is not None:
            install(self.schedule, blocks_per_step(args))
        self._apply(state)  # the rate of rows without a block index, also when resuming mid-schedule
        return control

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.update_epoch:
            self.collator.set_epoch(int(math.floor(state.epoch or 0)))
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state)
        return control
