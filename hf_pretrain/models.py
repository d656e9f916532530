"""Model presets and construction: build a model from a named config, or load a checkpoint to continue pretraining.

Presets (`hf_pretrain.presets`) are plain `AutoConfig` kwargs, so anything a preset sets can be overridden field
by field (`config_overrides`), and any architecture transformers knows can be built by naming its `model_type`.
Which Auto class builds a run's model is the family registry's answer (`hf_pretrain.model_families`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from hf_pretrain.model_families import ENCODER_DECODER, decoder_equivalent, family_of
from hf_pretrain.modeling_masked_llama import register_masked_llama
from hf_pretrain.presets import MODEL_PRESETS, preset_settings  # noqa: F401  (MODEL_PRESETS: re-exported)
from hf_pretrain.training.distributed import same_start_on_every_backend

register_masked_llama()  # AutoModelForMaskedLM knows Llama-style decoders from here on

# Config fields that name special tokens, and the tokenizer tokens that fill them (the first one it has): BERT-style
# [CLS]/[SEP] stand in for bos/eos in WordPiece tokenizers, and bos/eos for [CLS]/[SEP] in byte-level ones.
_SPECIAL_IDS = {
    "pad_token_id": ("pad_token",),
    "bos_token_id": ("bos_token", "cls_token"),
    "eos_token_id": ("eos_token", "sep_token"),
    "cls_token_id": ("cls_token", "bos_token"),
    "sep_token_id": ("sep_token", "eos_token"),
    "mask_token_id": ("mask_token",),
}
_OWN_FIELDS = ("cls_token_id", "sep_token_id", "mask_token_id")  # set only where the architecture has the field


def _special_ids(config: PretrainedConfig, tokenizer) -> dict[str, int]:
    ids = {}
    for field, tokens in _SPECIAL_IDS.items():
        if field in _OWN_FIELDS and not hasattr(config, field):
            continue
        token_id = next((getattr(tokenizer, f"{t}_id") for t in tokens if getattr(tokenizer, t, None)), None)
        if token_id is not None:
            ids[field] = token_id
    return ids


def build_config(preset: str, tokenizer, overrides: dict[str, Any] | None = None) -> PretrainedConfig:
    """A config from a preset and overrides, with the vocabulary and special-token ids of `tokenizer`."""
    kwargs = preset_settings(preset, overrides)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    config.vocab_size = len(tokenizer)
    for field, token_id in _special_ids(config, tokenizer).items():
        setattr(config, field, token_id)
    if family_of(config).kind == ENCODER_DECODER:
        config.decoder_start_token_id = tokenizer.pad_token_id  # T5 convention: the decoder starts from pad
    return config


def is_encoder_decoder(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def max_positions(config: PretrainedConfig) -> int | None:
    """Longest sequence the model's position embeddings allow, or None when unbounded (relative positions, T5)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def _auto_class(config: PretrainedConfig, masked: bool):
    family = family_of(config)
    family.prepare(config, masked)
    return family.auto_class(masked)


def build_model(
    config: PretrainedConfig, attn_implementation: str | None = None, masked_decoder: bool = False
) -> PreTrainedModel:
    """A freshly initialised model for `config`: causal LM, masked LM (`masked_decoder`: the run has a masked-LM
    phase; an encoder is always a masked LM), or seq2seq for encoder-decoder configs. The same seed gives the same
    weights under DDP, ZeRO-2, ZeRO-3 and FSDP (`same_start_on_every_backend`)."""
    auto_class = _auto_class(config, masked_decoder)
    return same_start_on_every_backend(lambda: auto_class.from_config(config, attn_implementation=attn_implementation))


def load_model(
    name_or_path: str,
    attn_implementation: str | None = None,
    masked_decoder: bool = False,
    as_decoder: bool = False,
    **kwargs,
) -> PreTrainedModel:
    """A pretrained checkpoint (Hub id or folder) to continue pretraining from. A causal-LM checkpoint loads into
    a masked-LM decoder as is (same parameter names): the study's continued MLM pretraining from CLM. With
    `as_decoder`, an encoder checkpoint whose backbone is a decoder's (EuroBERT: Llama) loads as that decoder.
    `kwargs` go to `AutoConfig.from_pretrained` (config fields such as `sparse_prediction`)."""
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    if as_decoder:
        config = decoder_equivalent(config)
    auto_class = _auto_class(config, masked_decoder)
    return auto_class.from_pretrained(name_or_path, config=config, attn_implementation=attn_implementation)


def add_lora(model: PreTrainedModel, rank: int, alpha: float, target_modules: str | list[str] = "all-linear"):
    """Wrap `model` with a LoRA adapter (peft); only the adapter trains."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0)
    return get_peft_model(model, config)


def parameter_size(parameter: torch.nn.Parameter) -> int:
    """Elements of a parameter, also under DeepSpeed ZeRO-3, whose partitioned tensors are empty on every rank."""
    return getattr(parameter, "ds_numel", parameter.numel())


def count_parameters(model: PreTrainedModel, *, exclude_embeddings: bool = False) -> int:
    """Trainable parameter count (ZeRO-3 safe); without embeddings it is the N of the 6·N·D compute estimate."""
    total = sum(parameter_size(p) for p in model.parameters() if p.requires_grad)
    if exclude_embeddings:
        embeddings = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
        total -= sum(parameter_size(w) for w in embeddings if w.requires_grad)
    return total
