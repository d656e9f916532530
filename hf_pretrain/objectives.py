"""The objective registry: one `ObjectiveSpec` per run objective, and the `ObjectivePlan` of a run.

An entry owns everything the rest of the code would otherwise re-derive from the objective's name: which model
kinds it accepts, the phases it trains (each with its attention and label convention), the collator factory
(given the tokenizer, the arguments and the resolved attention implementation), the special tokens it needs, the
metric it logs, its model-card wording and the hyper-parameters that belong to it. The resolve step, the trainer,
the pipeline, the tokenizer check and the model card ask the registry; nothing outside this module compares
objective names (`tests/test_objectives.py` checks that).

The trainer asks the `ObjectivePlan` which phase is active at the current global step (a pure function of the
step, so resume and DataLoader workers need no shared state); batches carry a view for every phase of the run
(`hf_pretrain.objective_views`).

Decoder-only masked LM (the EuroBERT / arXiv 2507.00994 setup) runs through one forward convention for both
phases: `labels[t]` is the target predicted at position t, unshifted. Masked LM labels are the original tokens at
masked positions; causal LM labels are the next tokens (`next_token_targets`). The model (`LlamaForMaskedLM`)
computes an unshifted loss over labelled positions only, causal or bidirectional by `config.is_causal`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hf_pretrain.attention_masks import MASK_FORMATS
from hf_pretrain.collators import (
    DataCollatorForCausalLM,
    DataCollatorForMaskedLM,
    DataCollatorForPrefixLM,
    DataCollatorForSpanCorruption,
    DataCollatorForUL2,
)
from hf_pretrain.model_families import DECODER, ENCODER, ENCODER_DECODER, KIND_NAMES, family_of, masked_lm_error
from hf_pretrain.objective_views import MultiObjectiveCollator

ATTENTIONS = ("causal", "bidirectional", "prefix", "encoder_decoder")


@dataclass(frozen=True)
class Phase:
    """What one phase of a run trains: the attention the model must have and how its loss reads the labels."""

    name: str
    attention: str  # one of ATTENTIONS; "prefix" = causal model + a 4D prefix mask from the collator
    masked_lm: bool = False  # the model has a masked-LM head: an encoder's own, or ours on a decoder's backbone
    unshifted_labels: bool = False  # labels[t] is the target at position t (the masked-decoder convention)
    metric: str = "perplexity"  # "perplexity" (exp of the loss) or "mlm_accuracy" (counted from the logits)
    label: str = ""  # short name in model cards and logs
    description: str = ""  # what it trains, in a model card

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"Phase attention must be one of {ATTENTIONS}, got {self.attention!r}.")


_CLM = "causal language modelling: next-token prediction"
PHASES: dict[str, Phase] = {
    phase.name: phase
    for phase in (
        Phase("clm", "causal", label="CLM", description=_CLM),
        # The first phase of clm_then_mlm: causal attention, next-token labels in the masked-decoder convention.
        Phase("clm_unshifted", "causal", masked_lm=True, unshifted_labels=True, label="CLM", description=_CLM),
        Phase(
            "mlm",
            "bidirectional",
            masked_lm=True,
            unshifted_labels=True,
            metric="mlm_accuracy",
            label="MLM",
            description="masked language modelling, bidirectional attention",
        ),
        Phase("prefix_lm", "prefix", label="Prefix-LM", description="bidirectional prefix, causal continuation"),
        Phase(
            "span_corruption",
            "encoder_decoder",
            label="Span corruption",
            description="T5-style sentinel spans, encoder-decoder or prefix decoder",
        ),
        Phase("ul2", "encoder_decoder", label="UL2", description="mixture of R/X/S denoisers with mode tokens"),
    )
}


@dataclass(frozen=True)
class CollatorContext:
    """What a collator factory may use: decided by the resolve step, never re-read from the arguments."""

    tokenizer: object
    args: object  # PretrainingArguments (the objective's hyper-parameters and the seed)
    decoder_only: bool
    attn_implementation: str  # the implementation the model really runs with


@dataclass(frozen=True)
class ObjectiveSpec:
    """A run objective. `phase_names` are the phases in order; `switch_field` names the argument that places the
    switches (a fraction of the run)."""

    name: str
    description: str  # model-card wording
    phase_names: tuple[str, ...]
    model_kinds: tuple[str, ...]  # the model families' kinds it trains: DECODER, ENCODER, ENCODER_DECODER
    collator: Callable[[CollatorContext], object]
    required_tokens: tuple[str, ...] = ("eos_token", "pad_token")
    needs_sentinels: bool = False  # T5 sentinel tokens <extra_id_N>
    hyperparameters: tuple[str, ...] = ()  # PretrainingArguments fields that belong to this objective
    switch_field: str | None = None
    decoder_flag: str | None = None  # a boolean argument that must be set to run it on a decoder-only model

    @property
    def phases(self) -> tuple[Phase, ...]:
        return tuple(PHASES[name] for name in self.phase_names)

    @property
    def masked_lm(self) -> bool:
        """Whether the model needs a masked-LM head for the whole run (an encoder's own, or ours on a decoder)."""
        return any(phase.masked_lm for phase in self.phases)

    def uses_4d_mask(self, decoder_only: bool) -> bool:
        """Whether the collator sends a custom (B, 1, T, T) mask (prefix-style attention on a decoder)."""
        return decoder_only and (any(p.attention == "prefix" for p in self.phases) or self.decoder_flag is not None)

    def phase_starts(self, total_steps: int, switch_fraction: float | None = None) -> tuple[tuple[int, str], ...]:
        """(first step, phase name) for each phase of a run of `total_steps` steps."""
        if len(self.phase_names) == 1:
            return ((0, self.phase_names[0]),)
        switch_step = round(switch_fraction * total_steps)
        if not 0 < switch_step < total_steps:
            raise ValueError(
                f"{self.switch_field}={switch_fraction} of {total_steps} steps puts the switch at step {switch_step}, "
                "outside the run: raise max_steps or move it toward 0.5."
            )
        return ((0, self.phase_names[0]), (switch_step, self.phase_names[1]))


# ---------------------------------------------------------------------------------------------------------------
# Collator factories
# ---------------------------------------------------------------------------------------------------------------


def _masked_kwargs(args) -> dict:
    return {
        "mlm_probability": args.mlm_probability,
        "mask_replace_prob": args.mask_replace_prob,
        "random_replace_prob": args.random_replace_prob,
        "whole_word_mask": args.whole_word_mask,
        "seed": args.seed,
        "allow_empty_masking": getattr(args, "allow_degenerate", True),  # refused in a run unless allowed
    }


def _seq2seq_kwargs(context: CollatorContext) -> dict:
    kwargs = {"decoder_only": context.decoder_only, "seed": context.args.seed}
    if context.decoder_only:  # the 4D mask in the form the model's attention consumes
        kwargs["attn_implementation"] = context.attn_implementation
        # ... built by PretrainingTrainer on the device from document_ids + prefix_mask, never in the workers
        kwargs["attention_on_device"] = True
    return kwargs


def _clm_collator(context: CollatorContext):
    # PretrainingTrainer builds the document mask on the device (`document_ids`), not the DataLoader worker.
    return DataCollatorForCausalLM(context.tokenizer, attention_on_device=True)


def _mlm_collator(context: CollatorContext):
    return DataCollatorForMaskedLM(context.tokenizer, **_masked_kwargs(context.args), attention_on_device=True)


def _clm_then_mlm_collator(context: CollatorContext):
    return MultiObjectiveCollator(
        DataCollatorForMaskedLM(context.tokenizer, **_masked_kwargs(context.args), attention_on_device=True),
        DataCollatorForCausalLM(context.tokenizer, attention_on_device=True),
    )


def _prefix_lm_collator(context: CollatorContext):
    return DataCollatorForPrefixLM(context.tokenizer, **_seq2seq_kwargs(context))


def _span_collator(context: CollatorContext):
    args = context.args
    return DataCollatorForSpanCorruption(
        context.tokenizer,
        noise_density=args.noise_density,
        mean_noise_span_length=args.mean_noise_span_length,
        **_seq2seq_kwargs(context),
    )


def _ul2_collator(context: CollatorContext):
    return DataCollatorForUL2(context.tokenizer, **_seq2seq_kwargs(context))


_MASKING = ("mlm_probability", "mask_replace_prob", "random_replace_prob")
OBJECTIVES: dict[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in (
        ObjectiveSpec("clm", "causal language modelling: next-token prediction", ("clm",), (DECODER,), _clm_collator),
        ObjectiveSpec(
            "mlm",
            "masked language modelling, bidirectional attention",
            ("mlm",),
            (ENCODER, DECODER),
            _mlm_collator,
            required_tokens=("eos_token", "pad_token", "mask_token"),
            hyperparameters=(*_MASKING, "whole_word_mask"),
        ),
        ObjectiveSpec(
            "clm_then_mlm",
            "causal language modelling, then masked language modelling with bidirectional attention",
            ("clm_unshifted", "mlm"),
            (DECODER,),
            _clm_then_mlm_collator,
            required_tokens=("eos_token", "pad_token", "mask_token"),
            hyperparameters=("switch_fraction", *_MASKING),
            switch_field="switch_fraction",
        ),
        ObjectiveSpec(
            "prefix_lm", "bidirectional prefix, causal continuation", ("prefix_lm",), (DECODER,), _prefix_lm_collator
        ),
        ObjectiveSpec(
            "span_corruption",
            "T5-style sentinel spans, encoder-decoder or prefix decoder",
            ("span_corruption",),
            (ENCODER_DECODER, DECODER),
            _span_collator,
            needs_sentinels=True,
            hyperparameters=("noise_density", "mean_noise_span_length", "span_decoder_only"),
            decoder_flag="span_decoder_only",
        ),
        ObjectiveSpec(
            "ul2",
            "mixture of R/X/S denoisers with mode tokens",
            ("ul2",),
            (ENCODER_DECODER, DECODER),
            _ul2_collator,
            needs_sentinels=True,
            hyperparameters=("span_decoder_only",),
            decoder_flag="span_decoder_only",
        ),
    )
}
RUN_OBJECTIVES = tuple(OBJECTIVES)


def get_objective(name: str) -> ObjectiveSpec:
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {RUN_OBJECTIVES}, got {name!r}.")
    return OBJECTIVES[name]


def check_model_fits_objective(spec: ObjectiveSpec, config, attn_implementation: str, args) -> None:
    """Stop before any work when the model cannot run the objective; the message says what would."""
    family = family_of(config)
    if family.kind not in spec.model_kinds:
        needed = " or ".join(KIND_NAMES[k] for k in spec.model_kinds)
        hint = "; an encoder trains with objective: mlm" if family.kind == ENCODER else ""
        raise ValueError(f"objective={spec.name!r} needs {needed}; {family.model_type} is {family.description}{hint}.")
    if family.kind == DECODER and spec.decoder_flag and not getattr(args, spec.decoder_flag):
        raise ValueError(
            f"objective={spec.name!r} on a decoder-only model needs {spec.decoder_flag}: true (inputs then "
            "targets in one sequence, bidirectional over the inputs), or an encoder-decoder model_preset."
        )
    if spec.masked_lm and (error := masked_lm_error(config, spec.name)):
        raise ValueError(error)
    if spec.uses_4d_mask(family.kind == DECODER) and attn_implementation not in MASK_FORMATS:
        raise ValueError(
            f"objective={spec.name!r} on a decoder-only model passes a 4D prefix mask, which "
            f"attn_implementation={attn_implementation!r} cannot take; use one of {tuple(MASK_FORMATS)}."
        )


@dataclass(frozen=True)
class ObjectivePlan:
    """Which phase is active at each global step: `phases` are (first step, phase name), sorted."""

    phases: tuple[tuple[int, str], ...]

    def __post_init__(self):
        starts = [start for start, _ in self.phases]
        if not starts or starts[0] != 0 or starts != sorted(set(starts)):
            raise ValueError(f"ObjectivePlan phases must start at step 0 and increase, got {self.phases}.")
        unknown = [name for _, name in self.phases if name not in PHASES]
        if unknown:
            raise ValueError(f"Unknown phase(s) {unknown}; known: {sorted(PHASES)}.")

    @classmethod
    def for_run(cls, objective: str, total_steps: int, switch_fraction: float | None = None) -> ObjectivePlan:
        """The plan of a run: its objective's phases, a switch at round(switch_fraction · total_steps)."""
        return cls(get_objective(objective).phase_starts(total_steps, switch_fraction))

    def at(self, step: int) -> Phase:
        name = self.phases[0][1]
        for start, phase_name in self.phases:
            if step >= start:
                name = phase_name
        return PHASES[name]

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
