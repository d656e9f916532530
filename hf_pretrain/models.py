"""Model presets and construction: build a model from a named config, or load a checkpoint to continue pretraining.

Presets are plain `AutoConfig` kwargs, so anything a preset sets can be overridden field by field
(`config_overrides`), and any architecture transformers knows can be built by naming its `model_type`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
    PreTrainedModel,
)

from hf_pretrain.modeling_masked_llama import register_masked_llama

register_masked_llama()  # AutoModelForMaskedLM knows Llama-style decoders from here on

_LLAMA = {"model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
_T5 = {"model_type": "t5", "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # ~0.3M non-embedding parameters: unit tests and smoke runs.
    "llama-tiny": {
        **_LLAMA,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    },
    # ~1.6M non-embedding parameters: the CPU quickstart.
    "llama-mini": {
        **_LLAMA,
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 1024,
    },
    # ~85M non-embedding parameters (GPT-2 small / BERT-base scale): a first real GPU run.
    "llama-small": {
        **_LLAMA,
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
        "max_position_embeddings": 2048,
    },
    "t5-tiny": {
        **_T5,
        "d_model": 64,
        "d_kv": 16,
        "d_ff": 256,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
    },
    "t5-small": {**_T5, "d_model": 512, "d_kv": 64, "d_ff": 1024, "num_layers": 8, "num_heads": 6},
}


def build_config(preset: str, tokenizer, overrides: dict[str, Any] | None = None) -> PretrainedConfig:
    """A config from a preset and overrides, with the vocabulary and special-token ids of `tokenizer`."""
    if preset not in MODEL_PRESETS:
        raise ValueError(f"model_preset={preset!r} is unknown; choose one of {sorted(MODEL_PRESETS)}.")
    kwargs = {**MODEL_PRESETS[preset], **(overrides or {})}
    model_type = kwargs.pop("model_type")
    kwargs.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if model_type == "t5":
        kwargs["decoder_start_token_id"] = tokenizer.pad_token_id  # T5 convention: the decoder starts from pad
    return AutoConfig.for_model(model_type, **kwargs)


def is_encoder_decoder(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def max_positions(config: PretrainedConfig) -> int | None:
    """Longest sequence the model's position embeddings allow, or None when unbounded (relative positions, T5)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def _auto_class(config: PretrainedConfig, masked_decoder: bool):
    if is_encoder_decoder(config):
        return AutoModelForSeq2SeqLM
    return AutoModelForMaskedLM if masked_decoder else AutoModelForCausalLM


def build_model(
    config: PretrainedConfig, attn_implementation: str | None = None, masked_decoder: bool = False
) -> PreTrainedModel:
    """A freshly initialised model for `config`: causal LM, a decoder with a masked-LM head (`masked_decoder`),
    or seq2seq for encoder-decoder configs."""
    return _auto_class(config, masked_decoder).from_config(config, attn_implementation=attn_implementation)


def load_model(
    name_or_path: str, attn_implementation: str | None = None, masked_decoder: bool = False, **kwargs
) -> PreTrainedModel:
    """A pretrained checkpoint (Hub id or folder) to continue pretraining from. A causal-LM checkpoint loads into
    a masked-LM decoder as is (same parameter names): the study's continued MLM pretraining from CLM."""
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    auto_class = _auto_class(config, masked_decoder)
    return auto_class.from_pretrained(name_or_path, attn_implementation=attn_implementation, **kwargs)


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
