"""Causal language modelling: labels are the inputs, ignored (-100) only where there is no real token.

transformers' `DataCollatorForLanguageModeling(mlm=False)` finds padding by comparing with the pad id, so when
pad == eos (the usual setup for GPT-style tokenizers) every real eos also becomes -100 and the model never learns
to end a document. Here padding comes from the lengths and the attention mask only.

Otherwise it is a drop-in for it in existing scripts: features may be dicts or plain sequences of token ids, keys
it does not use are padded or stacked and passed through, and `return_tensors="np"` returns numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from hf_pretrain.attention_masks import MASK_FORMATS, unsupported_implementation

from ._documents import check_attention_on_device, document_starts, isolate_in_batch
from ._features import (
    as_features,
    check_return_tensors,
    collate_packed,
    collate_padded,
    is_packed,
    to_return_tensors,
)
from ._padding import check_pad_to_multiple_of
from ._rows import IGNORE_INDEX

# Tokenizer outputs that are no model input and that causal LM has no use for; transformers' collator drops them too.
_DROPPED_KEYS = ("special_tokens_mask", "offset_mapping")


@dataclass
class DataCollatorForCausalLM:
    """Pad (or pack) features for causal language modelling; a drop-in `data_collator` / `collate_fn`.

    Padded mode returns `input_ids`, `attention_mask` and `labels` (B, T); labels equal the inputs except -100 at
    padding (positions beyond a feature's length, or where its given `attention_mask` is 0). Pre-packed blocks
    (documents joined by eos) pass through unchanged: their eos tokens stay labels. Features that carry their own
    `labels` keep them (padded with -100).

    Padding-free mode (`padding_free=True`) returns one row (1, N) in the convention of transformers'
    `DataCollatorWithFlattening(return_flash_attn_kwargs=True)`: `input_ids`, `labels`, `position_ids` restarting
    at 0 per document, `cu_seq_lens_q/k` (D + 1,) int32 and `max_length_q/k`. The first token of every document
    gets label -100 so no document is predicted from the one before it. (The model shifts labels by one, so that
    label would only be the target of the previous document's last position.)

    Features are dicts with `input_ids`, or plain sequences of token ids (lists, arrays, tensors). A tokenizer's
    `special_tokens_mask` and `offset_mapping` are dropped, as transformers' collator does. Every other key is
    passed through: per-token columns (as long as `input_ids`) padded like it, with the tokenizer's
    `pad_token_type_id` for `token_type_ids` and 0 otherwise, or flattened to (1, N) when padding-free; per-example
    values stacked to (B,), or (D,) one per document when padding-free.

    Packed blocks that carry `document_lengths` (piece lengths summing to the row length) get `position_ids`
    restarting at 0 per document and -100 at every document's first token (it is not predicted from the document
    before it), and their attention is kept inside each document (`_documents`) in the form `attention_on_device`
    asks for:

    * False (the default: any Trainer and model): with `attn_implementation=None`, no `attention_mask` at all;
      transformers' `create_causal_mask` detects the packed rows from the restarting `position_ids` and builds
      the block-diagonal causal mask itself (eager, sdpa). That detection runs only when the forward has no KV
      cache: `transformers.Trainer` sets `model.config.use_cache = TrainingArguments.use_cache` (False by
      default); in a loop of your own, pass `use_cache=False` or set `model.config.use_cache = False` (Llama's
      config defaults to True, and the documents would then see each other). Models that take no `position_ids`
      into their mask (Bloom) and flash attention with more than one row do not detect packing either: use
      `attn_implementation`, or `padding_free=True` for flash. A given `attention_mask` may only hide trailing
      tokens here. With `attn_implementation` ("sdpa": bool, "eager": additive float32), the finished
      (B, 1, T, T) causal document mask instead, whatever the cache or the model (B·T² entries per batch).
    * True (`PretrainingTrainer`, the recipe): `document_ids` (B, T) (0, 1, ... per row, -1 at padding) and the
      (B, T) `attention_mask`, for the trainer to build the mask on the device at the step; under flash attention
      it passes `cu_seq_lens_q/k` over the B·T tokens instead (`training.document_mask.flash_document_kwargs`),
      so flash isolates the documents of packed blocks of any batch size, with no mask.

    `return_tensors` is "pt" (torch tensors, the default) or "np" (numpy arrays), the container of every output
    (`__call__`, `collate`, `add_labels`); `__call__(features, return_tensors=...)` overrides it for one call.

    `__call__(features)` is `add_labels(collate(features))`.

    >>> from hf_pretrain.data.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["the quick brown fox", "jumps over the lazy dog"], vocab_size=300, num_sentinels=2)
    >>> tok.pad_token = tok.eos_token  # pad == eos: eos must stay a label
    >>> collator = DataCollatorForCausalLM(tok)
    >>> batch = collator([{"input_ids": [60, 61, 2]}, {"input_ids": [70, 2]}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[60, 61, 2], [70, 2, 2]], [[60, 61, 2], [70, 2, -100]])
    >>> packed = DataCollatorForCausalLM(tok, padding_free=True)([{"input_ids": [60, 61, 2]}, {"input_ids": [70, 2]}])
    >>> packed["labels"].tolist(), packed["position_ids"].tolist(), packed["cu_seq_lens_q"].tolist()
    ([[-100, 61, 2, -100, 2]], [[0, 1, 2, 0, 1]], [0, 3, 5])
    >>> blocks = [{"input_ids": [60, 2, 70, 71, 2], "document_lengths": [2, 3]},
    ...           {"input_ids": [72, 2], "document_lengths": [2]}]
    >>> block = collator(blocks)  # 70 is not predicted from the first document
    >>> block["labels"].tolist()
    [[60, 2, -100, 71, 2], [72, 2, -100, -100, -100]]
    >>> sorted(block), block["position_ids"].tolist()  # padding: positions continue the last document
    (['input_ids', 'labels', 'position_ids'], [[0, 1, 0, 1, 2], [0, 1, 2, 3, 4]])
    >>> on_device = DataCollatorForCausalLM(tok, attention_on_device=True)(blocks)
    >>> on_device["document_ids"].tolist(), on_device["attention_mask"].tolist()
    ([[0, 0, 1, 1, 1], [0, 0, -1, -1, -1]], [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    >>> DataCollatorForCausalLM(tok, attn_implementation="sdpa")(blocks)["attention_mask"][0, 0].int().tolist()
    [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    >>> batch = DataCollatorForCausalLM(tok, return_tensors="np")([[60, 61, 2], [70, 2]])  # plain lists of ids
    >>> type(batch["labels"]).__name__, batch["labels"].tolist()
    ('ndarray', [[60, 61, 2], [70, 2, -100]])
    """

    tokenizer: PreTrainedTokenizerBase | None = None
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    attention_on_device: bool = False
    attn_implementation: str | None = None

    def __post_init__(self):
        check_return_tensors(self.return_tensors)
        check_attention_on_device(self.attention_on_device)
        implementation = self.attn_implementation
        if implementation is not None and not self.padding_free and implementation not in MASK_FORMATS:
            raise unsupported_implementation(implementation)
        check_pad_to_multiple_of(self.pad_to_multiple_of, self.padding_free)
        if not self.padding_free and (self.tokenizer is None or self.tokenizer.pad_token_id is None):
            raise ValueError(
                "Padded causal LM needs a tokenizer with a pad token (tokenizer.pad_token); set one (e.g. "
                "tokenizer.pad_token = tokenizer.eos_token: labels never depend on the pad id) or use "
                "padding_free=True."
            )

    def __call__(self, features: Sequence, return_tensors: str | None = None) -> dict:
        if return_tensors is not None:
            check_return_tensors(return_tensors)
        return to_return_tensors(self._add_labels(self._collate(features)), return_tensors or self.return_tensors)

    def collate(self, features: Sequence) -> dict:
        """Pad (or pack) `input_ids` (and given `labels`, and the pass-through keys), without computing labels."""
        return to_return_tensors(self._collate(features), self.return_tensors)

    def _collate(self, features: Sequence) -> dict[str, torch.Tensor | int]:
        features = as_features(features)
        if self.padding_free:
            return collate_packed(features, optional=("labels",), exclude=_DROPPED_KEYS, documents=True)
        pad_type = int(getattr(self.tokenizer, "pad_token_type_id", 0) or 0)
        return collate_padded(
            features,
            self.tokenizer.pad_token_id,
            self.pad_to_multiple_of,
            optional={"labels": IGNORE_INDEX},
            pad_values={"token_type_ids": pad_type},
            exclude=_DROPPED_KEYS,
            documents=True,
        )

    def add_labels(self, batch: Mapping) -> dict:
        """Labels for a collated batch: the inputs (or the given labels), -100 at padding and at documents' first
        tokens (from `cu_seq_lens_q` padding-free, else from `document_ids` when the batch has them). Unless
        `attention_on_device`, `document_ids` then becomes the attention that isolates the documents (class
        docstring)."""
        return to_return_tensors(self._add_labels(batch), self.return_tensors)

    def _add_labels(self, batch: Mapping) -> dict[str, torch.Tensor | int]:
        batch = dict(batch)
        if "input_ids" not in batch:
            raise ValueError(f"The batch has no 'input_ids'; found keys {sorted(batch)}.")
        input_ids = torch.as_tensor(batch["input_ids"])
        labels = torch.as_tensor(batch["labels"]).clone() if "labels" in batch else input_ids.clone()  # (B, T)
        if is_packed(batch):
            starts = torch.as_tensor(batch["cu_seq_lens_q"])[:-1].long()  # (D,) flat index of each document start
            labels[0, starts[starts < labels.shape[1]]] = IGNORE_INDEX
        else:
            if "attention_mask" in batch:
                labels.masked_fill_(torch.as_tensor(batch["attention_mask"]) == 0, IGNORE_INDEX)
            if "document_ids" in batch:  # packed blocks: no document is predicted from the one before it
                labels.masked_fill_(torch.from_numpy(document_starts(batch["document_ids"])), IGNORE_INDEX)
        batch["labels"] = labels
        if "document_ids" in batch and not self.attention_on_device:
            isolate_in_batch(batch, causal=True, implementation=self.attn_implementation)
        return batch
