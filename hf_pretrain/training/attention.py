"""Attention direction, enforced and checked: a phase that trains causally runs causal, a bidirectional phase
bidirectional, and a prefix phase with a 4D mask in the form the model's attention implementation consumes.

A saved config can say anything (`is_causal: false` from a masked checkpoint, a mask built for sdpa handed to
eager attention), so nothing here is assumed: `set_direction` puts the model in the phase's direction and
`probe_attention` measures it. The probe changes the last token of a short input: under causal attention no
earlier position may move; under bidirectional attention the first position must move. For a 4D prefix mask it
builds the mask the collators build (`prefix_lm_attention_mask`, in the resolved format) and checks both halves:
no position sees the last target token, and the first position sees the last prefix token.
"""

from __future__ import annotations

import numpy as np
import torch

from hf_pretrain.collators import prefix_lm_attention_mask
from hf_pretrain.model_families import DECODER, family_of
from hf_pretrain.modeling_masked_llama import set_bidirectional

PROBE_LENGTH = 8
_TOLERANCE = 1e-6  # a masked-out key contributes exactly 0 to softmax; anything above this is a leak


def _decoder_config(model):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def is_bidirectional(model) -> bool:
    return getattr(_decoder_config(model), "is_causal", True) is False


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


@torch.no_grad()
def _logits(model, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    device = next(model.parameters()).device
    kwargs = {"input_ids": ids.to(device)}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(device)
    return model(**kwargs).logits.float()  # (1, T, V): no labels, so masked LMs return dense logits too


def _moved(model, ids: torch.Tensor, position: int, mask=None) -> torch.Tensor:
    """Max |change| of the logits at each position when token `position` changes: (T,)."""
    changed = ids.clone()
    changed[0, position] = (changed[0, position] + 1) % max(_decoder_config(model).vocab_size - 1, 1)
    return (_logits(model, ids, mask) - _logits(model, changed, mask)).abs().amax(-1)[0]


def probe_attention(model, attention: str, attn_implementation: str | None = None) -> dict[str, float]:
    """Measure the model's attention direction and raise when it is not `attention`; returns what was measured.

    Runs in eval mode without gradients and restores the training mode; draws no random numbers.
    """
    if attention == "encoder_decoder":
        return {}
    was_training = model.training
    model.eval()
    try:
        ids = _probe_ids(model)
        if attention == "prefix":
            prefix = PROBE_LENGTH // 2
            lengths, prefixes = np.array([PROBE_LENGTH]), np.array([prefix])
            mask = prefix_lm_attention_mask(lengths, prefixes, PROBE_LENGTH, attn_implementation or "sdpa")
            leak = float(_moved(model, ids, PROBE_LENGTH - 1, mask)[:-1].max())
            seen = float(_moved(model, ids, prefix - 1, mask)[0])
            measured = {"future_leak": leak, "prefix_reach": seen}
            if leak > _TOLERANCE or seen <= _TOLERANCE:
                raise RuntimeError(
                    f"The prefix-LM mask does not act as one under attn_implementation={attn_implementation!r}: "
                    f"a change of the last token moves earlier logits by {leak:.3g} (must be 0), a change of the "
                    f"last prefix token moves the first position by {seen:.3g} (must be > 0). The collator's mask "
                    "format does not match the attention implementation."
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
