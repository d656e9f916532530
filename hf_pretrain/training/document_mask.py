"""Document isolation in packed blocks: the attention mask built on the device at the step, not in the DataLoader.

A packed block (B, T) holds several documents per row. The collators mark them with `document_ids` (B, T) int64
(0, 1, 2, ... per row, -1 at padding) and restart `position_ids` (B, T) at each document; without more, every
token attends across the document boundaries of its row ("shared attention"). `isolate_documents` turns such a
batch into model inputs whose `attention_mask` is block-diagonal by document, causal or bidirectional as the phase
trains, in the form the model's attention implementation consumes. Prefix-LM batches (decoder-only prefix LM, span
corruption and UL2 with `attention_on_device=True`) also carry `prefix_mask` (B, T) bool: their mask is causal
plus bidirectional among the prefix tokens of each document (`hf_pretrain.attention_masks`), probed in that form
by `supports_document_mask(..., prefix=True)`.

- "eager" adds the mask to the scores: an additive float mask (0 / finfo(dtype).min) of shape (B, 1, T, T). A
  boolean mask there would be added as 0/1 and mask nothing.
- "sdpa" takes a boolean mask (B, 1, T, T), True = attend.
- "flex_attention" takes torch's BlockMask, built from the same (B, T) key ranges by a mask_mod, with nothing of
  size (T, T) (`attention_masks.document_block_mask`). Measured by the probe through transformers' compiled flex
  path (forward, CPU): Llama, Qwen2 (also with a prefix), BERT and RoBERTa isolate; ModernBERT fails to compile
  there (an inductor C++ error, reported by the probe). torch 2.13 has no flex backward on CPU, so training with
  it is refused on CPU at resolve (`model_families.resolve_attention`); evaluation and GPU runs use it.
- "flash_attention_2"/"_3" take no mask at all: the batch gets the varlen kwargs of transformers' flash path
  instead (`flash_document_kwargs`): `cu_seq_lens_q/k` (S + 1,) int32 over the B·T flattened tokens, one segment
  per run of equal `document_ids` in a row (each document, and a row's padding as a segment of its own, so no real
  token ever sees a padded key, in either direction), `max_length_q/k` and position_ids restarting per segment;
  `attention_mask` is dropped. transformers (`_flash_attention_forward`) then calls `flash_attn_varlen_func` with
  them, causal or not as the attention module says. Position ids alone would not do: transformers infers packing
  from them only for a single row (`_is_packed_sequence` wants batch size 1). A prefix (prefix LM, UL2) cannot be
  expressed this way and is refused at resolve (`fast_paths`).

transformers 5.24 (`masking_utils._preprocess_mask_arguments`) hands a user-given 4D tensor (or BlockMask) to the
attention as is, for decoders (`create_causal_mask`: Llama, Qwen2, GPT-2, ...) and for encoders
(`create_bidirectional_mask`: BERT, RoBERTa, DistilBERT, ModernBERT, EuroBERT). The mask is therefore the whole
pattern: direction, documents and padding, all of it built here. Models with sliding-window layers (ModernBERT's
local layers, Qwen2 with `use_sliding_window`) would use the same 4D mask on every layer and silently lose the
window; given the config, `isolate_documents` passes the per-layer-type mapping {"full_attention": ...,
"sliding_attention": ...} that those models accept instead, with the window folded into the sliding layers' mask.

Padded query rows. transformers masks padding as keys only (`padding_mask_function`), so a padded query keeps the
real keys of its row; here padding is also cut off from every document, which would leave a padded query row with
no key at all: NaN under sdpa's softmax (all -inf), and the backward of a NaN is NaN even where the loss ignores
the position. So every query keeps its own key (the diagonal): real rows already have it, padded rows get exactly
that one, finite, key, and no real query ever sees a padded key.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hf_pretrain.attention_masks import (
    MASK_FORMATS,
    document_attention_mask,
    document_position_ids,
    unsupported_implementation,
)

__all__ = [
    "document_attention_mask",
    "document_position_ids",
    "flash_document_kwargs",
    "is_flash",
    "isolate_documents",
    "isolate_for_model",
    "position_offset",
    "supports_document_mask",
]

DOCUMENT_IDS = "document_ids"
PREFIX_MASK = "prefix_mask"
_TOLERANCE = 1e-5  # a masked-out key contributes exactly 0 after softmax; float32 kernel reorderings stay far below
# flash kernels compute in bf16 (eps 2^-7): a packed document and the same document alone run GEMMs of other shapes,
# whose roundings differ by a few bf16 ulps of the logits (_HALF_GAP). A leak is measured between two runs of the same
# shapes, where an untouched document's logits repeat bit for bit, so it keeps a tight bound (_HALF_LEAK): a kernel
# that drops cu_seq_lens moved them by 0.065 on a tiny Llama (tests/test_fast_paths.py). Not yet measured on a GPU.
_HALF_GAP = 5e-2
_HALF_LEAK = 1e-3


# Families whose position embeddings number tokens from padding_idx + 1 (create_position_ids_from_input_ids): a
# document's own positions there are pad_token_id + 1 + (0, 1, ...), not (0, 1, ...).
_PADDING_OFFSET_POSITIONS = (
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "roberta-prelayernorm",
    "data2vec-text",
)


def position_offset(config) -> int:
    """What the model adds to 0-based positions of its own: pad_token_id + 1 for RoBERTa-style embeddings, else 0."""
    if config is None or getattr(config, "model_type", None) not in _PADDING_OFFSET_POSITIONS:
        return 0
    return (getattr(config, "pad_token_id", None) or 0) + 1


def _sliding_window(config) -> int | None:
    """The window of a config whose layers include sliding-attention ones (and which takes a per-type mapping)."""
    if config is None or "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        return None
    return getattr(config, "sliding_window", None)


def is_flash(implementation: str | None) -> bool:
    """Whether `implementation` is a flash-attention kernel (flash_attention_2/_3, a hub kernel of flash-attn)."""
    return implementation is not None and "flash" in implementation


def flash_document_kwargs(document_ids: torch.Tensor) -> dict:
    """The varlen kwargs that keep the documents of (B, T) `document_ids` apart under flash attention.

    Segments are the runs of equal ids within each row (a new segment at every row start and id change), numbered
    over the flattened B·T tokens as transformers' flash path flattens q/k/v (`reshape(-1, heads, dim)`):

    >>> kwargs = flash_document_kwargs(torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, 0, 0]]))
    >>> kwargs["cu_seq_lens_q"].tolist(), kwargs["max_length_q"], kwargs["position_ids"].tolist()
    ([0, 3, 5, 6, 12], 6, [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    """
    starts = torch.ones_like(document_ids, dtype=torch.bool)  # (B, T): the first token of each segment
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    flat_starts = starts.reshape(-1).nonzero().reshape(-1)  # (S,) flat index of each segment start
    total = torch.tensor([document_ids.numel()], device=document_ids.device)
    cu_seq_lens = torch.cat([flat_starts, total]).to(torch.int32)  # (S + 1,)
    # One host sync per step: flash_attn wants the longest segment as a Python int (as DataCollatorWithFlattening
    # gives it), and it bounds the kernel's work.
    max_length = int(cu_seq_lens.diff().max())
    return {
        "position_ids": document_position_ids(document_ids),
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max_length,
        "max_length_k": max_length,
    }


def _isolate_for_flash(out: dict, document_ids: torch.Tensor, prefix_mask, offset: int) -> dict:
    if prefix_mask is not None:
        raise ValueError(
            "A prefix-LM batch (prefix_mask) cannot be isolated under flash attention: cu_seq_lens express whole "
            "documents only; use attn_implementation: sdpa (or flex_attention on GPU)."
        )
    kwargs = flash_document_kwargs(document_ids)
    computed = kwargs.pop("position_ids")
    positions = computed if out.get("position_ids") is None else out["position_ids"]  # the collator's, if given
    out.pop("attention_mask", None)  # padding is a segment of its own; flash would otherwise unpad by the mask
    out.update(kwargs, position_ids=positions + offset if offset else positions)
    return out


def isolate_documents(
    inputs: Mapping,
    *,
    causal: bool,
    implementation: str,
    dtype: torch.dtype | None = None,
    config=None,
) -> Mapping:
    """The model inputs of a batch whose packed rows carry `document_ids`: the document mask as `attention_mask`.

    `document_ids` is removed (no model takes it), `position_ids` kept (computed from `document_ids` when the batch
    has none: the positions must restart per document, or a document sees other positions than when it runs alone),
    every other key passed through. A batch without `document_ids` is returned unchanged (the same object).

    `config` (the model's text config) shifts position_ids to the model's own numbering (`position_offset`:
    RoBERTa-style embeddings start at pad_token_id + 1), and when its `layer_types` include "sliding_attention", makes the mask a
    mapping {"full_attention": mask, "sliding_attention": windowed mask}, which those models (Qwen2, ModernBERT,
    Gemma, ...) take instead of one 4D mask that would drop the window.

    Flash attention (`is_flash(implementation)`) gets no mask: `attention_mask` is dropped and the varlen kwargs
    of `flash_document_kwargs` (cu_seq_lens_q/k, max_length_q/k) are added; the direction is the model's own.

    Raises a ValueError when `implementation` cannot take a 4D mask nor varlen kwargs, when a flash batch has a
    prefix_mask, or when the batch already holds a 4D mask (a prefix-LM mask: combining the two is not done here).
    """
    if DOCUMENT_IDS not in inputs:
        return inputs
    if implementation not in MASK_FORMATS and not is_flash(implementation):
        raise unsupported_implementation(implementation)
    out = dict(inputs)
    document_ids = out.pop(DOCUMENT_IDS)
    prefix_mask = out.pop(PREFIX_MASK, None)  # (B, T) bool: bidirectional prefixes (prefix-LM, decoder-only T5)
    padding = out.get("attention_mask")
    if padding is not None and (isinstance(padding, Mapping) or padding.dim() != 2):
        raise ValueError("The batch carries document_ids and a 4D attention_mask already; give one or the other.")
    if is_flash(implementation):
        return _isolate_for_flash(out, document_ids, prefix_mask, position_offset(config))
    if out.get("position_ids") is None:
        out["position_ids"] = document_position_ids(document_ids)
    if offset := position_offset(config):  # the collators emit 0-based positions; RoBERTa's own start at pad + 1
        out["position_ids"] = out["position_ids"] + offset

    def build(window):
        return document_attention_mask(
            document_ids,
            padding,
            causal=causal,
            implementation=implementation,
            dtype=dtype,
            sliding_window=window,
            prefix_mask=prefix_mask,
        )

    window = _sliding_window(config)
    out["attention_mask"] = (
        build(None) if window is None else {"full_attention": build(None), "sliding_attention": build(window)}
    )
    return out


# ---- the probe ---------------------------------------------------------------------------------------------------

# Two documents and padding in one row of 8: [d0 d0 d0 | d1 d1 d1 | pad pad].
_PROBE_DOCUMENTS = torch.tensor([[0, 0, 0, 1, 1, 1, -1, -1]])
_D0, _D1 = slice(0, 3), slice(3, 6)
# With `prefix`: the first two tokens of each document are its bidirectional prefix (prefix LM, decoder-only T5).
_PROBE_PREFIX = torch.tensor([[1, 1, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)
_PROBE_PREFIX_LENGTH = 2


def _text_config(model):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def isolate_for_model(inputs: Mapping, model, *, causal: bool) -> Mapping:
    """`isolate_documents` for `model`: in its attention implementation, compute dtype and position numbering."""
    config = _text_config(model)
    return isolate_documents(
        inputs, causal=causal, implementation=config._attn_implementation, dtype=model.dtype, config=config
    )


def _is_causal(model) -> bool:
    from hf_pretrain.model_families import DECODER, family_of

    config = _text_config(model)
    return family_of(config).kind == DECODER and getattr(config, "is_causal", True) is not False


@torch.no_grad()
def _outputs(model, ids, inputs: Mapping) -> torch.Tensor:
    """The model's logits (or hidden states) for `ids` with the other model inputs `inputs` (mask, positions,
    flash varlen kwargs), run in bf16 autocast when the model's attention is flash (flash_attn has no float32)."""
    device = next(model.parameters()).device
    kwargs = {key: _to(value, device) for key, value in inputs.items() if value is not None}
    flash = is_flash(getattr(_text_config(model), "_attn_implementation", None))
    half = flash and next(model.parameters()).dtype == torch.float32
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=half):
        out = model(input_ids=ids.to(device), **kwargs)
    logits = getattr(out, "logits", None)
    return (logits if logits is not None else out.last_hidden_state).float()  # (1, T, V) or (1, T, H)


def _to(mask, device):
    if isinstance(mask, Mapping):
        return {key: value.to(device) for key, value in mask.items()}
    return mask.to(device) if torch.is_tensor(mask) else mask  # max_length_q/k are ints


def _alone_mask(ids: torch.Tensor, implementation: str, prefix: bool) -> torch.Tensor | None:
    """The mask of one document run alone: padding-free (B, T) ones (none at all for flash), or with `prefix` the
    prefix-LM staircase the collators build in the worker (`prefix_lm_attention_mask`), an independent construction
    of the same rule."""
    if is_flash(implementation):
        return None
    if not prefix:
        return torch.ones_like(ids)
    from hf_pretrain.collators.prefix_lm import prefix_lm_attention_mask

    if MASK_FORMATS.get(implementation) != "block":
        return prefix_lm_attention_mask([ids.shape[1]], [_PROBE_PREFIX_LENGTH], ids.shape[1], implementation)
    from torch.nn.attention.flex_attention import create_block_mask

    dense = prefix_lm_attention_mask([ids.shape[1]], [_PROBE_PREFIX_LENGTH], ids.shape[1], "sdpa")[:, 0]  # (1, T, T)
    return create_block_mask(lambda b, h, q, kv: dense[b, q, kv], 1, None, ids.shape[1], ids.shape[1], device="cpu")


def supports_document_mask(model, causal: bool | None = None, prefix: bool = False) -> bool | str:
    """Whether feeding the document mask to THIS model (its attention implementation, in its direction) isolates
    documents: True, or a one-line reason why not (a str: compare `result is True`).

    Measured on one row [doc0 x3 | doc1 x3 | pad x2] with position_ids restarting per document, in eval mode without
    gradients, drawing no random numbers: changing a token of either document must not move the other's logits, a
    padding token must move nothing, and each document's logits must equal those of the document run alone (which
    also checks that attention within a document is kept, and that restarted position_ids are the model's own).
    `causal` defaults to the model's direction (a decoder unless its config says is_causal=False).

    `prefix=True` probes the mask of prefix-LM batches (decoder-only prefix LM, span corruption, UL2): causal plus
    a `prefix_mask` over each document's first two tokens; each document must then match the document run alone
    under the collators' own prefix-LM mask, so a device mask that dropped the prefix (or let it leak) is caught.
    """
    config = _text_config(model)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if is_flash(implementation) and next(model.parameters()).device.type == "cpu" and torch.cuda.is_available():
        import copy  # the resolve step's probe model is built on the CPU, where flash kernels do not run

        return supports_document_mask(copy.deepcopy(model).to("cuda"), causal=causal, prefix=prefix)
    causal = True if prefix else _is_causal(model) if causal is None else causal  # a prefix is causal + prefix_mask
    was_training = model.training
    model.eval()
    try:
        vocab = max(config.vocab_size - 1, 2)
        ids = ((torch.arange(8) * 7 + 3) % vocab)[None, :]  # (1, 8), deterministic
        documents = _PROBE_DOCUMENTS
        padding = (documents >= 0).long()
        positions = document_position_ids(documents)
        batch = {"input_ids": ids, "attention_mask": padding, "position_ids": positions, DOCUMENT_IDS: documents}
        if prefix:
            batch[PREFIX_MASK] = _PROBE_PREFIX
        try:
            dtype = next(model.parameters()).dtype
            inputs = isolate_documents(batch, causal=causal, implementation=implementation, dtype=dtype, config=config)
        except ValueError as error:
            return str(error)

        def run(tokens):
            return _outputs(model, tokens, {key: value for key, value in inputs.items() if key != "input_ids"})

        def changed(position):
            other = ids.clone()
            other[0, position] = (other[0, position] + 1) % vocab
            return run(other)

        try:
            base = run(ids)
        except Exception as error:  # a kernel or model that rejects the mask
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return f"{type(model).__name__} ({implementation}) rejects the mask: {type(error).__name__}: {first_line}"
        half = is_flash(implementation) or dtype != torch.float32
        leak_tolerance, gap_tolerance = (_HALF_LEAK, _HALF_GAP) if half else (_TOLERANCE, _TOLERANCE)
        if not torch.isfinite(base[0, :6]).all():
            return f"{type(model).__name__} ({implementation}): non-finite logits with the document mask."
        leaks = {
            "doc0->doc1": (changed(0) - base)[0, _D1].abs().max(),
            "doc1->doc0": (changed(5) - base)[0, _D0].abs().max(),
            "pad->docs": (changed(7) - base)[0, :6].abs().max(),
        }
        for name, leak in leaks.items():
            if leak > leak_tolerance:
                return f"{type(model).__name__} ({implementation}) leaks across documents ({name}: {float(leak):.3g})."
        for part in (_D0, _D1):
            alone_ids = ids[:, part]
            # the model's own positions: a model that numbers them otherwise (RoBERTa: from padding_idx + 1) shows here
            try:
                alone = _outputs(model, alone_ids, {"attention_mask": _alone_mask(alone_ids, implementation, prefix)})
            except Exception as error:  # a kernel that compiles for one shape and not another
                return f"{type(model).__name__} ({implementation}) fails on a lone document: {type(error).__name__}"
            gap = float((alone - base[:, part]).abs().max())
            if gap > gap_tolerance:
                return (
                    f"{type(model).__name__} ({implementation}): a packed document's logits differ from the document "
                    f"run alone by {gap:.3g} (positions or within-document attention not kept)."
                )
        return True
    finally:
        model.train(was_training)
