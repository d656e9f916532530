"""Named model configs, per family: plain `AutoConfig` kwargs, so any field can be overridden (`config_overrides`).

Each preset carries only its own architecture's fields: a BERT preset has no `rms_norm_eps`, a GPT-2 preset no
`num_key_value_heads`. Vocabulary size and special-token ids are never part of a preset: they come from the
tokenizer (`hf_pretrain.models.build_config`).

The `llama-210m` / `llama-610m` / `llama-1b` presets are the EuroBERT-style sizes of the study reproduced by
`recipes/configs/paper/` (arXiv 2507.00994): a Llama backbone (RMSNorm, SwiGLU, RoPE θ = 10,000), context 2,048.
Their masked-LM results are saved in the native EuroBERT format (`hf_pretrain.eurobert_export`).
"""

from __future__ import annotations

from typing import Any

_LLAMA = {"model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
# The study's decoders: context 2,048 and RoPE θ = 10,000 (Llama 3 uses 500,000; EuroBERT's release 250,000).
_PAPER = {
    **_LLAMA,
    "max_position_embeddings": 2048,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}
_T5 = {"model_type": "t5", "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}
# Tiny test sizes shared by the families that use transformers' standard field names.
_TINY = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # ---- Llama-style decoders (CLM, and MLM / CLM→MLM through a masked-LM head on the same backbone) ----------
    # ~0.3M non-embedding parameters: unit tests and smoke runs.
    "llama-tiny": {**_LLAMA, **_TINY, "num_key_value_heads": 2, "max_position_embeddings": 512},
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
    # The study's sizes (EuroBERT shapes, named by their layers plus one 128,256 x hidden vocabulary matrix).
    "llama-210m": {
        **_PAPER,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
    },
    "llama-610m": {
        **_PAPER,
        "hidden_size": 1152,
        "intermediate_size": 4096,
        "num_hidden_layers": 26,
        "num_attention_heads": 18,
        "num_key_value_heads": 6,
    },
    # The 1B shape of EuroBERT's training code (Optimus, "Add 1.2b model size"): head_dim 96.
    "llama-1b": {
        **_PAPER,
        "hidden_size": 1728,
        "intermediate_size": 4096,
        "num_hidden_layers": 26,
        "num_attention_heads": 18,
        "num_key_value_heads": 6,
    },
    # ---- other decoders -------------------------------------------------------------------------------------
    "gpt2-tiny": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512},
    "qwen2-tiny": {"model_type": "qwen2", **_TINY, "num_key_value_heads": 2, "max_position_embeddings": 512},
    "mistral-tiny": {"model_type": "mistral", **_TINY, "num_key_value_heads": 2, "max_position_embeddings": 512},
    # ---- encoders (native masked-LM heads) -------------------------------------------------------------------
    "bert-tiny": {"model_type": "bert", **_TINY, "max_position_embeddings": 512, "type_vocab_size": 2},
    # RoBERTa's positions start after the padding index (pad_token_id + 1): 512 tokens need 514 positions.
    "roberta-tiny": {"model_type": "roberta", **_TINY, "max_position_embeddings": 514, "type_vocab_size": 1},
    "distilbert-tiny": {"model_type": "distilbert", "dim": 64, "hidden_dim": 256, "n_layers": 2, "n_heads": 4},
    "deberta-v2-tiny": {"model_type": "deberta-v2", **_TINY, "max_position_embeddings": 512, "type_vocab_size": 0},
    "modernbert-tiny": {
        "model_type": "modernbert",
        **_TINY,
        "intermediate_size": 128,  # ModernBERT's GLU projects to 2 x intermediate_size
        "max_position_embeddings": 512,
        "global_attn_every_n_layers": 2,  # layer 0 global, layer 1 local (sliding window): both paths train
        "local_attention": 64,
    },
    "eurobert-tiny": {
        "model_type": "eurobert",
        **_TINY,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
    },
    # ---- encoder-decoders ------------------------------------------------------------------------------------
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


def preset_settings(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The AutoConfig kwargs of `preset` with `overrides` on top, `model_type` included.

    Overrides naming another `model_type` replace the preset whole (its fields belong to its own architecture):
    `{"model_type": "bert", "hidden_size": 64}` is transformers' BERT defaults with hidden_size 64.
    """
    if preset not in MODEL_PRESETS:
        raise ValueError(f"model_preset={preset!r} is unknown; choose one of {sorted(MODEL_PRESETS)}.")
    overrides = dict(overrides or {})
    base = MODEL_PRESETS[preset]
    if overrides.get("model_type", base["model_type"]) != base["model_type"]:
        base = {}
    return {**base, **overrides}
