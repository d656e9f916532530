"""One registry: objective name → which model it needs, how batches are built, which attention the model uses.

The trainer never branches on objective names: it asks the `ObjectivePlan` which objective is active at the
current global step (a pure function of the step, so resume and DataLoader workers need no shared state), and the
batches carry a view for every objective the run will use. DataLoader workers build all views (masking is cheap
next to a training step); the main process only picks one at the step.

Decoder-only masked LM (the EuroBERT / arXiv 2507.00994 setup) runs through one forward convention for both
phases: `labels[t]` is the target predicted at position t, unshifted. Masked LM labels are the original tokens at
masked positions; causal LM labels are the next tokens (`next_token_targets`). The model (`LlamaForMaskedLM`)
computes an unshifted loss over labelled positions only, causal or bidirectional by `config.is_causal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from hf_pretrain.collators import (
    DataCollatorForCausalLM,
    DataCollatorForMaskedLM,
    DataCollatorForPrefixLM,
    DataCollatorForSpanCorruption,
    DataCollatorForUL2,
)


@dataclass(frozen=True)
class Objective:
    """What an objective needs from the model and how its loss reads the labels."""

    name: str
    attention: str  # "causal", "bidirectional", "prefix" (4D mask from the collator) or "encoder_decoder"
    masked_decoder: bool = False  # needs a decoder that can switch to bidirectional attention (LlamaForMaskedLM)
    unshifted_labels: bool = False  # labels[t] is the target at position t (the masked-decoder convention)


OBJECTIVES: dict[str, Objective] = {
    "clm": Objective("clm", "causal"),
    "mlm": Objective("mlm", "bidirectional", masked_decoder=True, unshifted_labels=True),
    "prefix_lm": Objective("prefix_lm", "prefix"),
    "span_corruption": Objective("span_corruption", "encoder_decoder"),
    "ul2": Objective("ul2", "encoder_decoder"),
    # The first phase of clm_then_mlm: causal attention, next-token labels in the masked-decoder convention.
    "clm_unshifted": Objective("clm_unshifted", "causal", masked_decoder=True, unshifted_labels=True),
}
RUN_OBJECTIVES = ("clm", "mlm", "clm_then_mlm", "prefix_lm", "span_corruption", "ul2")
MASKED_DECODER_TYPES = ("llama",)  # model types with a registered masked-LM head (hf_pretrain.modeling_masked_llama)


@dataclass(frozen=True)
class ObjectivePlan:
    """Which objective is active at each global step: `phases` are (first step, objective name), sorted."""

    phases: tuple[tuple[int, str], ...]

    def __post_init__(self):
        starts = [start for start, _ in self.phases]
        if not starts or starts[0] != 0 or starts != sorted(set(starts)):
            raise ValueError(f"ObjectivePlan phases must start at step 0 and increase, got {self.phases}.")
        unknown = [name for _, name in self.phases if name not in OBJECTIVES]
        if unknown:
            raise ValueError(f"Unknown objective(s) {unknown}; known: {sorted(OBJECTIVES)}.")

    @classmethod
    def for_run(cls, objective: str, total_steps: int, switch_fraction: float | None = None) -> ObjectivePlan:
        """The plan of a run: one objective, or clm_then_mlm switching at round(switch_fraction · total_steps)."""
        if objective != "clm_then_mlm":
            return cls(((0, objective),))
        switch_step = round(switch_fraction * total_steps)
        if not 0 < switch_step < total_steps:
            raise ValueError(
                f"switch_fraction={switch_fraction} of {total_steps} steps puts the switch at step {switch_step}, "
                "outside the run: raise max_steps or move switch_fraction toward 0.5."
            )
        return cls(((0, "clm_unshifted"), (switch_step, "mlm")))

    def at(self, step: int) -> Objective:
        name = self.phases[0][1]
        for start, phase_name in self.phases:
            if step >= start:
                name = phase_name
        return OBJECTIVES[name]

    @property
    def switch_steps(self) -> list[int]:
        return [start for start, _ in self.phases[1:]]

    @property
    def names(self) -> list[str]:
        return [name for _, name in self.phases]

    def to_dict(self) -> dict:
        return {"phases": [list(phase) for phase in self.phases]}

    @classmethod
    def from_dict(cls, data: Mapping) -> ObjectivePlan:
        return cls(tuple((int(start), str(name)) for start, name in data["phases"]))


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Causal-LM labels in the unshifted convention: target[t] = labels[t + 1]; the last position has none.

    Equal to what `ForCausalLMLoss` does inside the model (compare logits[:, :-1] with labels[:, 1:]); a -100 at a
    document start (padding-free batches) removes the prediction from the previous document's last token.
    """
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=-100)  # (B, T)


# ---------------------------------------------------------------------------------------------------------------
# Batches: one view per objective of the run, chosen at the training step.
# ---------------------------------------------------------------------------------------------------------------

VIEW_SEPARATOR = "::"


def select_view(batch: Mapping, objective: Objective) -> dict:
    """The model inputs of `objective` from a batch that carries several views (`name::key`); single views pass."""
    prefix = objective.name + VIEW_SEPARATOR
    if not any(VIEW_SEPARATOR in key for key in batch):
        return dict(batch)
    view = {key[len(prefix) :]: value for key, value in batch.items() if key.startswith(prefix)}
    if not view:
        raise ValueError(f"The batch has no view for objective {objective.name!r}; it has keys {sorted(batch)}.")
    return view


@dataclass
class MultiObjectiveCollator:
    """Collate once, then build the batch of every objective of a run (CLM and MLM views for clm_then_mlm).

    Keys are `<objective>::<key>`; `select_view` picks one in the main process at the step, so the switch lands
    on the exact global step whatever the DataLoader workers have prefetched.
    """

    masked: DataCollatorForMaskedLM
    causal: DataCollatorForCausalLM
    objectives: Sequence[str] = ("clm_unshifted", "mlm")

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        collated = self.masked.collate(features)  # padded ids, attention mask, special-token mask
        batch: dict[str, torch.Tensor] = {}
        for name in self.objectives:
            if name == "mlm":
                view = self.masked.mask_tokens(collated)
            elif name == "clm_unshifted":
                view = {k: v for k, v in collated.items() if k not in ("special_tokens_mask", "word_ids")}
                view = self.causal.add_labels(view)  # labels: the inputs, -100 at padding
                view["labels"] = next_token_targets(view["labels"])
            else:
                raise ValueError(f"MultiObjectiveCollator builds clm_unshifted and mlm views, not {name!r}.")
            batch.update({f"{name}{VIEW_SEPARATOR}{key}": value for key, value in view.items()})
        return batch

    def set_epoch(self, epoch: int) -> None:
        self.masked.set_epoch(epoch)


def build_collator(args, tokenizer, decoder_only: bool):
    """The data collator for `args.objective` (a `PretrainingArguments`) and a tokenizer."""
    seed = args.seed
    attn = getattr(args, "attn_implementation", "sdpa")
    objective = args.objective
    if objective == "clm":
        return DataCollatorForCausalLM(tokenizer)
    masked_kwargs = {
        "mlm_probability": args.mlm_probability,
        "mask_replace_prob": args.mask_replace_prob,
        "random_replace_prob": args.random_replace_prob,
        "whole_word_mask": args.whole_word_mask,
        "seed": seed,
    }
    if objective == "mlm":
        return DataCollatorForMaskedLM(tokenizer, **masked_kwargs)
    if objective == "clm_then_mlm":
        return MultiObjectiveCollator(
            DataCollatorForMaskedLM(tokenizer, **masked_kwargs), DataCollatorForCausalLM(tokenizer)
        )
    common = {"decoder_only": decoder_only, "seed": seed}
    if decoder_only:
        common["attn_implementation"] = attn
    if objective == "prefix_lm":
        return DataCollatorForPrefixLM(tokenizer, **common)
    if objective == "span_corruption":
        return DataCollatorForSpanCorruption(
            tokenizer,
            noise_density=args.noise_density,
            mean_noise_span_length=args.mean_noise_span_length,
            **common,
        )
    if objective == "ul2":
        return DataCollatorForUL2(tokenizer, **common)
    raise ValueError(f"objective must be one of {RUN_OBJECTIVES}, got {objective!r}.")


def check_model_fits_objective(objective: str, config, attn_implementation: str) -> None:
    """Stop before training when the model cannot run the objective; the message says what would."""
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    model_type = getattr(config, "model_type", "?")
    if objective in ("clm", "mlm", "clm_then_mlm") and encoder_decoder:
        raise ValueError(f"objective={objective!r} needs a decoder-only model; {model_type} is an encoder-decoder.")
    if objective in ("mlm", "clm_then_mlm") and model_type not in MASKED_DECODER_TYPES:
        raise ValueError(
            f"objective={objective!r} needs a decoder that can be made bidirectional with a masked-LM head; "
            f"supported model types: {MASKED_DECODER_TYPES}, got {model_type!r}."
        )
    uses_4d_mask = objective == "prefix_lm" or (objective in ("span_corruption", "ul2") and not encoder_decoder)
    if uses_4d_mask and attn_implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"objective={objective!r} on a decoder-only model passes a 4D prefix mask, which "
            f"attn_implementation={attn_implementation!r} cannot take; use 'sdpa' or 'eager'."
        )
