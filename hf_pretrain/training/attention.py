"""Attention direction, enforced and checked: a phase that trains causally runs causal, a bidirectional phase
bidirectional, and a prefix phase with a 4D mask in the form the model's attention implementation consumes.

A saved config can say anything (`is_causal: false` from a masked checkpoint, a mask built for sdpa handed to
eager attention), so nothing here is assumed: `set_direction` puts the model in the phase's direction and
`probe_attention` measures it. The probe changes the last token of a short input: under causal attention no
earlier position may move; under bidirectional attention the first position must move. For a prefix phase it
builds the mask the run really feeds the model: the collators' worker mask (`prefix_lm_attention_mask`, in the
resolved format), or, when the collator sends `document_ids` and `prefix_mask` instead (`attention_on_device`),
the mask `isolate_documents` builds from them on the device; then it checks both halves: no position sees the
last target token, and the first position sees the last prefix token. A decoder trained with span corruption or
UL2 (phase attention "encoder_decoder", decoder-only collators) reads its inputs as such a prefix: it is probed as
a prefix LM.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hf_pretrain.collators import prefix_lm_attention_mask
from hf_pretrain.model_families import DECODER, family_of
from hf_pretrain.modeling_masked_llama import set_bidirectional
from hf_pretrain.training.document_mask import DOCUMENT_IDS, PREFIX_MASK, isolate_documents

PROBE_LENGTH = 8
_TOLERANCE = 1e-6  # a masked-out key contributes exactly 0 to softmax; anything above this is a leak


def _decoder_config(model):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def is_bidirectional(model) -> bool:
    return getattr(_decoder_config(model), "is_causal", True) is False


def mask_collator(collator):
    """The collator that decides a run's prefix masks (the one with `attn_implementation`), looked for through
    wrappers (`.collator`); None when there is none (causal and masked LM)."""
    while collator is not None and not hasattr(collator, "attn_implementation"):
        collator = getattr(collator, "collator", None)
    return collator


def set_direction(model, attention: str) -> None:
    """Make a decoder causal ("causal", "prefix": the prefix comes from the 4D mask) or bidirectional. An encoder is
    bidirectional by construction and an encoder-decoder has its own masks: nothing to set (the probe still checks)."""
    if attention == "encoder_decoder" or family_of(_decoder_config(model)).kind != DECODER:
        return
    if (attention == "bidirectional") != is_bidirectional(model):
        set_bidirectional(model, attention == "bidirectional")


def _probe_ids(model) -> torch.Tensor:
    vocab = _decoder_config(model).vocab_size
    ids = (torch.arange(PROBE_LENGTH) * 7 + 3) % max(vocab - 1, 1)  # deterministic: no RNG drawn, resume stays exact
    return ids[None, :]  # (1, T)


def _to(value, device):
    if isinstance(value, Mapping):  # per-layer-type masks (sliding-window models)
        return {key: mask.to(device) for key, mask in value.items()}
    return value.to(device)


@torch.no_grad()
def _logits(model, ids: torch.Tensor, attention_mask=None, position_ids=None) -> torch.Tensor:
    device = next(model.parameters()).device
    kwargs = {"input_ids": ids.to(device)}
    if attention_mask is not None:
        kwargs["attention_mask"] = _to(attention_mask, device)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids.to(device)
    return model(**kwargs).logits.float()  # (1, T, V): no labels, so masked LMs return dense logits too


def _moved(model, ids: torch.Tensor, position: int, mask=None, position_ids=None) -> torch.Tensor:
    """Max |change| of the logits at each position when token `position` changes: (T,)."""
    changed = ids.clone()
    changed[0, position] = (changed[0, position] + 1) % max(_decoder_config(model).vocab_size - 1, 1)
    before, after = _logits(model, ids, mask, position_ids), _logits(model, changed, mask, position_ids)
    return (before - after).abs().amax(-1)[0]


def _prefix_inputs(model, ids: torch.Tensor, prefix: int, implementation: str | None, on_device: bool):
    """(attention_mask, position_ids) of a one-row prefix-LM batch, in the form the run feeds the model."""
    length = ids.shape[1]
    if not on_device:  # the collator's worker mask
        return prefix_lm_attention_mask([length], [prefix], length, implementation or "sdpa"), None
    config = _decoder_config(model)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        DOCUMENT_IDS: torch.zeros_like(ids),  # (1, T): one document
        PREFIX_MASK: (torch.arange(length) < prefix)[None, :],  # (1, T)
    }
    inputs = isolate_documents(
        batch,
        causal=True,
        implementation=implementation or getattr(config, "_attn_implementation", None) or "sdpa",
        dtype=next(model.parameters()).dtype,
        config=config,
    )
    return inputs["attention_mask"], inputs["position_ids"]


def probe_attention(
    model, attention: str, attn_implementation: str | None = None, on_device: bool = False
) -> dict[str, float]:
    """Measure the model's attention direction and raise when it is not `attention`; returns what was measured.

    A prefix phase (and "encoder_decoder" on a decoder) is probed with the worker's 4D mask, or with `on_device`
    the mask the trainer builds from `document_ids` and `prefix_mask` (`isolate_documents`), both in
    `attn_implementation`'s format. Runs in eval mode without gradients and restores the training mode; draws no
    random numbers.
    """
    if attention == "encoder_decoder":
        if family_of(_decoder_config(model)).kind != DECODER:
            return {}
        attention = "prefix"  # decoder-only span corruption / UL2: the inputs are a bidirectional prefix
    was_training = model.training
    model.eval()
    try:
        ids = _probe_ids(model)
        if attention == "prefix":
            prefix = PROBE_LENGTH // 2
            mask, positions = _prefix_inputs(model, ids, prefix, attn_implementation, on_device)
            leak = float(_moved(model, ids, PROBE_LENGTH - 1, mask, positions)[:-1].max())
            seen = float(_moved(model, ids, prefix - 1, mask, positions)[0])
            measured = {"future_leak": leak, "prefix_reach": seen}
            if leak > _TOLERANCE or seen <= _TOLERANCE:
                form = "device-built (document_ids + prefix_mask)" if on_device else "collator's 4D"
                raise RuntimeError(
                    f"The {form} prefix-LM mask does not act as one under attn_implementation="
                    f"{attn_implementation!r}: a change of the last token moves earlier logits by {leak:.3g} (must "
                    f"be 0), a change of the last prefix token moves the first position by {seen:.3g} (must be > "
                    "0). The mask format does not match the attention implementation."
                )
            return measured
        moved = float(_moved(model, ids, PROBE_LENGTH - 1)[0])
        if attention == "causal" and moved > _TOLERANCE:
            raise RuntimeError(
                f"{type(model).__name__} should be causal, but changing the last token moves the first position's "
                f"logits by {moved:.3g}: its attention is bidirectional (is_causal={getattr(_decoder_config(model), 'is_causal', None)})."
            )
        if attention == "bidirectional" and moved <= _TOLERANCE:
            raise RuntimeError(
                f"{type(model).__name__} should be bidirectional, but the first position does not see the last "
                "token: this architecture ignores is_causal=False; use an encoder or a decoder that honours it."
            )
        return {"first_position_moved": moved}
    finally:
        model.train(was_training)
