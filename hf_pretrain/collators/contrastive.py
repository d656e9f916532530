"""Pairs for contrastive learning (InfoNCE with in-batch negatives): supervised pairs or SimCSE-style views.

Each example yields a query and its positive; in the loss (`hf_pretrain.losses.info_nce_loss`) every other positive
of the batch, and any hard negative, is a negative. Two input forms:

* supervised pairs: `query_input_ids` and `positive_input_ids` (and optionally `negative_input_ids`, one hard
  negative per example), e.g. a search query and the passage that answers it;
* unsupervised (SimCSE-style): `input_ids` alone. The two views are the same text with tokens deleted
  independently (`drop_probability`), with keyed randomness: a sample's views depend only on (seed, epoch, its
  tokens). With `drop_probability=0` the views are identical and the model's dropout must make them differ, as in
  SimCSE; the tiny Llama presets have no dropout, so deletion is the default.

A text that appears twice in a batch would be its own negative; the collator returns `duplicates` (B, N) so the
loss leaves such copies out of the negatives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ._features import column
from ._keyed import fresh_seed, keyed_uniform, sample_keys
from ._padding import pad_flat, pad_rows
from .masked import special_token_table

_VIEW_STREAMS = (0x434E5401, 0x434E5402)  # keyed draws of the first and second view's deletions


@dataclass
class DataCollatorForContrastive:
    """Collate contrastive pairs into `query_*`, `positive_*` (and `negative_*`) padded batches plus `duplicates`.

    Args:
        tokenizer: gives the pad id and the special tokens (never deleted from a view).
        max_length: truncate every sequence to this many tokens (None: no truncation).
        drop_probability: unsupervised mode: each non-special token is deleted from each view with this probability
            (a view keeps at least its first token).
        seed: fixes the views; None draws a fresh seed per call.
        epoch: mixed into the keys (`set_epoch`), so repeated data gets fresh views.

    Returns `query_input_ids`, `query_attention_mask`, `positive_input_ids`, `positive_attention_mask` (B, T),
    `negative_input_ids` and `negative_attention_mask` when hard negatives are given, and `duplicates` (B, N) bool:
    True where document j of [positives; negatives] has the same tokens as query i's positive but is not it.
    There are no labels: query i's positive is row i of the documents (the diagonal).

    >>> from hf_pretrain.data.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["the quick brown fox", "jumps over the lazy dog"], vocab_size=300, num_sentinels=2)
    >>> pairs = DataCollatorForContrastive(tok)
    >>> batch = pairs([{"query_input_ids": [60, 61], "positive_input_ids": [70, 71, 72]},
    ...                {"query_input_ids": [62], "positive_input_ids": [70, 71, 72]}])
    >>> batch["query_input_ids"].tolist(), batch["query_attention_mask"].tolist()
    ([[60, 61], [62, 0]], [[1, 1], [1, 0]])
    >>> batch["duplicates"].tolist()  # both queries have the same positive text
    [[False, True], [True, False]]
    >>> views = DataCollatorForContrastive(tok, drop_probability=0.5, seed=0)([{"input_ids": [1, 60, 61, 62, 63, 2]}])
    >>> views["query_input_ids"].tolist(), views["positive_input_ids"].tolist()  # bos (1), eos (2) always stay
    ([[1, 63, 2]], [[1, 62, 63, 2]])
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int | None = None
    drop_probability: float = 0.1
    seed: int | None = None
    epoch: int = 0

    def __post_init__(self):
        if not 0.0 <= self.drop_probability < 1.0:
            raise ValueError(f"drop_probability must be in [0, 1), got {self.drop_probability}.")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be positive or None, got {self.max_length}.")
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token (tokenizer.pad_token); set one, e.g. to eos.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}.")
        self._pad_id = self.tokenizer.pad_token_id
        self._special = special_token_table(self.tokenizer)  # (V,) bool

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        supervised = column(features, "query_input_ids", required=False) is not None
        if supervised:
            queries, query_lengths = self._pad(column(features, "query_input_ids"))
            positives, positive_lengths = self._pad(column(features, "positive_input_ids"))
        else:
            ids, lengths = self._pad(column(features, "input_ids"))
            (queries, query_lengths), (positives, positive_lengths) = self._views(ids, lengths)
        batch = {**_as_batch("query", queries, query_lengths), **_as_batch("positive", positives, positive_lengths)}
        documents = [(positives, positive_lengths)]
        negative_rows = column(features, "negative_input_ids", required=False) if supervised else None
        if negative_rows is not None:
            negatives, negative_lengths = self._pad(negative_rows)
            batch.update(_as_batch("negative", negatives, negative_lengths))
            documents.append((negatives, negative_lengths))
        batch["duplicates"] = _duplicates(positives, positive_lengths, documents)
        return batch

    def _pad(self, rows: Sequence) -> tuple[np.ndarray, np.ndarray]:
        if self.max_length is not None:
            rows = [row[: self.max_length] for row in rows]  # a loop over examples, not tokens
        return pad_rows(rows, self._pad_id)

    def _views(self, ids: np.ndarray, lengths: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Two views of each row: tokens deleted by keyed draws, the survivors moved left in order."""
        width = ids.shape[1]
        real = np.arange(width) < lengths[:, None]  # (B, T)
        if self.drop_probability == 0 or width == 0:
            return [(ids, lengths), (ids.copy(), lengths.copy())]
        keys = sample_keys(ids, lengths, fresh_seed(self.seed), self.epoch)  # (B,)
        deletable = real & ~self._special[ids]
        deletable[:, 0] = False  # a view is never empty
        views = []
        for stream in _VIEW_STREAMS:
            kept = real & ~(deletable & (keyed_uniform(keys, width, stream).numpy() < self.drop_probability))
            view_lengths = kept.sum(1)  # (B,)
            views.append((pad_flat(ids[kept], view_lengths, self._pad_id), view_lengths))  # row-major order is kept
        return views


def _as_batch(prefix: str, ids: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
    mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
    return {f"{prefix}_input_ids": torch.from_numpy(ids), f"{prefix}_attention_mask": torch.from_numpy(mask)}


def _duplicates(
    positives: np.ndarray, positive_lengths: np.ndarray, documents: list[tuple[np.ndarray, np.ndarray]]
) -> torch.Tensor:
    """(B, N) bool: document j has exactly the tokens of positive i, and is not positive i itself."""
    positive_keys = sample_keys(positives, positive_lengths, seed=0)  # content hashes: equal tokens, equal key
    document_keys = np.concatenate([sample_keys(ids, lengths, seed=0) for ids, lengths in documents])
    same = positive_keys[:, None] == document_keys[None, :]  # (B, N)
    same[np.arange(len(positive_keys)), np.arange(len(positive_keys))] = False
    return torch.from_numpy(same)
