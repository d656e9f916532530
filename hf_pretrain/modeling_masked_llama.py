"""Masked language modelling for decoders whose attention can be made bidirectional (the EuroBERT / arXiv 2507.00994
setup), on Llama and on every transformers architecture built the same way.

A decoder trained with MLM: the same backbone and `lm_head` as its `XForCausalLM` (same parameter names, so a CLM
checkpoint loads into `XForMaskedLM` and back with no missing or unexpected keys), bidirectional attention, and an
*unshifted* cross-entropy over the masked positions only.

- `LlamaForMaskedLM` is written out below; `masked_decoder_class(config)` builds `XForMaskedLM` for any other
  architecture whose CausalLM is "base model + `nn.Linear` lm_head" (Qwen2/3, Mistral, Gemma, Gemma2, Phi3, OLMo2,
  GPT-2, ...), on that architecture's own `XPreTrainedModel` and base-model class, found through transformers'
  auto mappings. The class is checked on a 2-layer copy of the architecture before it is handed out: its logits in
  causal mode must equal the CausalLM's, and its attention must be bidirectional under `is_causal=False` (eager and
  sdpa) without leaking in causal mode.
- `probe_bidirectional(config)` is that last measurement alone, on the architecture's CausalLM: True when the
  attention honours `is_causal`, False when it does not (GPT-1, Mamba, ...), None when no small copy can be built.

How the switch to bidirectional attention works in transformers 5.x: a base model's `forward` is wrapped by
`merge_with_config_defaults`, which reads `is_causal` from the call's kwargs or else from `config.is_causal`, writes
it to the config for the duration of the call and forwards it to every attention call. `create_causal_mask` (and
the sliding-window variant) then builds a bidirectional mask (padding still applied) when `config.is_causal` is
False, and the sdpa and flash kernels take `is_causal` from the kwarg, not from `self_attn.is_causal`. So
`config.is_causal = False` is what matters; `set_bidirectional` also flips each attention module's `is_causal`
attribute for code paths that read it directly. Architectures whose masks do not go through these functions stay
causal, which is what the probe detects.

This file is self-contained (it imports only torch, transformers and the standard library): `save_pretrained` copies
it next to the weights, so the checkpoint loads on the Hub with `trust_remote_code=True`. `config.json`'s `auto_map`
names `modeling_masked_llama.<Prefix>ForMaskedLM`; a class other than `LlamaForMaskedLM` is built on first access by
the module-level `__getattr__` below, which is how transformers' `get_class_in_module` asks for it.

Loading a saved masked LM:

- locally, after `import hf_pretrain` (which registers `LlamaForMaskedLM`; `register_masked_decoder(config)` does
  the same for other architectures): `AutoModelForMaskedLM.from_pretrained(path)`;
- from the Hub, without hf_pretrain installed: `AutoModelForMaskedLM.from_pretrained(repo, trust_remote_code=True)`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForMaskedLM, LlamaConfig, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_MAPPING,
)
from transformers.models.llama.modeling_llama import LlamaModel, LlamaPreTrainedModel
from transformers.utils import can_return_tuple, logging

__all__ = [
    "LlamaForMaskedLM",
    "MaskedDecoderMixin",
    "masked_decoder_class",
    "masked_lm_accuracy",
    "masked_lm_loss",
    "packed_bidirectional_mask",
    "probe_bidirectional",
    "register_masked_decoder",
    "register_masked_llama",
    "set_bidirectional",
    "shrunk_config",
]

IGNORE_INDEX = -100  # = hf_pretrain.collators.IGNORE_INDEX; this file imports nothing of ours (trust_remote_code)


# --- loss, accuracy, masks --------------------------------------------------------------------------------------


def masked_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    sparse: bool = True,
    *,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    return_logits: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Unshifted cross-entropy of `lm_head(hidden_states)` against `labels` at positions where `labels != ignore_index`.

    Args:
        hidden_states: (B, T, H) final hidden states.
        lm_head: maps H to the vocabulary V (an `nn.Linear`, or any module/callable).
        labels: (B, T) target ids, `ignore_index` where nothing is predicted. Not shifted: position t predicts
            `labels[:, t]`.
        sparse: apply the head only to the M labeled positions ((M, H) -> (M, V)), which cuts the head's FLOPs and
            activation memory by about 1/mask-rate. With `sparse=False` the head runs on every position.
        num_items_in_batch: divide the summed loss by this instead of the local count of predicted tokens (what
            `transformers.Trainer` passes for correct gradient accumulation).
        return_logits: return the logits; with False the second element is None.

    Returns:
        `(loss, logits, num_predicted)`: the mean loss (float32 scalar; 0 with a grad path when nothing is masked),
        the logits (M, V) when sparse or (B, T, V) when dense, and the number of predicted tokens (a 0-dim long
        tensor).
    """
    mask = labels != ignore_index
    num_predicted = mask.sum()
    if sparse:
        logits = lm_head(hidden_states[mask])
        targets = labels[mask]
        flat_logits = logits
    else:
        logits = lm_head(hidden_states)
        targets = labels.reshape(-1)
        flat_logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.to(flat_logits.device)
    # An empty selection sums to 0 and keeps a grad_fn, so a batch with no masked token trains as a no-op.
    loss_sum = F.cross_entropy(flat_logits.float(), targets, ignore_index=ignore_index, reduction="sum")
    if num_items_in_batch is None:
        denominator = num_predicted.clamp(min=1).to(loss_sum.device)
    elif isinstance(num_items_in_batch, torch.Tensor):
        denominator = num_items_in_batch.to(loss_sum.device)
    else:
        denominator = num_items_in_batch
    loss = loss_sum / denominator
    return loss, (logits if return_logits else None), num_predicted


@torch.no_grad()
def masked_lm_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts for MLM accuracy: `(num_correct, num_predicted)`; accuracy is their ratio.

    `logits` may be dense, (B, T, V) for `labels` (B, T), or sparse, (M, V) for the M labeled positions in
    row-major order (what `masked_lm_loss(sparse=True)` and `XForMaskedLM` with `sparse_prediction` return).
    Counts rather than a ratio, so a trainer can sum them over micro-batches and devices before dividing.
    """
    mask = labels != ignore_index
    if logits.dim() == labels.dim() + 1 and logits.shape[:-1] == labels.shape:
        predictions, targets = logits.argmax(-1)[mask], labels[mask]
    else:
        targets = labels[mask]
        if logits.shape[0] != targets.numel():
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} match neither labels {tuple(labels.shape)} (dense) "
                f"nor the {targets.numel()} labeled positions (sparse)."
            )
        predictions = logits.argmax(-1)
    num_correct = (predictions == targets.to(predictions.device)).sum()
    return num_correct, mask.sum()


def packed_bidirectional_mask(
    position_ids: torch.Tensor, dtype: torch.dtype | None = None, batch_size: int | None = None
) -> torch.Tensor | None:
    """A 4D block-diagonal mask for padding-free (packed) batches under bidirectional attention, or None.

    `position_ids` restart at 0 (any drop) at each document boundary. In causal mode the backbone derives the
    document mask from `position_ids` itself, but its bidirectional mask ignores them, so under eager/sdpa documents
    packed in one row would attend to each other. Returns None when no row holds more than one document.

    The mask is (B, 1, T, T): boolean (True = attend) for sdpa when `dtype` is None, else additive (0 / dtype min)
    for eager attention.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    if batch_size is not None and position_ids.shape[0] != batch_size:
        position_ids = position_ids.expand(batch_size, -1)
    first = position_ids[:, :1] - 1
    document_ids = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)
    if bool((document_ids[:, -1] == document_ids[:, 0]).all()):
        return None
    mask = (document_ids[:, :, None] == document_ids[:, None, :])[:, None]
    if dtype is None:
        return mask
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _decoder_config(model: nn.Module) -> PretrainedConfig:
    config = model.config  # PeftModel forwards `.config` to the wrapped model
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def set_bidirectional(model: nn.Module, bidirectional: bool = True) -> nn.Module:
    """Switch a decoder (CausalLM, MaskedLM, a bare base model, or a PEFT wrapper) between causal and bidirectional
    self-attention, in place; returns `model`.

    Sets `config.is_causal`, which drives both the mask (`create_causal_mask` falls back to a bidirectional padding
    mask) and the `is_causal` kwarg handed to the sdpa/flash kernels, and flips `is_causal` on the attention modules
    that share that config (what kernels read when no kwarg is given). Flipping the modules alone is not enough:
    eager attention would still get a causal mask. Whether an architecture honours the switch is measured by
    `probe_bidirectional`.
    """
    config = _decoder_config(model)
    config.is_causal = not bidirectional
    for module in model.modules():
        if getattr(module, "config", None) is config and isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = not bidirectional
    return model


def _transform_logits(config: PretrainedConfig, logits: torch.Tensor) -> torch.Tensor:
    """What some CausalLMs do to `lm_head`'s output, done the same way here (so an MLM's logits are its CLM's).

    Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling`, Gemma 2/3, VaultGemma and NanoChat
    soft-cap with `final_logit_softcapping`. Anything else a CausalLM does is caught by `masked_decoder_class`'s
    check that the masked head reproduces the causal one.
    """
    scale = getattr(config, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    divisor = getattr(config, "logits_scaling", None)
    if divisor is not None:
        logits = logits / divisor
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


# --- the masked-LM head, for any "base model + lm_head" decoder --------------------------------------------------


class MaskedDecoderMixin:
    """What makes `XForMaskedLM` a masked LM; mixed in before the architecture's own `XPreTrainedModel`.

    Same modules and parameter names as `XForCausalLM` (`<base attribute>.*`, `lm_head.weight`), so checkpoints move
    between the two with no missing or unexpected keys. `config.is_causal` is set to False. The loss is an unshifted
    cross-entropy over the positions where `labels != -100`; with `config.sparse_prediction` (default True) the head
    runs only at those positions and `logits` is (M, V) for the M labeled tokens, in row-major order. Without labels
    `logits` is (B, T, V).

    A class using it sets `_base_model_class` (the architecture's base model), `_decoder_attribute` (the name the
    CausalLM keeps it under: "model", "transformer", ...), `_lm_head_bias` and `_causal_lm_class_name`.
    """

    _base_model_class: type[PreTrainedModel]
    _decoder_attribute = "model"
    _lm_head_bias = False
    _causal_lm_class_name = ""
    _base_takes_use_cache = True

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        config.is_causal = False
        if not hasattr(config, "sparse_prediction"):
            config.sparse_prediction = True
        setattr(self, self._decoder_attribute, self._base_model_class(config))
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=self._lm_head_bias)
        self.post_init()
        set_bidirectional(self, True)

    @property
    def decoder(self) -> nn.Module:
        """The base model (what the CausalLM keeps as `.model` / `.transformer`)."""
        return getattr(self, self._decoder_attribute)

    def get_input_embeddings(self) -> nn.Module:
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.decoder.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, then config.json is made to say what the saved network is.

        A bidirectional model is saved without `is_causal: false`: this class is bidirectional by itself, and the
        flag in config.json would turn a *causal* class that reads the file (`AutoModelForCausalLM` on this folder)
        silently bidirectional. A model saved while causal (the CLM phase of CLM→MLM) is saved as the causal LM it
        is then: `XForCausalLM`, `is_causal: true`, no `auto_map`.
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        path = os.path.join(save_directory, "config.json")
        if not os.path.isfile(path):  # another process wrote the weights (is_main_process=False)
            return
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        if saved.get("is_causal", True) is False:
            del saved["is_causal"]
        else:
            saved["architectures"] = [self._causal_lm_class_name]
            saved.pop("auto_map", None)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(saved, handle, indent=2, sort_keys=True)
            handle.write("\n")

    @classmethod
    def from_causal_lm(cls, causal_model: nn.Module):
        """A masked LM that wraps the very modules of `causal_model` (its `XForCausalLM`): no copy, parameters shared.

        The config object is shared too, and it is switched to bidirectional attention (`set_bidirectional`), so
        `causal_model` becomes bidirectional as well: they are one network. This is for a run that trained with CLM,
        switched to MLM, and now saves the result as a masked LM (`save_pretrained` then writes this class and
        `is_causal: false`). Call `set_bidirectional(causal_model, False)` to get causal attention back.
        """
        attribute = cls._decoder_attribute
        if not (hasattr(causal_model, attribute) and hasattr(causal_model, "lm_head")):
            raise TypeError(
                f"{cls.__name__}.from_causal_lm expects a {cls._causal_lm_class_name}-like model with .{attribute} "
                f"and .lm_head, got {type(causal_model).__name__}"
            )
        with torch.device("meta"):  # throwaway modules, replaced below: nothing is allocated
            masked = cls(causal_model.config)
        setattr(masked, attribute, getattr(causal_model, attribute))
        masked.lm_head = causal_model.lm_head
        masked.train(causal_model.training)
        return set_bidirectional(masked, True)

    def _head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V): the CausalLM's head, `lm_head` and its logit transform."""
        return _transform_logits(self.config, self.lm_head(hidden_states))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Original ids at the masked positions, -100 elsewhere. Not shifted.

        Padding-free batches: pass `position_ids` that restart per document (and, for flash attention, the usual
        `cu_seq_lens_*` / `max_length_*` kwargs) with no `attention_mask`. Under eager and sdpa a block-diagonal
        mask is built here, because the backbone's bidirectional mask ignores `position_ids`.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        for name in ("use_cache", "cache", "past_key_values"):  # no KV cache for a bidirectional encoder
            kwargs.pop(name, None)
        is_causal = kwargs.get("is_causal", getattr(self.config, "is_causal", True))
        attn_implementation = self.config._attn_implementation
        packed = attention_mask is None and position_ids is not None and not is_causal
        if packed and attn_implementation in ("eager", "sdpa"):
            embeds = inputs_embeds if inputs_embeds is not None else self.get_input_embeddings().weight
            batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            dtype = embeds.dtype if attn_implementation == "eager" else None
            attention_mask = packed_bidirectional_mask(position_ids, dtype=dtype, batch_size=batch_size)
        if position_ids is not None:  # only when given: some backbones (Bloom) take no position_ids
            kwargs["position_ids"] = position_ids
        if self._base_takes_use_cache:
            kwargs["use_cache"] = False

        outputs = self.decoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        hidden_states = outputs.last_hidden_state  # (B, T, H)

        loss = None
        if labels is not None:
            loss, logits, _ = masked_lm_loss(
                hidden_states,
                self._head,
                labels,
                sparse=bool(getattr(self.config, "sparse_prediction", True)),
                num_items_in_batch=num_items_in_batch,
            )
        else:
            logits = self._head(hidden_states)

        return MaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )


class LlamaForMaskedLM(MaskedDecoderMixin, LlamaPreTrainedModel):
    """A Llama decoder with bidirectional attention and a masked-language-modelling loss.

    Same modules and parameter names as `LlamaForCausalLM` (`model.*`, `lm_head.weight`), so checkpoints move between
    the two with no missing or unexpected keys. `config.is_causal` is set to False. The loss is an unshifted
    cross-entropy over the positions where `labels != -100`; with `config.sparse_prediction` (default True) the head
    runs only at those positions and `logits` is (M, V) for the M labeled tokens, in row-major order. Without labels
    `logits` is (B, T, V). Other architectures get the same class from `masked_decoder_class`.

    Example:

    >>> import torch
    >>> from transformers import LlamaConfig
    >>> from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM
    >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                      num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForMaskedLM(config)
    >>> input_ids = torch.randint(0, 64, (2, 10))
    >>> labels = torch.full_like(input_ids, -100)
    >>> labels[:, [2, 7]] = input_ids[:, [2, 7]]
    >>> out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels)
    >>> bool(torch.isfinite(out.loss)), tuple(out.logits.shape)
    (True, (4, 64))
    >>> model.config.is_causal
    False
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _base_model_class = LlamaModel
    _decoder_attribute = "model"
    _causal_lm_class_name = "LlamaForCausalLM"


# --- shrunk copies of an architecture ------------------------------------------------------------------------------

PROBE_LENGTH = 8  # tokens in the probe input
_TOLERANCE = 1e-6  # a masked-out key contributes exactly 0 to softmax; anything above this is a leak
_TINY_PARAMETERS = 5_000_000  # a "shrunk" copy above this was not shrunk (unknown size fields): not built
_TINY = {  # standard config attribute names (`attribute_map` translates them, e.g. GPT-2's n_embd) -> tiny values
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 64,
    "max_position_embeddings": 64,
    # mixture-of-experts layers
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
}


def _layer_indices(values: dict, num_layers: int) -> list[int]:
    """Which layers a shrunk copy keeps: the first of each kind in `layer_types` (sliding and full attention, ...),
    or the first two."""
    layer_types = values.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == num_layers:
        first_of_kind = {}
        for index, kind in enumerate(layer_types):
            first_of_kind.setdefault(str(kind), index)
        indices = sorted(first_of_kind.values())
        return indices if len(indices) > 1 else indices + [1][: num_layers - 1]
    return list(range(min(num_layers, 2)))


def shrunk_config(config: PretrainedConfig | type[PretrainedConfig]) -> PretrainedConfig | None:
    """A copy of `config` (or of the config class's defaults) with 1–3 layers, hidden size 32 and vocabulary 64,
    everything else (norms, RoPE, biases, sliding windows, soft-capping, ...) as it was; None if it cannot be built.

    Sizes are set through the config's standard attribute names (`attribute_map` resolves GPT-2's `n_embd` and the
    like); per-layer lists (`layer_types`, ...) keep one layer of each kind; token ids are brought into the
    vocabulary; a sliding window stays at least as long as the probe.

    >>> from transformers import Qwen2Config
    >>> small = shrunk_config(Qwen2Config())
    >>> small.num_hidden_layers, small.hidden_size, small.vocab_size, small.model_type
    (2, 32, 64, 'qwen2')
    """
    config_class = config if isinstance(config, type) else type(config)
    try:
        source = config_class() if isinstance(config, type) else config
        values = source.to_dict()
    except Exception:  # a config class without usable defaults
        return None
    attribute_map = getattr(config_class, "attribute_map", {}) or {}
    layers_key = attribute_map.get("num_hidden_layers", "num_hidden_layers")
    num_layers = values.get(layers_key)
    if isinstance(num_layers, int) and num_layers > 0:
        keep = _layer_indices(values, num_layers)
        for key, value in list(values.items()):
            if isinstance(value, list) and len(value) == num_layers and key != "eos_token_id":
                values[key] = [value[index] for index in keep]
        values[layers_key] = len(keep)
    for name, tiny in _TINY.items():
        if name == "num_hidden_layers":
            continue
        key = attribute_map.get(name, name)
        if key in values:
            values[key] = tiny
    vocab_size = _TINY["vocab_size"]
    for key, value in list(values.items()):
        if key.endswith("token_id") and isinstance(value, int) and value >= vocab_size:
            values[key] = value % vocab_size
        elif key.endswith("token_id") and isinstance(value, list):
            values[key] = [v % vocab_size if isinstance(v, int) else v for v in value]
    if isinstance(values.get("sliding_window"), int):
        values["sliding_window"] = max(values["sliding_window"], 2 * PROBE_LENGTH)
    values.pop("transformers_version", None)
    try:
        return config_class.from_dict(values)
    except Exception:  # the config's validation rejects the shrunk sizes (fields that must agree we do not know)
        return None


@contextlib.contextmanager
def _tiny_compute():
    """Where shrunk copies are built and run: float32 on CPU, no grad, one thread (for 32-wide matmuls a thread
    pool's wake-ups cost more than the work, 10x on a loaded host), transformers' warnings off, and a forked RNG
    seeded 0, so the caller's random state does not move (resumed runs stay exact). Everything is restored."""
    threads, verbosity = torch.get_num_threads(), logging.get_verbosity()
    torch.set_num_threads(1)
    logging.set_verbosity_error()
    try:
        with torch.random.fork_rng(devices=[]), torch.device("cpu"), torch.no_grad():
            torch.manual_seed(0)
            yield
    finally:
        torch.set_num_threads(threads)
        logging.set_verbosity(verbosity)


def _build_tiny(model_class: type[PreTrainedModel], config: PretrainedConfig) -> PreTrainedModel | None:
    """A float32 instance of `model_class` for a shrunk config (inside `_tiny_compute`), or None when it cannot be
    built small."""
    try:
        with torch.device("meta"):
            sizes = sum(p.numel() for p in model_class(config).parameters())
        if sizes > _TINY_PARAMETERS:
            return None
        return model_class(config).float().eval()
    except Exception:
        return None


def _probe_ids(vocab_size: int) -> torch.Tensor:
    return ((torch.arange(PROBE_LENGTH) * 7 + 3) % max(vocab_size - 1, 1))[None, :]  # (1, T), deterministic


@torch.no_grad()
def _outputs(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """(1, T, V) logits, or (1, T, H) hidden states of a bare base model."""
    kwargs = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    out = model(input_ids=input_ids, **kwargs)
    return (out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state).float()


def _direction(model: nn.Module, vocab_size: int) -> tuple[float, float]:
    """`(leak, reach)` when the last probe token changes: the max change of any earlier position's outputs in causal
    mode (0 for causal attention), and of the first position's in bidirectional mode (> 0 for bidirectional)."""
    ids = _probe_ids(vocab_size)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % max(vocab_size - 1, 1)
    set_bidirectional(model, False)
    leak = float((_outputs(model, ids) - _outputs(model, changed))[0, :-1].abs().max())
    set_bidirectional(model, True)
    reach = float((_outputs(model, ids) - _outputs(model, changed))[0, 0].abs().max())
    return leak, reach


def _implementations(model: PreTrainedModel):
    """Switch `model` to eager, then sdpa attention, yielding each name; skips one the architecture lacks."""
    for implementation in ("eager", "sdpa"):
        try:
            model.set_attn_implementation(implementation)
        except (ValueError, ImportError):  # e.g. Gemma2 has no sdpa
            continue
        yield implementation


def probe_bidirectional(config: PretrainedConfig | type[PretrainedConfig]) -> bool | None:
    """Whether the architecture of `config` can be made bidirectional: measured, not assumed.

    Builds a shrunk copy (`shrunk_config`) of its CausalLM (or base model), float32 on CPU, and under eager and sdpa
    attention (where the architecture has them) switches it as `set_bidirectional` does, then changes the last
    token of a short input: True when the first position's logits move in bidirectional mode and no earlier
    position moves in causal mode, False otherwise (the architecture ignores `is_causal`), None when no small copy
    can be built or run. Draws no random numbers of the caller's; well under a second.

    >>> from transformers import LlamaConfig, OpenAIGPTConfig
    >>> probe_bidirectional(LlamaConfig()), probe_bidirectional(OpenAIGPTConfig())
    (True, False)
    """
    small = shrunk_config(config)
    if small is None:
        return None
    model_class = _causal_lm_class(type(small)) or _lookup(MODEL_MAPPING, type(small))
    if not isinstance(model_class, type):
        return None
    with _tiny_compute():
        model = _build_tiny(model_class, small)
        if model is None:
            return None
        verdicts = []
        for _ in _implementations(model):
            try:
                leak, reach = _direction(model, small.vocab_size)
            except Exception:  # the shrunk copy does not run (fields we cannot shrink consistently)
                return None
            verdicts.append(leak <= _TOLERANCE and reach > _TOLERANCE)
    return all(verdicts) if verdicts else None


# --- XForMaskedLM for any architecture -----------------------------------------------------------------------------

_MASKED_CLASSES: dict[type, type] = {LlamaConfig: LlamaForMaskedLM}
_UNSUPPORTED: dict[type, str] = {}  # config class -> why it has no masked decoder (asked once per process)
_CAUSAL_LM_ATTRIBUTES = (  # class attributes of XForCausalLM that the masked LM takes over as they are
    "_tied_weights_keys",
    "_tp_plan",
    "_pp_plan",
    "_fsdp_plan",
    "_keys_to_ignore_on_load_missing",
    "_keys_to_ignore_on_load_unexpected",
    "_keep_in_fp32_modules",
    "_keep_in_fp32_modules_strict",
    "_no_split_modules",
    "base_model_prefix",
)


def _lookup(mapping, config_class: type) -> type | tuple | None:
    try:
        return mapping[config_class]
    except (KeyError, ValueError, ImportError, AttributeError):
        return None


def _causal_lm_class(config_class: type) -> type | None:
    causal = _lookup(MODEL_FOR_CAUSAL_LM_MAPPING, config_class)
    return causal if isinstance(causal, type) else None


def _masked_class_name(config_class: type) -> str:
    return config_class.__name__.removesuffix("Config") + "ForMaskedLM"


def _config_class_named(name: str) -> type | None:
    """The config class called `name` (transformers' or one registered with AutoConfig), without importing others."""
    for model_type, class_name in CONFIG_MAPPING_NAMES.items():
        if class_name == name:
            return CONFIG_MAPPING[model_type]
    return next((c for c in CONFIG_MAPPING._extra_content.values() if c.__name__ == name), None)


def _unsupported(model_type: str, why: str) -> ValueError:
    return ValueError(
        f"{model_type}: {why}; a masked-LM head needs a decoder whose CausalLM is its base model plus an nn.Linear "
        "lm_head and whose attention honours is_causal=False (llama, qwen2, qwen3, mistral, gemma, phi3, olmo2, ...)"
    )


def _make_masked_class(config_class: type, config: PretrainedConfig) -> type:
    """Build and check `XForMaskedLM` for `config_class`; raises `_unsupported(...)` when it cannot be one."""
    model_type = getattr(config_class, "model_type", config_class.__name__)
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        native = MODEL_FOR_MASKED_LM_MAPPING_NAMES[model_type]
        raise ValueError(f"{model_type}: transformers has a masked LM for it ({native}); use AutoModelForMaskedLM")
    causal_class = _causal_lm_class(config_class)
    if causal_class is None:
        raise _unsupported(model_type, "AutoModelForCausalLM has no class for it")
    base_classes = _lookup(MODEL_MAPPING, config_class)
    base_classes = base_classes if isinstance(base_classes, tuple) else (base_classes,)
    base_classes = tuple(c for c in base_classes if isinstance(c, type))
    if not base_classes:
        raise _unsupported(model_type, "AutoModel has no base model for it")
    pretrained_class = next(
        (
            c
            for c in causal_class.__mro__[1:]
            if issubclass(c, PreTrainedModel) and c is not PreTrainedModel and issubclass(base_classes[0], c)
        ),
        None,
    )
    if pretrained_class is None:
        raise _unsupported(
            model_type, f"{causal_class.__name__} and {base_classes[0].__name__} share no PreTrainedModel"
        )

    # Structure, read off an instance on the meta device (nothing allocated): base model + lm_head and nothing else.
    small = shrunk_config(config)
    try:
        with torch.device("meta"):
            causal = causal_class(small if small is not None else config_class() if config is config_class else config)
    except Exception as error:
        raise _unsupported(model_type, f"{causal_class.__name__} cannot be built ({type(error).__name__})") from None
    children = dict(causal.named_children())
    attribute = next((n for n, m in children.items() if isinstance(m, base_classes)), None)
    head = children.get("lm_head")
    others = sorted(n for n, m in children.items() if n not in (attribute, "lm_head") and any(m.state_dict()))
    if attribute is None or not isinstance(head, nn.Linear) or others:
        raise _unsupported(
            model_type,
            f"{causal_class.__name__} is not base model + lm_head (its submodules: {', '.join(children) or 'none'})",
        )
    sizes = (getattr(causal.config, "hidden_size", None), getattr(causal.config, "vocab_size", None))
    if (head.in_features, head.out_features) != sizes:
        raise _unsupported(
            model_type,
            f"{causal_class.__name__}.lm_head maps {head.in_features}->{head.out_features}, not hidden_size->vocab_size",
        )
    base_class = type(children[attribute])

    namespace = {
        "__module__": __name__,
        "__qualname__": _masked_class_name(config_class),
        "__doc__": (
            f"{causal_class.__name__}'s backbone and lm_head with bidirectional attention and a masked-LM loss "
            f"(built by hf_pretrain's masked_decoder_class; see MaskedDecoderMixin)."
        ),
        "config_class": config_class,
        "_base_model_class": base_class,
        "_decoder_attribute": attribute,
        "_lm_head_bias": head.bias is not None,
        "_causal_lm_class_name": causal_class.__name__,
        "_base_takes_use_cache": "use_cache" in inspect.signature(base_class.forward).parameters,
        "_auto_class": "AutoModelForMaskedLM",  # save_pretrained writes auto_map and copies this file
    }
    for name in _CAUSAL_LM_ATTRIBUTES:
        if name in vars(causal_class):
            namespace[name] = vars(causal_class)[name]
    # transformers decides these by reading the class's module source, which here is this file, not the
    # architecture's: give the answers for the architecture's own module.
    namespace["_can_set_attn_implementation_cached_value"] = causal_class._can_set_attn_implementation()
    namespace["_can_set_experts_implementation_cached_value"] = causal_class._can_set_experts_implementation()
    masked_class = type(_masked_class_name(config_class), (MaskedDecoderMixin, pretrained_class), namespace)
    if small is not None:
        _check_masked_class(masked_class, causal_class, small, model_type)
    return masked_class


def _check_masked_class(masked_class: type, causal_class: type, small: PretrainedConfig, model_type: str) -> None:
    """On a 2-layer copy: the masked head must reproduce the CausalLM's logits (causal mode), and the attention
    must be bidirectional under is_causal=False and causal otherwise, in eager and sdpa. Raises `_unsupported`."""
    with _tiny_compute():
        _compare_on_tiny_copy(masked_class, causal_class, small, model_type)


def _compare_on_tiny_copy(masked_class: type, causal_class: type, small: PretrainedConfig, model_type: str) -> None:
    causal = _build_tiny(causal_class, small)
    if causal is None:
        return  # the CausalLM itself cannot be built small: nothing to compare with
    try:
        reference = _outputs(set_bidirectional(causal, False), _probe_ids(small.vocab_size))
    except Exception:
        return  # nor run small (fields we cannot shrink consistently)
    masked = masked_class.from_causal_lm(causal).eval()
    for implementation in _implementations(masked):
        try:
            logits = _outputs(set_bidirectional(masked, False), _probe_ids(small.vocab_size))
            leak, reach = _direction(masked, small.vocab_size)
        except Exception as error:
            raise _unsupported(model_type, f"the masked LM fails to run ({type(error).__name__}: {error})") from None
        difference = float((logits - reference).abs().max())
        if not math.isclose(difference, 0.0, abs_tol=1e-5):
            raise _unsupported(
                model_type,
                f"{causal_class.__name__} computes more than lm_head(hidden_states) (logits differ by {difference:.3g};"
                " logit_scale, logits_scaling and final_logit_softcapping are what is reproduced)",
            )
        if leak > _TOLERANCE or reach <= _TOLERANCE:
            raise _unsupported(
                model_type,
                f"its token mixing ignores is_causal under attn_implementation={implementation!r} (a change of the last "
                f"token moves earlier positions by {leak:.3g} in causal mode and the first by {reach:.3g} in "
                "bidirectional mode)",
            )


def masked_decoder_class(config: PretrainedConfig | type[PretrainedConfig]) -> type:
    """`XForMaskedLM` for the architecture of `config` (a config or a config class): cached per config class.

    Llama gets `LlamaForMaskedLM`. Any other architecture whose `XForCausalLM` is its base model plus an
    `nn.Linear` lm_head gets a class built on its own `XPreTrainedModel` and base model (`MaskedDecoderMixin`),
    named after the config class (`Qwen2Config` -> `Qwen2ForMaskedLM`) and reachable as an attribute of this module
    (which is what a saved checkpoint's `auto_map` names). The class is checked on a 2-layer copy first (its
    causal-mode logits equal the CausalLM's; its attention is bidirectional under is_causal=False and causal
    otherwise); raises a one-line ValueError naming the model type and what is missing when it cannot be a masked LM.

    >>> from transformers import Qwen2Config
    >>> cls = masked_decoder_class(Qwen2Config)
    >>> cls.__name__, cls.__mro__[2].__name__, cls._causal_lm_class_name
    ('Qwen2ForMaskedLM', 'Qwen2PreTrainedModel', 'Qwen2ForCausalLM')
    """
    config_class = config if isinstance(config, type) else type(config)
    if config_class in _MASKED_CLASSES:
        return _MASKED_CLASSES[config_class]
    if config_class in _UNSUPPORTED:
        raise ValueError(_UNSUPPORTED[config_class])
    try:
        masked_class = _make_masked_class(config_class, config)
    except ValueError as error:
        _UNSUPPORTED[config_class] = str(error)
        raise
    except Exception as error:  # an architecture unlike any we read (composite configs, ...): one line, not a trace
        model_type = getattr(config_class, "model_type", config_class.__name__)
        _UNSUPPORTED[config_class] = str(_unsupported(model_type, f"{type(error).__name__}: {error}"))
        raise ValueError(_UNSUPPORTED[config_class]) from error
    _MASKED_CLASSES[config_class] = masked_class
    globals()[masked_class.__name__] = masked_class  # importable by name (pickle, auto_map)
    return masked_class


def register_masked_decoder(config: PretrainedConfig | type[PretrainedConfig]) -> type:
    """Register `masked_decoder_class(config)` with `AutoModelForMaskedLM` for that config class, and for
    `save_pretrained`'s `auto_map` (which then copies this file next to the weights for `trust_remote_code=True`
    users); returns the class. Idempotent. `AutoModelForCausalLM` keeps building the CausalLM."""
    masked_class = masked_decoder_class(config)
    AutoModelForMaskedLM.register(masked_class.config_class, masked_class, exist_ok=True)
    masked_class.register_for_auto_class("AutoModelForMaskedLM")
    return masked_class


def register_masked_llama() -> None:
    """Register `LlamaForMaskedLM` with `AutoModelForMaskedLM` (for `LlamaConfig`) and for `save_pretrained`'s
    `auto_map`. Idempotent. Only `AutoModelForMaskedLM`'s mapping changes: `AutoModelForCausalLM` still builds
    `LlamaForCausalLM`."""
    register_masked_decoder(LlamaConfig)


def __getattr__(name: str) -> type:
    """`XForMaskedLM` on first access (PEP 562): how `auto_map`'s `modeling_masked_llama.Qwen2ForMaskedLM` resolves
    in a process that has not built it, such as a `trust_remote_code=True` load of this file."""
    config_class = (
        _config_class_named(name.removesuffix("ForMaskedLM") + "Config") if name.endswith("ForMaskedLM") else None
    )
    if config_class is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return masked_decoder_class(config_class)
    except ValueError as error:
        raise AttributeError(f"module {__name__!r} cannot build {name}: {error}") from None
