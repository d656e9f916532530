"""Whether a run keeps the documents of its packed blocks apart (`document_attention`), decided once, by a probe.

`document_attention: isolated` (the default) makes every document of a packed block attend only to itself:
positions restart per document, no token is predicted from another document, masked tokens are filled from their
own document alone, as each document is seen at inference. The blocks' `document_lengths` reach the collators,
which send compact per-token columns; `PretrainingTrainer` builds the mask on the device
(`hf_pretrain.training.document_mask`). `shared` is the older packing, documents attending to each other.

The resolve step asks `resolve_document_attention` before any data is read: every phase of the objective is run on
a shrunk copy of the model (same family, attention implementation, direction and masked-LM head; 1–3 layers,
hidden size 32) by `supports_document_mask`, which measures that the documents of a packed row do not see each
other and score as they do alone. An isolated run on a model that fails stops there, naming the reason; the
trainer probes the real model again at its first step and after every switch of attention.
"""

from __future__ import annotations

import logging

import torch

from hf_pretrain.model_families import ENCODER_DECODER, family_of
from hf_pretrain.modeling_masked_llama import shrunk_config
from hf_pretrain.models import build_model
from hf_pretrain.training.attention import set_direction
from hf_pretrain.training.distributed import outside_zero3
from hf_pretrain.training.document_mask import supports_document_mask

logger = logging.getLogger(__name__)

ISOLATED, SHARED = "isolated", "shared"


def isolation_problem(config, spec, attn_implementation: str) -> str | None:
    """Why the documents of this model's packed rows cannot be kept apart in some phase of `spec`, or None."""
    if family_of(config).kind == ENCODER_DECODER:
        return (
            f"{config.model_type} is an encoder-decoder: its encoder, decoder and cross-attention would each need "
            "the documents of a row, which is not built"
        )
    small = shrunk_config(config)
    if small is None:
        return f"no small {config.model_type} model could be built to probe it"
    for phase in spec.phases:
        with torch.random.fork_rng(devices=[]), outside_zero3():  # whole, not partitioned; the run's seed stays put
            torch.manual_seed(0)
            model = build_model(small, attn_implementation=attn_implementation, masked_decoder=phase.masked_lm)
        set_direction(model, phase.attention)
        causal = phase.attention != "bidirectional"  # prefix phases: a causal model with a bidirectional prefix
        supported = supports_document_mask(model, causal=causal)
        if supported is not True:
            return f"in the {phase.label or phase.name} phase, {supported}"
    return None


def resolve_document_attention(requested: str, config, spec, attn_implementation: str, deepspeed_config=None) -> str:
    """`requested` ("isolated" or "shared") once checked: raises a ValueError naming the field when the model
    cannot isolate documents under `attn_implementation`. `deepspeed_config`: the run's HfTrainerDeepSpeedConfig
    (`training_args.hf_deepspeed_config`), restored after the probe model is built outside ZeRO-3."""
    if requested == SHARED:
        logger.info("document_attention: shared: the documents of a packed block attend to each other.")
        return SHARED
    problem = isolation_problem(config, spec, attn_implementation)
    if problem is not None:
        raise ValueError(
            f"document_attention: isolated is not possible for {config.model_type} with attn_implementation="
            f"{attn_implementation!r}: {problem}. Set document_attention: shared (documents of a block then attend "
            "to each other), or choose an attention implementation that takes a 4D mask (sdpa, eager)."
        )
    return ISOLATED
