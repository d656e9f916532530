"""Batches of a run with several phases: one view per phase, built in the DataLoader workers, chosen at the step.

A CLM→MLM run's workers build both the causal and the masked view of every batch (masking is cheap next to a
training step); the main process picks the view of the phase of the current global step (`select_view`), so the
switch lands on the exact step whatever the workers have prefetched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from hf_pretrain.collators import IGNORE_INDEX, DataCollatorForCausalLM, DataCollatorForMaskedLM

_MASKING_ONLY = ("special_tokens_mask", "word_ids", "offset_mapping", "block_index")


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Causal-LM labels in the unshifted convention: target[t] = labels[t + 1]; the last position has none.

    Equal to what `ForCausalLMLoss` does inside the model (compare logits[:, :-1] with labels[:, 1:]); a -100 at a
    document start (padding-free batches) removes the prediction from the previous document's last token.
    """
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)


VIEW_SEPARATOR = "::"


def select_view(batch: Mapping, phase) -> dict:
    """The model inputs of `phase` from a batch that carries several views (`name::key`); single views pass."""
    prefix = phase.name + VIEW_SEPARATOR
    if not any(VIEW_SEPARATOR in key for key in batch):
        return dict(batch)
    view = {key[len(prefix) :]: value for key, value in batch.items() if key.startswith(prefix)}
    if not view:
        raise ValueError(f"The batch has no view for phase {phase.name!r}; it has keys {sorted(batch)}.")
    return view


@dataclass
class MultiObjectiveCollator:
    """Collate once, then build the batch of every phase of a run (CLM and MLM views for clm_then_mlm).

    Keys are `<phase>::<key>`; `select_view` picks one in the main process at the step, so the switch lands on
    the exact global step whatever the DataLoader workers have prefetched.

    Packed blocks (`document_lengths`): both views restart `position_ids` per document and keep attention inside
    each document in the form the two collators' shared `attention_on_device` asks for: the compact
    `document_ids` for `PretrainingTrainer` (True, the recipe), or each view finished by its own collator (False:
    the causal view without `attention_mask`, or with its causal 4D mask; the masked view with its bidirectional
    4D mask).
    """

    masked: DataCollatorForMaskedLM
    causal: DataCollatorForCausalLM
    phases: Sequence[str] = field(default=("clm_unshifted", "mlm"))

    def __post_init__(self):
        if self.masked.attention_on_device != self.causal.attention_on_device:
            raise ValueError(
                f"attention_on_device differs between the masked ({self.masked.attention_on_device}) and causal "
                f"({self.causal.attention_on_device}) collators; the views of one batch need one form."
            )
        views = {"clm_unshifted": self._causal_view, "mlm": self.masked.mask_tokens}
        unknown = [name for name in self.phases if name not in views]
        if unknown:
            raise ValueError(f"MultiObjectiveCollator builds {sorted(views)} views, not {unknown}.")
        self._views = [(name, views[name]) for name in self.phases]

    def _causal_view(self, collated: Mapping) -> dict:
        # Columns only the masking transform reads (block_index: its rate schedule): no model inputs.
        view = {k: v for k, v in collated.items() if k not in _MASKING_ONLY}
        view = self.causal.add_labels(view)  # labels: the inputs, -100 at padding (and document starts)
        view["labels"] = next_token_targets(view["labels"])
        return view

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        collated = self.masked.collate(features)  # padded ids, attention mask, special-token mask
        batch: dict[str, torch.Tensor] = {}
        for name, build in self._views:
            batch.update({f"{name}{VIEW_SEPARATOR}{key}": value for key, value in build(collated).items()})
        return batch

    def set_epoch(self, epoch: int) -> None:
        self.masked.set_epoch(epoch)

    def set_masking_schedule(self, schedule, blocks_per_step: int = 1) -> None:
        """A masking-rate schedule for the masked view (see `DataCollatorForMaskedLM.set_masking_schedule`)."""
        self.masked.set_masking_schedule(schedule, blocks_per_step)

    @property
    def mlm_probability(self) -> float:
        return self.masked.mlm_probability

    @mlm_probability.setter
    def mlm_probability(self, value: float) -> None:
        self.masked.mlm_probability = value
