"""Masked language modelling for Llama-style decoders (the EuroBERT / arXiv 2507.00994 setup).

A Llama decoder trained with MLM: the same backbone and `lm_head` as `LlamaForCausalLM` (same parameter names, so a
CLM checkpoint loads into `LlamaForMaskedLM` and back with no missing or unexpected keys), bidirectional attention,
and an *unshifted* cross-entropy over the masked positions only.

How the switch to bidirectional attention works in transformers 5.x: `LlamaModel.forward` is wrapped by
`merge_with_config_defaults`, which reads `is_causal` from the call's kwargs or else from `config.is_causal`, writes
it to the config for the duration of the call and forwards it to every attention call. `create_causal_mask` then
builds a bidirectional mask (`create_bidirectional_mask`, padding still applied) when `config.is_causal` is False,
and the sdpa and flash kernels take `is_causal` from the kwarg, not from `self_attn.is_causal`. So
`config.is_causal = False` is what matters; `set_bidirectional` also flips each attention module's `is_causal`
attribute for code paths that read it directly.

This file is self-contained (it imports only torch and transformers): `save_pretrained` copies it next to the
weights, so the checkpoint loads on the Hub with `trust_remote_code=True`.

Loading a saved masked LM:

- locally, after `import hf_pretrain` (which calls `register_masked_llama()`):
  `AutoModelForMaskedLM.from_pretrained(path)`, or directly `LlamaForMaskedLM.from_pretrained(path)`;
- from the Hub, without hf_pretrain installed: `AutoModelForMaskedLM.from_pretrained(repo, trust_remote_code=True)`
  (the copied `modeling_masked_llama.py` is named in `config.json`'s `auto_map`).
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForMaskedLM, LlamaConfig, PretrainedConfig
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.llama.modeling_llama import LlamaModel, LlamaPreTrainedModel
from transformers.utils import can_return_tuple

__all__ = [
    "LlamaForMaskedLM",
    "masked_lm_accuracy",
    "masked_lm_loss",
    "packed_bidirectional_mask",
    "register_masked_llama",
    "set_bidirectional",
]

IGNORE_INDEX = -100  # = hf_pretrain.collators.IGNORE_INDEX; this file imports nothing of ours (trust_remote_code)


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
    row-major order (what `masked_lm_loss(sparse=True)` and `LlamaForMaskedLM` with `sparse_prediction` return).
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

    `position_ids` restart at 0 (any drop) at each document boundary. In causal mode the Llama backbone derives the
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
    """Switch a Llama-style decoder (CausalLM, MaskedLM, a bare LlamaModel, or a PEFT wrapper) between causal and
    bidirectional self-attention, in place; returns `model`.

    Sets `config.is_causal`, which drives both the mask (`create_causal_mask` falls back to a bidirectional padding
    mask) and the `is_causal` kwarg handed to the sdpa/flash kernels, and flips `is_causal` on the attention modules
    that share that config (what kernels read when no kwarg is given). Flipping the modules alone is not enough:
    eager attention would still get a causal mask.
    """
    config = _decoder_config(model)
    config.is_causal = not bidirectional
    for module in model.modules():
        if getattr(module, "config", None) is config and isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = not bidirectional
    return model


class LlamaForMaskedLM(LlamaPreTrainedModel):
    """A Llama decoder with bidirectional attention and a masked-language-modelling loss.

    Same modules and parameter names as `LlamaForCausalLM` (`model.*`, `lm_head.weight`), so checkpoints move between
    the two with no missing or unexpected keys. `config.is_causal` is set to False. The loss is an unshifted
    cross-entropy over the positions where `labels != -100`; with `config.sparse_prediction` (default True) the head
    runs only at those positions and `logits` is (M, V) for the M labeled tokens, in row-major order. Without labels
    `logits` is (B, T, V).

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

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        config.is_causal = False
        if not hasattr(config, "sparse_prediction"):
            config.sparse_prediction = True
        self.model = LlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        set_bidirectional(self, True)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, then config.json is made to say what the saved network is.

        A bidirectional model is saved without `is_causal: false`: this class is bidirectional by itself, and the
        flag in config.json would turn a *causal* class that reads the file (`AutoModelForCausalLM` on this folder)
        silently bidirectional. A model saved while causal (the CLM phase of CLM→MLM) is saved as the causal LM it
        is then: `LlamaForCausalLM`, `is_causal: true`.
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
            saved["architectures"] = ["LlamaForCausalLM"]
            saved.pop("auto_map", None)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(saved, handle, indent=2, sort_keys=True)
            handle.write("\n")

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    @classmethod
    def from_causal_lm(cls, causal_model: nn.Module) -> LlamaForMaskedLM:
        """A masked LM that wraps the very modules of `causal_model` (a `LlamaForCausalLM`): no copy, parameters shared.

        The config object is shared too, and it is switched to bidirectional attention (`set_bidirectional`), so
        `causal_model` becomes bidirectional as well: they are one network. This is for a run that trained with CLM,
        switched to MLM, and now saves the result as a masked LM (`save_pretrained` then writes this class and
        `is_causal: false`). Call `set_bidirectional(causal_model, False)` to get causal attention back.
        """
        if not (hasattr(causal_model, "model") and hasattr(causal_model, "lm_head")):
            raise TypeError(
                f"expected a LlamaForCausalLM-like model with .model and .lm_head, got {type(causal_model)}"
            )
        with torch.device("meta"):  # throwaway modules, replaced below: nothing is allocated
            masked = cls(causal_model.config)
        masked.model = causal_model.model
        masked.lm_head = causal_model.lm_head
        masked.train(causal_model.training)
        return set_bidirectional(masked, True)

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
        kwargs.pop("use_cache", None)  # no KV cache for a bidirectional encoder
        is_causal = kwargs.get("is_causal", getattr(self.config, "is_causal", True))
        attn_implementation = self.config._attn_implementation
        packed = attention_mask is None and position_ids is not None and not is_causal
        if packed and attn_implementation in ("eager", "sdpa"):
            embeds = inputs_embeds if inputs_embeds is not None else self.model.embed_tokens.weight
            batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            dtype = embeds.dtype if attn_implementation == "eager" else None
            attention_mask = packed_bidirectional_mask(position_ids, dtype=dtype, batch_size=batch_size)

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state

        loss = None
        if labels is not None:
            loss, logits, _ = masked_lm_loss(
                hidden_states,
                self.lm_head,
                labels,
                sparse=bool(getattr(self.config, "sparse_prediction", True)),
                num_items_in_batch=num_items_in_batch,
            )
        else:
            logits = self.lm_head(hidden_states)

        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def register_masked_llama() -> None:
    """Register `LlamaForMaskedLM` with `AutoModelForMaskedLM` (for `LlamaConfig`) and for `save_pretrained`'s
    `auto_map`, which then copies this file next to the weights for `trust_remote_code=True` users.

    Idempotent. Only `AutoModelForMaskedLM`'s mapping changes: `AutoModelForCausalLM` still builds `LlamaForCausalLM`.
    """
    AutoModelForMaskedLM.register(LlamaConfig, LlamaForMaskedLM, exist_ok=True)
    LlamaForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
