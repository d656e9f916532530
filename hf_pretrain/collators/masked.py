"""Masked language modelling (BERT-style 80/10/10) as a vectorized, reproducible data collator.

Compared with transformers' `DataCollatorForLanguageModeling(mlm=True)`: special tokens and padding are never
selected (the special test is one lookup-table gather, not a Python loop); random replacements come from the
non-special vocabulary only; whole-word masking keeps the 80/10/10 split and needs no offset mapping; an exact
count per sequence is available; padding-free (packed) batches are supported; and the masks are keyed by the
sample's tokens, so a sample gets the same mask in any batch, with any number of DataLoader workers.

It is a drop-in for it in existing scripts: features may be dicts or plain sequences of token ids, keys it does not
use (`token_type_ids`, `next_sentence_label`, ...) are padded or stacked and passed through, `special_tokens_mask`
and `offset_mapping` are consumed as there, and `return_tensors="np"` returns numpy arrays.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from hf_pretrain.attention_masks import MASK_FORMATS, unsupported_implementation

from ._documents import check_attention_on_device, isolate_in_batch
from ._features import (
    as_features,
    check_return_tensors,
    collate_packed,
    collate_padded,
    is_packed,
    packed_lengths,
    to_return_tensors,
    unpack,
)
from ._keyed import sample_keys
from ._mlm_draw import draw_masks, offset_word_ids, probability_value, row_rates, word_index
from ._padding import check_pad_to_multiple_of
from ._rows import IGNORE_INDEX
from ._shared import epoch_value, shared_scalar
from ._words import word_start_table

# Keys a collated batch carries for the masking transform only; `mask_tokens` removes them before the model sees it.
_TRANSFORM_KEYS = ("special_tokens_mask", "word_ids")
# Feature keys `collate` does not pass through: the masking makes the labels (as transformers' collator does), and
# a block's index only selects its masking rate.
_CONSUMED_KEYS = ("labels", "block_index")


def special_token_table(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """(V,) bool over the vocabulary, V = len(tokenizer): True for every special token (pad, bos, eos, unk, mask,
    sentinels, added tokens registered as special)."""
    table = np.zeros(len(tokenizer), dtype=bool)
    special = set(tokenizer.all_special_ids)
    special.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    table[[i for i in special if i is not None and 0 <= i < len(table)]] = True
    return table


@dataclass
class DataCollatorForMaskedLM:
    """Pad (or pack) features and mask tokens for masked language modelling; a drop-in `data_collator`/`collate_fn`.

    Each maskable token (not special, not padding, not marked in a given `special_tokens_mask`) is selected with
    probability `mlm_probability` (or, with `exact_count=True`, exactly `round(mlm_probability * maskable)` per
    sequence are). A selected position gets the label of its original id; every other label is -100. Its input
    becomes the mask token with probability `mask_replace_prob`, a random non-special token with probability
    `random_replace_prob`, and stays unchanged otherwise.

    Args:
        tokenizer: a tokenizer with a mask token, and a pad token unless `padding_free`.
        mlm_probability: selection rate. Settable during training (`collator.mlm_probability = 0.3`, or
            `MaskingRateCallback`): it lives in shared memory, so DataLoader worker processes use the new rate from
            their next batch on. Batches already prefetched keep the rate they were made with. A schedule
            installed with `set_masking_schedule` (as `MaskingRateCallback` does) wins for features that carry
            their global `block_index`: each row then gets the rate of its own step, exactly.
        mask_replace_prob, random_replace_prob: the 80/10/10 split of selected tokens.
        whole_word_mask: select whole words; the split is then drawn per word too (a word is masked, replaced
            token by token with random tokens, or kept, as a unit). Word boundaries come from a `word_ids` feature
            when present (`encoding.word_ids()` of a fast tokenizer; None marks special tokens, never selected),
            else from the vocabulary's word-start convention (byte-level `Ġ`, Metaspace `▁`, WordPiece `##`, as in
            BERT's original whole-word masking), else from an `offset_mapping` feature (transformers' rule: a token
            continues a word when it begins where the previous one ends). Special tokens and padding are always
            words of their own.
        exact_count: select exactly `round(mlm_probability * n)` per sequence (Python rounding, half to even),
            where n counts maskable tokens, or maskable words under `whole_word_mask`.
        padding_free: return one packed row (1, N) with `position_ids` and `cu_seq_lens_q/k`, `max_length_q/k`
            (transformers' `DataCollatorWithFlattening` convention) instead of a padded batch with
            `attention_mask`. Each document gets exactly the labels and inputs it gets in a padded batch.
        pad_to_multiple_of: round the padded length up to a multiple of this (padded mode only).
        seed: fixes the masks: a sample's mask is a function of (seed, epoch, its tokens) only, whatever the batch
            and worker count. None draws a fresh seed per call.
        epoch: mixed into the keys; bump it (`set_epoch`) so repeated data gets fresh masks. Shared like the rate.
        attention_on_device: documents of packed rows (`document_lengths`): False (default) isolates them in the
            batch itself; True leaves the compact `document_ids` for `PretrainingTrainer` (see below).
        attn_implementation: the format of the 4D document mask built when `attention_on_device` is False:
            "eager" (the default: additive float32, 0 / float32 min, which eager and sdpa both read correctly, as
            sdpa adds a float mask to its scores) or "sdpa" (bool, True = attend: 4x smaller, for sdpa models only;
            an eager model would add it to its scores as 0/1 and isolate nothing).
        return_tensors: "pt" (torch tensors, the default) or "np" (numpy arrays): the container of every output
            (`__call__`, `collate`, `mask_tokens`); the masks are the same. `__call__(features, return_tensors=...)`
            overrides it for one call, as in transformers.

    Features are dicts with `input_ids`, or plain sequences of token ids (lists, arrays, tensors). The keys the
    masking reads (`attention_mask` aside) never reach the model: `special_tokens_mask`, `word_ids` and
    `offset_mapping` (fast-tokenizer outputs; transformers pops the first and last too) and `block_index` (a block's
    global index, read by an installed masking schedule). Given `labels` are replaced by the masking labels, as in
    transformers. Every other key is passed through: per-token columns (as long as `input_ids`) padded like it,
    with the tokenizer's `pad_token_type_id` for `token_type_ids` and 0 otherwise; per-example values
    (`next_sentence_label`, `sentence_order_label`) stacked to (B,). Padding-free, per-token columns are flattened
    to (1, N) and per-example values stacked to (D,), one per document.

    Packed blocks that carry `document_lengths` (piece lengths summing to the row length; the key is consumed and
    the masks drawn are the same as without it) get `position_ids` (B, T) restarting at 0 per document, and
    attention kept inside each document (`_documents`): by default a finished (B, 1, T, T) `attention_mask` in
    the format of `attn_implementation`, which any Trainer can feed to the model as is; with
    `attention_on_device=True` (`PretrainingTrainer`) the compact `document_ids` (B, T) (0, 1, ... per row, -1 at
    padding) and the (B, T) padding mask instead, the 4D mask being built on the device at the step. Padding-free,
    each piece is a document of its own, masked as the piece alone would be (either mode).

    `__call__(features)` is `mask_tokens(collate(features))`; `collate` is the neutral padding step and
    `mask_tokens` the transform, usable on any already-collated batch (e.g. at the training step).

    >>> from hf_pretrain.data.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["the quick brown fox", "jumps over the lazy dog"], vocab_size=300, num_sentinels=2)
    >>> collator = DataCollatorForMaskedLM(tok, mlm_probability=0.5, seed=4)
    >>> features = [{"input_ids": [1, 60, 61, 62, 63, 64, 2]}, {"input_ids": [1, 70, 71, 2]}]
    >>> batch = collator(features)
    >>> sorted(batch)
    ['attention_mask', 'input_ids', 'labels']
    >>> batch["attention_mask"].tolist()
    [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]]
    >>> batch["labels"].tolist()  # bos (1), eos (2) and padding are never selected
    [[-100, 60, 61, -100, -100, 64, -100], [-100, 70, -100, -100, -100, -100, -100]]
    >>> batch["input_ids"].tolist()  # 61, 64 → mask (id 4); 70 → random 63; selected 60 stays unchanged
    [[1, 60, 4, 62, 63, 4, 2], [1, 63, 71, 2, 0, 0, 0]]
    >>> bool((collator([features[1]])["labels"] == batch["labels"][1:, :4]).all())  # same mask in any batch
    True

    Plain lists of ids, pass-through keys and numpy outputs:

    >>> nsp = DataCollatorForMaskedLM(tok, mlm_probability=0.5, seed=4, return_tensors="np")
    >>> batch = nsp([{**f, "token_type_ids": [0] * 4 + [1] * (len(f["input_ids"]) - 4), "next_sentence_label": i}
    ...              for i, f in enumerate(features)])
    >>> type(batch["input_ids"]).__name__, batch["token_type_ids"].tolist(), batch["next_sentence_label"].tolist()
    ('ndarray', [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]], [0, 1])
    >>> nsp([f["input_ids"] for f in features])["labels"].tolist() == batch["labels"].tolist()
    True

    A packed block of two documents [4, 3]: the batch keeps them apart itself, or leaves it to the trainer:

    >>> block = [{"input_ids": features[0]["input_ids"], "document_lengths": [4, 3]}]
    >>> own = collator(block)
    >>> own["position_ids"].tolist(), own["attention_mask"].shape, (own["attention_mask"][0, 0, 0] == 0).int().tolist()
    ([[0, 1, 2, 3, 0, 1, 2]], torch.Size([1, 1, 7, 7]), [1, 1, 1, 1, 0, 0, 0])
    >>> DataCollatorForMaskedLM(tok, seed=4, attention_on_device=True)(block)["document_ids"].tolist()
    [[0, 0, 0, 0, 1, 1, 1]]
    """

    tokenizer: PreTrainedTokenizerBase
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word_mask: bool = False
    exact_count: bool = False
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    epoch: int = 0
    return_tensors: str = "pt"
    attention_on_device: bool = False
    attn_implementation: str = "eager"  # the additive form: right under eager and sdpa alike
    allow_empty_masking: bool = True  # False (a run's collator): a batch whose masking selects no token is an error

    def __post_init__(self):
        check_return_tensors(self.return_tensors)
        check_attention_on_device(self.attention_on_device)
        if not self.padding_free and self.attn_implementation not in MASK_FORMATS:
            raise unsupported_implementation(self.attn_implementation)
        self.mask_replace_prob = probability_value("mask_replace_prob", self.mask_replace_prob)
        self.random_replace_prob = probability_value("random_replace_prob", self.random_replace_prob)
        if self.mask_replace_prob + self.random_replace_prob > 1 + 1e-12:
            raise ValueError(
                f"mask_replace_prob + random_replace_prob must not exceed 1, got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}."
            )
        if getattr(self.tokenizer, "mask_token_id", None) is None:
            raise ValueError("The tokenizer has no mask token (tokenizer.mask_token), which masked LM needs.")
        if not self.padding_free and self.tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has no pad token (tokenizer.pad_token); set one (e.g. tokenizer.pad_token = "
                "tokenizer.eos_token: labels never depend on the pad id) or use padding_free=True."
            )
        check_pad_to_multiple_of(self.pad_to_multiple_of, self.padding_free)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}.")
        self._mask_id = int(self.tokenizer.mask_token_id)
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._special = special_token_table(self.tokenizer)  # (V,) bool
        # Random replacements: ids of the non-special vocabulary (K,), indexed by a keyed random integer.
        self._replacements = np.flatnonzero(~self._special)  # (K,) int64
        if len(self._replacements) == 0 and self.random_replace_prob > 0:
            raise ValueError("random_replace_prob > 0 but the tokenizer has no non-special token to draw from.")
        self._word_starts = word_start_table(self.tokenizer) if self.whole_word_mask else None  # (V,) bool or None
        self._pad_values = {"token_type_ids": int(getattr(self.tokenizer, "pad_token_type_id", 0) or 0)}
        # offset_mapping gives words only without a vocabulary convention; otherwise it is dropped unread (its
        # (T, 2) Python tuples cost more to convert than the whole masking).
        offsets_unused = not self.whole_word_mask or self._word_starts is not None
        self._consumed = (*_CONSUMED_KEYS, "offset_mapping") if offsets_unused else _CONSUMED_KEYS

    def set_epoch(self, epoch: int) -> None:
        """Use the keys of `epoch` from the next batch on (seen by DataLoader workers too)."""
        self.epoch = epoch

    _masking_schedule = None  # (schedule, blocks_per_step) once installed

    def set_masking_schedule(self, schedule: Callable[[int], float] | None, blocks_per_step: int = 1) -> None:
        """Mask each row at `schedule(step)`, step = its feature's `block_index` // `blocks_per_step`.

        Install it before the DataLoader starts its workers (`MaskingRateCallback` does, at train begin); the
        schedule must be picklable for a spawned worker. Rows without a `block_index` use `mlm_probability`.
        """
        if blocks_per_step < 1:
            raise ValueError(f"blocks_per_step must be >= 1, got {blocks_per_step}.")
        self._masking_schedule = None if schedule is None else (schedule, int(blocks_per_step))

    def __call__(self, features: Sequence, return_tensors: str | None = None) -> dict:
        if return_tensors is not None:
            check_return_tensors(return_tensors)
        batch = self._mask_tokens(self._collate(features))
        if not self.allow_empty_masking and not bool((batch["labels"] != IGNORE_INDEX).any()):
            raise ValueError(
                f"The masking selected no token of a whole batch (mlm_probability={self.mlm_probability}): the step "
                "would train on nothing. Raise mlm_probability, or set allow_degenerate: true to accept such batches."
            )
        return to_return_tensors(batch, return_tensors or self.return_tensors)

    # ----------------------------------------------------------------------------------------------------------
    # Neutral step: features → tensors.
    # ----------------------------------------------------------------------------------------------------------

    def collate(self, features: Sequence) -> dict:
        """Pad (or pack) the features. Adds `special_tokens_mask` (bool, the given one OR the vocabulary's special
        tokens) and, when the features have them, `word_ids`, `offset_mapping` (when it gives the words) and (with a
        masking schedule) `block_index` (B,); `mask_tokens` consumes them. Other keys pass through (see the class docstring)."""
        return to_return_tensors(self._collate(features), self.return_tensors)

    def _collate(self, features: Sequence) -> dict[str, torch.Tensor | int]:
        features = as_features(features)
        if self.padding_free:
            batch = collate_packed(features, optional=_TRANSFORM_KEYS, exclude=self._consumed, documents=True)
        else:
            batch = collate_padded(
                features,
                self._pad_id,
                self.pad_to_multiple_of,
                optional={"special_tokens_mask": 1, "word_ids": -1},
                pad_values=self._pad_values,
                exclude=self._consumed,
                documents=True,
            )
        special = self._special_of(batch["input_ids"].numpy())  # (B, T) or (1, N) bool
        if "special_tokens_mask" in batch:
            special |= batch["special_tokens_mask"].numpy() != 0
        batch["special_tokens_mask"] = torch.from_numpy(special)
        if self._masking_schedule is not None and features and all("block_index" in f for f in features):
            block_index = np.array([int(f["block_index"]) for f in features], dtype=np.int64)  # (B,)
            if self.padding_free and "document_lengths" in features[0]:  # one rate per document (D,)
                block_index = np.repeat(block_index, [len(f["document_lengths"]) for f in features])
            batch["block_index"] = torch.from_numpy(block_index)
        return batch

    def _special_of(self, ids: np.ndarray) -> np.ndarray:
        # One gather over the vocabulary table, no isin; it raises for ids >= V itself, and one pass finds
        # negative ids (which indexing would wrap around).
        try:
            if not (ids.size and ids.min() < 0):
                return self._special[ids]
        except IndexError:
            pass
        raise ValueError(
            f"input_ids holds ids outside the tokenizer's vocabulary [0, {len(self._special)}): "
            f"min {ids.min()}, max {ids.max()}."
        )

    # ----------------------------------------------------------------------------------------------------------
    # Transform: a collated batch → masked inputs and labels.
    # ----------------------------------------------------------------------------------------------------------

    def mask_tokens(self, batch: Mapping, mlm_probability=None) -> dict:
        """Select and replace tokens of a collated batch (padded with `attention_mask`, or padding-free with
        `cu_seq_lens_q`; torch tensors or numpy arrays); returns a new dict with `input_ids` and `labels`, without
        the transform-only keys (`special_tokens_mask`, `word_ids`, `offset_mapping`, `block_index`), in the
        `return_tensors` container. Other keys pass unchanged, but for `document_ids`: unless `attention_on_device`,
        it becomes the (B, 1, T, T) document `attention_mask` (class docstring).

        The rate: `mlm_probability` if given (a number, or one per row (B,), per document when padding-free), else
        the installed schedule at each row's step (from `block_index`), else the collator's `mlm_probability`."""
        return to_return_tensors(self._mask_tokens(batch, mlm_probability), self.return_tensors)

    def _mask_tokens(self, batch: Mapping, mlm_probability=None) -> dict[str, torch.Tensor | int]:
        batch = dict(batch)
        block_index = batch.pop("block_index", None)
        if "input_ids" not in batch:
            raise ValueError(f"The batch has no 'input_ids'; found keys {sorted(batch)}.")
        # The core runs in numpy: elementwise ops and boolean indexing cost several times less there than in torch
        # at these sizes; the tensors share memory with the arrays (no copies).
        input_ids = _as_array(batch["input_ids"], np.int64)
        special = batch.pop("special_tokens_mask", None)
        special = self._special_of(input_ids) if special is None else _as_array(special, bool)
        word_ids = batch.pop("word_ids", None)
        if word_ids is not None:
            word_ids = _as_array(word_ids, np.int64)
        offsets = batch.pop("offset_mapping", None)  # never a model input
        if word_ids is None and offsets is not None and self.whole_word_mask and self._word_starts is None:
            # Only without a known vocabulary convention: byte-level offsets include the space before a word
            # unless the tokenizer trims them (ours does not), and then no token would ever start a word.
            word_ids = offset_word_ids(_as_array(offsets, np.int64))  # (B, T) or (1, N)

        packed = is_packed(batch)
        if packed:
            # Lay the packed row out per document (D, L) so every document is masked exactly as in a padded batch.
            lengths = packed_lengths(batch).numpy()  # (D,)
            ids, real = unpack(input_ids[0], lengths, self._pad_id)  # (D, L), (D, L)
            special = unpack(special[0], lengths, True)[0]
            word_ids = None if word_ids is None else unpack(word_ids[0], lengths, -1)[0]
            key_lengths = lengths
        else:
            ids = input_ids  # (B, T)
            width = ids.shape[1]
            if "attention_mask" in batch:
                real = _as_array(batch["attention_mask"], bool)  # (B, T)
                # The key covers tokens up to the last real one: the same for a sample however it is right-padded.
                if real.all():  # full rows (packed blocks): no search
                    key_lengths = np.full(ids.shape[0], width)
                else:
                    key_lengths = np.where(real.any(1), width - np.argmax(real[:, ::-1], axis=1), 0)
            else:
                real = np.ones(ids.shape, dtype=bool)
                key_lengths = np.full(ids.shape[0], width)

        maskable = ~special if real.all() else real & ~special  # (B, T); a full batch (packed blocks): one pass
        if word_ids is not None:
            maskable &= word_ids >= 0  # None in word_ids marks a special token
        rates = row_rates(mlm_probability, block_index, len(ids), self._masking_schedule)  # (B,), or None
        masked_ids, labels = draw_masks(
            ids,
            maskable,
            self._keys(ids, key_lengths),
            self.mlm_probability if rates is None else rates,  # the shared rate, read once
            mask_id=self._mask_id,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            replacements=self._replacements,
            exact_count=self.exact_count,
            word=word_index(ids, maskable, word_ids, self._word_starts) if self.whole_word_mask and ids.size else None,
        )  # (B, T) each

        if packed:
            masked_ids, labels = masked_ids[real][None], labels[real][None]  # back to (1, N)
        batch["input_ids"], batch["labels"] = torch.from_numpy(masked_ids), torch.from_numpy(labels)
        if "document_ids" in batch and not self.attention_on_device:
            isolate_in_batch(batch, causal=False, implementation=self.attn_implementation)  # (B, 1, T, T) mask
        return batch

    def _keys(self, ids: np.ndarray, key_lengths: np.ndarray) -> np.ndarray:
        seed = self.seed if self.seed is not None else random.SystemRandom().getrandbits(32)
        return sample_keys(ids, key_lengths, seed, self.epoch)  # (B,) uint32


def _as_array(value, dtype) -> np.ndarray:
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array.astype(dtype, copy=False)


# The rate and epoch are shared-memory properties over the dataclass fields of the same name; defined after the
# decorator so the generated __init__ keeps its defaults and assigns through the setters.
DataCollatorForMaskedLM.mlm_probability = shared_scalar(
    "mlm_probability", torch.float64, lambda v: probability_value("mlm_probability", v)
)
DataCollatorForMaskedLM.epoch = shared_scalar("epoch", torch.int64, epoch_value)
