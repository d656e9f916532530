"""The model-family registry: what an architecture can train, decided from its config's capabilities, not its name.

Three kinds of models pretrain here, and transformers' own auto mappings say which one a config is:

* an **encoder** has a native masked-LM head (`AutoModelForMaskedLM` knows its model type: BERT, RoBERTa,
  DistilBERT, DeBERTa-v2, ModernBERT, EuroBERT, ...) and bidirectional attention by construction;
* a **decoder** has a causal-LM head (`AutoModelForCausalLM`: Llama, Qwen2/3, Mistral, Gemma, GPT-2, ...); it
  trains masked LM (or CLM→MLM) with a masked-LM head on its own backbone (`hf_pretrain.modeling_masked_llama`)
  when its attention can be made bidirectional, which `probe_bidirectional` measures on a shrunk copy of the
  architecture before any work (an architecture that ignores `is_causal=False` would otherwise train a silently
  causal "MLM");
* an **encoder-decoder** (T5, BART) has `is_encoder_decoder` and a seq2seq head.

`family_of(config)` answers once per run; the resolve step, the model builder and the model card ask it and never
compare model-type names.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from hf_pretrain.modeling_masked_llama import masked_decoder_class, probe_bidirectional, register_masked_decoder

DECODER, ENCODER, ENCODER_DECODER = "decoder", "encoder", "encoder_decoder"
KIND_NAMES = {DECODER: "a decoder-only model", ENCODER: "an encoder", ENCODER_DECODER: "an encoder-decoder"}


@dataclass(frozen=True)
class ModelFamily:
    """What hf_pretrain knows about one architecture (one `model_type`)."""

    model_type: str
    kind: str  # DECODER, ENCODER or ENCODER_DECODER
    masked_lm: str | None  # "native" (its own XForMaskedLM), "masked_decoder" (ours, on its backbone), None
    why_no_masked_lm: str | None = None  # what is missing, for the error when masked LM is asked for
    token_type_ids: bool = False  # the model takes segment ids (BERT-style type_vocab_size)
    sdpa: bool = True  # transformers implements sdpa attention for it (DeBERTa-v2 does not: eager)

    @property
    def default_attention(self) -> str:
        """The attention implementation a run gets when it names none: sdpa where the architecture has it."""
        return "sdpa" if self.sdpa else "eager"

    @property
    def description(self) -> str:
        return KIND_NAMES[self.kind]

    def auto_class(self, masked: bool):
        """The Auto class that builds or loads this family for a run (masked: the run has a masked-LM phase)."""
        if self.kind == ENCODER_DECODER:
            return AutoModelForSeq2SeqLM
        if self.kind == ENCODER or masked:
            return AutoModelForMaskedLM
        return AutoModelForCausalLM

    def prepare(self, config: PretrainedConfig, masked: bool) -> None:
        """Make `auto_class(masked)` able to build this config (registers our masked-LM head for decoders)."""
        if masked and self.masked_lm == "masked_decoder":
            register_masked_decoder(config)


def _base_class(model_type: str):
    name = MODEL_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None


def _takes_token_type_ids(model_type: str) -> bool:
    """Whether the bare model's forward takes `token_type_ids` (BERT, RoBERTa, DeBERTa-v2; not DistilBERT)."""
    model_class = _base_class(model_type)
    return model_class is not None and "token_type_ids" in inspect.signature(model_class.forward).parameters


def _supports_sdpa(model_type: str) -> bool:
    model_class = _base_class(model_type)
    return model_class is None or bool(getattr(model_class, "_supports_sdpa", True))


_FAMILIES: dict[str, ModelFamily] = {}


def _decide(config: PretrainedConfig) -> ModelFamily:
    model_type = config.model_type
    if getattr(config, "is_encoder_decoder", False) or model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return ModelFamily(model_type, ENCODER_DECODER, None, "it is an encoder-decoder (use span_corruption or ul2)")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return ModelFamily(
            model_type,
            ENCODER,
            "native",
            token_type_ids=_takes_token_type_ids(model_type),
            sdpa=_supports_sdpa(model_type),
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"model_type={model_type!r} has neither a causal-LM nor a masked-LM class in transformers: pretrain a "
            "decoder (llama, qwen2, mistral, gpt2, ...) or an encoder (bert, roberta, modernbert, eurobert, ...)."
        )
    try:
        masked_decoder_class(config)
    except ValueError as error:
        return ModelFamily(model_type, DECODER, None, str(error), sdpa=_supports_sdpa(model_type))
    if probe_bidirectional(config) is False:
        reason = f"its attention stays causal under is_causal=False (measured on a shrunk {model_type})"
        return ModelFamily(model_type, DECODER, None, reason, sdpa=_supports_sdpa(model_type))
    # True, or None when a shrunk copy could not be built: then the trainer's probe of the real model at its first
    # step is the check (it raises before the first optimizer step if the attention stays causal).
    return ModelFamily(model_type, DECODER, "masked_decoder", sdpa=_supports_sdpa(model_type))


def family_of(config: PretrainedConfig) -> ModelFamily:
    """The family of `config`; decided (and probed) once per model type and process."""
    model_type = getattr(config, "model_type", None)
    if not model_type:
        raise ValueError(f"{type(config).__name__} has no model_type: build it with AutoConfig.")
    if model_type not in _FAMILIES:
        _FAMILIES[model_type] = _decide(config)
    return _FAMILIES[model_type]


def masked_lm_error(config: PretrainedConfig, objective: str) -> str | None:
    """Why `config` cannot train a masked-LM objective, in one line naming the model type and what would work."""
    family = family_of(config)
    if family.masked_lm is not None:
        return None
    return (
        f"objective={objective!r} needs a masked-LM head on bidirectional attention, and {family.model_type} cannot "
        f"have one ({family.why_no_masked_lm.removeprefix(family.model_type + ': ')}); or use an encoder (bert, "
        "roberta, modernbert, eurobert, ...)."
    )


def resolve_attention(config: PretrainedConfig, requested: str | None, device_type: str | None = None) -> str:
    """The attention implementation of a run: the one asked for, else the family's default; sdpa asked of an
    architecture without it, or flex_attention on a device where torch cannot train it, stops here, before any
    work. `device_type` is the training device's ("cpu", "cuda", ...); None skips the device check."""
    family = family_of(config)
    if requested is None:
        return family.default_attention
    if requested == "sdpa" and not family.sdpa:
        raise ValueError(
            f"attn_implementation='sdpa': transformers has no sdpa attention for {family.model_type}; set "
            "attn_implementation: eager (or leave it unset to get the architecture's default)."
        )
    if requested == "flex_attention" and device_type is not None and (problem := _flex_backward(device_type)):
        raise ValueError(
            f"attn_implementation='flex_attention' cannot train on {device_type} with torch {torch.__version__} "
            f"({problem}); use sdpa or eager there."
        )
    return requested


def _flex_backward(device_type: str) -> str | None:
    """Why torch's flex_attention has no backward pass on `device_type` (torch 2.13 has none on CPU), or None.
    Probed with one tiny uncompiled call rather than assumed from a version table."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    query = torch.zeros(1, 1, 16, 8, device=device_type, requires_grad=True)  # (B, heads, T, head_dim)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flex_attention called without torch.compile": a probe, not a step
            flex_attention(query, query, query).sum().backward()
    except (NotImplementedError, RuntimeError) as error:
        return str(error).split(". ")[0]
    return None


# Checkpoints that are another family's backbone under another name. EuroBERT is a bidirectional Llama (same modules
# and parameter names, `hf_pretrain.eurobert_export`), so a EuroBERT checkpoint continues as a Llama decoder when a
# run needs one (CLM, CLM→MLM): the weights load into the Llama class unchanged.
_DECODER_EQUIVALENTS = {"eurobert": "llama"}


def decoder_equivalent(config: PretrainedConfig) -> PretrainedConfig | None:
    """The decoder config a checkpoint of an encoder family loads as when a run needs a decoder, or None."""
    target = _DECODER_EQUIVALENTS.get(getattr(config, "model_type", None))
    if target is None:
        return None
    target_class = type(AutoConfig.for_model(target))
    fields = {key: value for key, value in config.to_dict().items() if key not in ("model_type", "architectures")}
    decoder = target_class(**fields)
    decoder.is_causal = True  # the run sets each phase's direction; a causal start is the decoder's own
    return decoder
