"""Write a masked Llama (`LlamaForMaskedLM`) as a native EuroBERT checkpoint: `model_type: eurobert`, no remote code.

EuroBERT (arXiv 2503.05500) *is* a bidirectional Llama: transformers' `EuroBertModel` has the same modules and
parameter names as `LlamaModel` (`model.embed_tokens`, `model.layers.*.self_attn.{q,k,v,o}_proj`,
`model.layers.*.mlp.{gate,up,down}_proj`, the two RMSNorms per layer, `model.norm`), the same RoPE code
(`ROPE_INIT_FUNCTIONS`, so every rope type Llama has), attention biases from `attention_bias` on all four
projections and MLP biases from `mlp_bias`, exactly as `LlamaAttention` / `LlamaMLP`, and `head_dim` read the same
way. Its mask is `create_bidirectional_mask`, the one a Llama with `is_causal=False` gets from `create_causal_mask`.
Reading both modeling files, the differences are:

- `EuroBertForMaskedLM.lm_head` has a bias exactly when `mlp_bias` is set (Llama's never has one): the export
  gives it a zero bias, which computes the same function;
- EuroBERT's defaults differ from Llama's (`rms_norm_eps` 1e-5 vs 1e-6, special token ids 128000-128002, ...):
  every field the function depends on (`EUROBERT_FIELDS`) is copied and then compared, and an override of one
  is refused rather than exported;
- a config with `is_causal: true` makes EuroBERT causal too (`merge_with_config_defaults` hands it to the sdpa
  kernel): the export never writes it, and a causal source is refused;
- padding-free (packed) batches: `LlamaForMaskedLM` keeps documents apart from `position_ids` under eager/sdpa,
  EuroBERT does not (pass an attention mask, or use flash attention with `cu_seq_lens_*`);
- EuroBERT has no sequence/token classification head of Llama's kind: `EuroBertForSequenceClassification`
  (`classifier_pooling`, default "late") and `EuroBertForTokenClassification` start from the exported backbone
  with fresh heads, which is what fine-tuning a pretrained encoder means.

So any masked Llama can be written as EuroBERT (`eurobert_compatible` says why not when it cannot: another
architecture, a causal model, a quantized one, a rope type EuroBERT cannot build), and `to_eurobert` checks the
result by logits before anyone sees it.

>>> from transformers import LlamaConfig
>>> from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM
>>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...                      num_attention_heads=4, num_key_value_heads=2, mask_token_id=4)
>>> masked = LlamaForMaskedLM(config)
>>> eurobert_compatible(masked.config) is None
True
>>> eurobert = to_eurobert(masked)  # checked by logits; `save_eurobert(masked, folder, tokenizer)` writes it
>>> type(eurobert).__name__, eurobert.config.rms_norm_eps, eurobert.lm_head.weight is masked.lm_head.weight
('EuroBertForMaskedLM', 1e-06, True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import EuroBertConfig, EuroBertForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

__all__ = ["EUROBERT_FIELDS", "eurobert_compatible", "save_eurobert", "to_eurobert"]

# What the network computes depends on these (read in LlamaModel and EuroBertModel alike); copied, then compared.
EUROBERT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rms_norm_eps",
    "rope_parameters",
    "max_position_embeddings",  # dynamic / yarn / llama3 RoPE scale against it
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
)
# Carried as they are, without changing the function: special tokens, initialisation of fresh heads, dropout.
_CARRIED_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "initializer_range", "attention_dropout")


def _text_config(config: PretrainedConfig) -> PretrainedConfig:
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def eurobert_compatible(config: PretrainedConfig) -> str | None:
    """None when a masked model with this config can be written as EuroBERT, else the reason, in one line.

    Decided by fields (see the module docstring for what was compared): it must be a Llama (`model_type: llama`),
    not causal (`is_causal: true`, or a config that names only causal-LM architectures and says nothing about
    `is_causal`), not quantized, with one flat `rope_parameters` whose type EuroBERT's RoPE can build.
    `attention_bias`, `mlp_bias`, `head_dim`, `tie_word_embeddings`, `hidden_act` and every rope type are
    expressible: EuroBERT reads them exactly as Llama does.

    >>> from transformers import LlamaConfig, Qwen2Config
    >>> eurobert_compatible(LlamaConfig(is_causal=False)) is None
    True
    >>> eurobert_compatible(Qwen2Config())
    "model_type='qwen2': EuroBERT is the Llama architecture; only a masked Llama (LlamaForMaskedLM) can be written as EuroBERT"
    """
    config = _text_config(config)
    model_type = getattr(config, "model_type", None)
    if model_type != "llama":
        return (
            f"model_type={model_type!r}: EuroBERT is the Llama architecture; only a masked Llama (LlamaForMaskedLM) "
            "can be written as EuroBERT"
        )
    is_causal = getattr(config, "is_causal", None)
    architectures = getattr(config, "architectures", None) or []
    if is_causal is True or (
        is_causal is None and architectures and all(a.endswith("ForCausalLM") for a in architectures)
    ):
        said = "is_causal=True" if is_causal is True else f"architectures={architectures}"
        return (
            f"{said}: a causal model, and EuroBERT attention is bidirectional; load it as LlamaForMaskedLM (and train "
            "MLM) before exporting"
        )
    if getattr(config, "quantization_config", None) is not None:
        return "quantization_config is set: EuroBERT is written from plain weights; dequantize (or merge) first"
    rope = getattr(config, "rope_parameters", None) or {}
    if not isinstance(rope, dict) or (rope and "rope_type" not in rope):
        return f"rope_parameters={rope!r}: EuroBERT has one set of RoPE parameters for all layers"
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
        return f"rope_type={rope_type!r}: EuroBERT's RoPE builds only default, {', '.join(ROPE_INIT_FUNCTIONS)}"
    missing = [field for field in EUROBERT_FIELDS if not hasattr(config, field)]
    if missing:
        return f"the config has no {', '.join(missing)}"
    return None


def _differences(source: PretrainedConfig, target: PretrainedConfig) -> list[str]:
    """The functional fields on which two configs disagree, as "field: source -> target"."""
    found = []
    for field in EUROBERT_FIELDS:
        a, b = getattr(source, field, None), getattr(target, field, None)
        if (dict(a) if isinstance(a, dict) else a) != (dict(b) if isinstance(b, dict) else b):
            found.append(f"{field}: {a!r} -> {b!r}")
    if getattr(target, "is_causal", None) is True:
        found.append("is_causal: True (EuroBERT would run causal under sdpa)")
    return found


def _eurobert_config(config: PretrainedConfig, overrides: dict) -> EuroBertConfig:
    values = {field: getattr(config, field) for field in EUROBERT_FIELDS}
    if "rope_parameters" in values:
        values["rope_parameters"] = dict(values["rope_parameters"] or {"rope_type": "default"})
    values.update({field: getattr(config, field, None) for field in _CARRIED_FIELDS if hasattr(config, field)})
    changed = [
        f"{field}={overrides[field]!r} (the masked Llama has {values[field]!r})"
        for field in EUROBERT_FIELDS
        if field in overrides and overrides[field] != values[field]
    ]
    if changed:
        raise ValueError(
            f"to_eurobert: {', '.join(changed)} would change what the network computes; override only fields such "
            "as mask_token_id or classifier_pooling"
        )
    if overrides.get("is_causal") is not None:
        raise ValueError("to_eurobert: is_causal cannot be set; EuroBERT is bidirectional by construction")
    values.update(overrides)
    if values.get("mask_token_id") is None:
        values["mask_token_id"] = getattr(config, "mask_token_id", None)
    if values["mask_token_id"] is None:
        raise ValueError(
            "to_eurobert: the config has no mask_token_id and EuroBertConfig needs one; pass mask_token_id=... "
            "(or save_eurobert(..., tokenizer=...), which takes the tokenizer's)"
        )
    target = EuroBertConfig(**values)
    target.architectures = ["EuroBertForMaskedLM"]
    differences = _differences(config, target)
    if differences:  # EuroBertConfig normalised something we copied: refuse rather than export another function
        raise ValueError(f"to_eurobert: the EuroBERT config differs from the masked Llama's: {'; '.join(differences)}")
    return target


def _set_tensor(model: nn.Module, name: str, tensor: torch.Tensor, parameter: bool) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if parameter:
        module._parameters[leaf] = tensor
    else:
        module._buffers[leaf] = tensor


@torch.no_grad()
def _probe(model: nn.Module, vocab_size: int) -> torch.Tensor:
    """(2, 8, V) logits for a fixed batch whose second row is right-padded."""
    device = next(model.parameters()).device
    input_ids = ((torch.arange(16) * 7 + 3) % vocab_size).reshape(2, 8).to(device)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def _verify(source: nn.Module, eurobert: EuroBertForMaskedLM) -> None:
    modes = source.training, eurobert.training
    source.eval()
    eurobert.eval()
    try:
        expected, got = _probe(source, eurobert.config.vocab_size), _probe(eurobert, eurobert.config.vocab_size)
    finally:
        source.train(modes[0])
        eurobert.train(modes[1])
    dtype = next(eurobert.parameters()).dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2 * max(1.0, float(expected.abs().max()))
    difference = float((expected - got).abs().max())
    if not difference <= tolerance:
        raise RuntimeError(
            f"to_eurobert: the EuroBERT copy computes other logits than the masked Llama (max |difference| "
            f"{difference:.3g} > {tolerance:.3g}); nothing was exported"
        )


def to_eurobert(model: PreTrainedModel, *, verify: bool = True, **config_overrides) -> EuroBertForMaskedLM:
    """The masked Llama `model` as an `EuroBertForMaskedLM` that shares its parameters (no copy: training one trains
    the other; `copy.deepcopy` the result for an independent model).

    The config carries every field the function depends on (`EUROBERT_FIELDS`: vocabulary, sizes, `hidden_act`,
    `rms_norm_eps`, `rope_parameters`, `max_position_embeddings`, biases, `tie_word_embeddings`), the special token
    ids (pad/bos/eos, and `mask_token_id` from the config or `config_overrides`), `initializer_range` and
    `attention_dropout`. `config_overrides` may set non-functional fields (`mask_token_id`, `classifier_pooling`,
    ...); one that would change the function is refused. With `verify` the two models' logits on a padded batch are
    compared before returning (RuntimeError if they differ).
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"to_eurobert expects a LlamaForMaskedLM, got {type(model).__name__}; merge adapters first "
            "(PeftModel.merge_and_unload())"
        )
    config = _text_config(model.config)
    reason = eurobert_compatible(config)
    if reason is not None:
        raise ValueError(f"cannot write this {type(model).__name__} as EuroBERT: {reason}")
    if getattr(config, "is_causal", True) is not False:
        raise ValueError(
            f"cannot write this {type(model).__name__} as EuroBERT: its attention is causal now (is_causal="
            f"{getattr(config, 'is_causal', None)}); export a LlamaForMaskedLM, or set_bidirectional(model, True)"
        )
    target = _eurobert_config(config, config_overrides)
    with torch.device("meta"):  # structure only: every tensor is replaced by the source's below
        eurobert = EuroBertForMaskedLM(target)

    expected = dict(eurobert.named_parameters(remove_duplicate=False))
    source = dict(model.named_parameters(remove_duplicate=False))  # tied embeddings: both names, one Parameter
    if target.mlp_bias and "lm_head.bias" not in source:
        weight = source["lm_head.weight"]  # EuroBERT's lm_head has a bias with mlp_bias; Llama's never: zero = same
        source["lm_head.bias"] = nn.Parameter(weight.new_zeros(weight.shape[0]), requires_grad=weight.requires_grad)
    if expected.keys() != source.keys():
        raise ValueError(
            f"to_eurobert: parameter names differ from EuroBERT's: missing {sorted(expected.keys() - source.keys())}, "
            f"unexpected {sorted(source.keys() - expected.keys())}"
        )
    for name, parameter in source.items():
        if parameter.shape != expected[name].shape:
            raise ValueError(
                f"to_eurobert: {name} is {tuple(parameter.shape)}, EuroBERT expects {tuple(expected[name].shape)}"
            )
        _set_tensor(eurobert, name, parameter, parameter=True)
    # RoPE buffers are not saved: a loaded EuroBERT computes them from its config, so they are computed from it here
    # too (not taken from the Llama), and the logit check below sees what a reload will run.
    source_rotary = model.get_submodule("model.rotary_emb")
    with torch.device(source_rotary.inv_freq.device):
        eurobert.model.rotary_emb = type(eurobert.model.rotary_emb)(config=target).to(source_rotary.inv_freq.dtype)
    left_on_meta = [name for name, tensor in eurobert.state_dict(keep_vars=True).items() if tensor.is_meta]
    left_on_meta += [name for name, tensor in eurobert.named_buffers() if tensor.is_meta]
    if left_on_meta:
        raise ValueError(f"to_eurobert: nothing in the masked Llama fills {', '.join(sorted(set(left_on_meta)))}")

    implementation = model.config._attn_implementation
    if implementation and implementation != eurobert.config._attn_implementation:
        eurobert.set_attn_implementation(implementation)
    eurobert.train(model.training)
    if verify:
        _verify(model, eurobert)
    return eurobert


def save_eurobert(model: PreTrainedModel, output_dir: str | os.PathLike, tokenizer=None, **config_overrides) -> Path:
    """Write the masked Llama `model` to `output_dir` as a native EuroBERT checkpoint; returns the folder.

    `config.json` says `model_type: eurobert`, `architectures: ["EuroBertForMaskedLM"]`, with no `auto_map`; the
    weights are safetensors; no Python file is written. It loads without `trust_remote_code` and without
    hf_pretrain with `AutoModelForMaskedLM`, `AutoModelForSequenceClassification`,
    `AutoModelForTokenClassification` and `pipeline("fill-mask")` (the last needs the tokenizer: pass it and it is
    saved alongside, its mask token becoming `mask_token_id` when the config has none).
    """
    output_dir = Path(output_dir)
    stale = sorted(p.name for p in output_dir.glob("*.py")) if output_dir.is_dir() else []
    if stale:
        raise ValueError(
            f"save_eurobert: {output_dir} holds Python files ({', '.join(stale)}): a EuroBERT checkpoint has no "
            "remote code; write it to an empty folder"
        )
    if tokenizer is not None:
        if getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError("save_eurobert: the tokenizer has no mask token; fill-mask and MLM fine-tuning need one")
        if len(tokenizer) > _text_config(model.config).vocab_size:
            raise ValueError(
                f"save_eurobert: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
                f"{_text_config(model.config).vocab_size}: it is not this model's tokenizer"
            )
        if getattr(_text_config(model.config), "mask_token_id", None) is None:
            config_overrides.setdefault("mask_token_id", tokenizer.mask_token_id)
    eurobert = to_eurobert(model, **config_overrides)
    eurobert.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    saved = json.loads((output_dir / "config.json").read_text(encoding="utf-8"))
    if saved.get("model_type") != "eurobert" or saved.get("architectures") != ["EuroBertForMaskedLM"]:
        raise RuntimeError(f"save_eurobert: {output_dir}/config.json is not a EuroBertForMaskedLM config")
    if "auto_map" in saved or "is_causal" in saved:
        raise RuntimeError(f"save_eurobert: {output_dir}/config.json carries auto_map or is_causal")
    return output_dir
