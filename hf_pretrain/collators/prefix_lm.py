"""Prefix language modelling: the model reads a prefix bidirectionally and predicts the rest left to right.

Decoder-only models get one sequence, labels only after the prefix, and a 4D attention mask (B, 1, T, T) in which
query i may attend to key j iff (j < prefix_length or j <= i) and j is not padding. Transformers 5 hands a 4D mask
to the attention function untouched (`masking_utils._preprocess_mask_arguments` returns early), so it must already
be in the form that function consumes:

* `sdpa` (the default implementation): a bool mask, True = attend. 1 byte per entry.
* `eager`: an *additive* float mask, 0 = attend and `finfo(float32).min` = blocked; eager adds the mask to the
  scores, so a bool mask there would silently add 1.0 to the allowed scores and mask nothing. float32 works for
  models in any dtype (eager's addition promotes, and sdpa accepts a float32 mask for bf16 queries too).

Flash-attention kernels ignore 4D masks, so the collator refuses them. Rows are right-padded, so a padding query
row still sees the real tokens of its row (j <= i holds for all of them): no fully masked row, hence no NaN from
sdpa's softmax for padding positions.

Encoder-decoder models get the prefix as `input_ids` and the rest as `labels`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ._features import column
from ._keyed import fresh_seed, sample_keys
from ._padding import check_pad_to_multiple_of
from ._rows import (
    IGNORE_INDEX,
    assemble_rows,
    check_fraction_range,
    draw_split_points,
    input_id_rows,
    shift_right,
    tokenizer_id,
)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
STREAM_PREFIX_SPLIT = 3  # keyed-randomness stream of the split point (span corruption uses 1 and 2)


# ---------------------------------------------------------------------------------------------------------------
# The 4D mask
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _staircase(width: int, additive: bool) -> np.ndarray:
    """Row `n` (of width + 1) allows keys j < n: (width + 1, width), bool or additive float32. Cached per width."""
    allowed = np.arange(width)[None, :] < np.arange(width + 1)[:, None]
    if not additive:
        return allowed
    return np.where(allowed, np.float32(0), np.finfo(np.float32).min).astype(np.float32)


def check_attn_implementation(attn_implementation: str) -> None:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={attn_implementation!r} cannot take a 4D prefix-LM mask; use one of "
            f"{ATTN_IMPLEMENTATIONS} (model.config._attn_implementation). Flash-attention kernels ignore 4D masks."
        )


def prefix_lm_attention_mask(
    lengths: np.ndarray | torch.Tensor | Sequence[int],
    prefix_lengths: np.ndarray | torch.Tensor | Sequence[int],
    width: int | None = None,
    attn_implementation: str = "sdpa",
) -> torch.Tensor:
    """The prefix-LM attention mask (B, 1, T, T) for right-padded rows of real length `lengths`.

    Query i may attend to key j iff (j < prefix_length or j <= i) and j < length. Bool (True = attend) for
    `sdpa`; additive float32 (0 or the float32 minimum) for `eager`.

    >>> prefix_lm_attention_mask([3, 2], [2, 1], width=3)[:, 0].int().tolist()
    [[[1, 1, 0], [1, 1, 0], [1, 1, 1]], [[1, 0, 0], [1, 1, 0], [1, 1, 0]]]
    """
    check_attn_implementation(attn_implementation)
    lengths = np.asarray(lengths, dtype=np.int64)
    prefix = np.asarray(prefix_lengths, dtype=np.int64)
    width = int(lengths.max()) if width is None else width
    if lengths.min() < 1 or lengths.max() > width:
        raise ValueError(f"lengths must lie in [1, width={width}], got {lengths.tolist()}.")
    # The keys a query row may see are always a prefix [0, limit) of the row, limit = min(max(prefix, i + 1),
    # length); so the mask is a gather of rows from a cached staircase table (a 512-byte memcpy per row for bool),
    # ~10x faster than broadcasting comparisons over (B, T, T).
    limit = np.minimum(np.maximum(prefix[:, None], np.arange(1, width + 1)[None, :]), lengths[:, None])  # (B, T)
    table = _staircase(width, attn_implementation == "eager")  # (T + 1, T)
    mask = np.take(table, limit.ravel(), axis=0)  # (B * T, T)
    return torch.from_numpy(mask).view(len(lengths), 1, width, width)


# ---------------------------------------------------------------------------------------------------------------
# The collator
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DataCollatorForPrefixLM:
    """Prefix-LM batches: a bidirectional prefix, then next-token prediction of the rest.

    The split point of each example is `features[i][prefix_length_key]` when the features carry it, else
    floor(length · u) with u uniform in `prefix_fraction_range`, drawn from the example's own tokens (keyed
    randomness: the same split in any batch, any worker count), clipped so the prefix and the rest are non-empty.

    Decoder-only (default): `input_ids` (B, T), `labels` (-100 on the prefix and padding), `attention_mask`
    (B, 1, T, T) in the form `attn_implementation` consumes (see the module docstring) and `prefix_lengths` (B,).
    Encoder-decoder: `input_ids` = prefix, `attention_mask` (B, S), `labels` = the rest (-100 padding), and
    `decoder_input_ids` when `return_decoder_input_ids`.

    >>> from hf_pretrain.data.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["a tiny corpus", "of two documents"], vocab_size=300, num_sentinels=2)
    >>> collator = DataCollatorForPrefixLM(tok)
    >>> features = [{"input_ids": [10, 11, 12, 13], "prefix_length": 2}]
    >>> features.append({"input_ids": [20, 21, 22], "prefix_length": 1})
    >>> batch = collator(features)
    >>> batch["labels"].tolist(), batch["prefix_lengths"].tolist()
    ([[-100, -100, 12, 13], [-100, 21, 22, -100]], [2, 1])
    >>> batch["attention_mask"].shape, batch["attention_mask"].dtype
    (torch.Size([2, 1, 4, 4]), torch.bool)
    """

    tokenizer: PreTrainedTokenizerBase
    prefix_fraction_range: tuple[float, float] = (0.0, 1.0)
    prefix_length_key: str = "prefix_length"
    decoder_only: bool = True
    attn_implementation: str = "sdpa"
    return_decoder_input_ids: bool = False
    decoder_start_token_id: int | None = None
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    epoch: int = 0

    def __post_init__(self):
        check_fraction_range(self.prefix_fraction_range)
        check_pad_to_multiple_of(self.pad_to_multiple_of)
        if self.decoder_only:
            check_attn_implementation(self.attn_implementation)
        self.pad_token_id = tokenizer_id(self.tokenizer, "pad_token_id", "prefix LM")
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh split points for repeated data (the draws are keyed by seed, epoch and tokens)."""
        self.epoch = epoch

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        _, ids, lengths = input_id_rows(features, self.pad_token_id, self.pad_to_multiple_of)  # (N,), (B, T), (B,)
        if lengths.min() < 2:
            raise ValueError("Prefix LM needs sequences of at least 2 tokens (a prefix and something to predict).")
        given = column(features, self.prefix_length_key, required=False)
        if given is not None:
            prefix = np.asarray(given, dtype=np.int64)
            if (prefix < 1).any() or (prefix >= lengths).any():
                raise ValueError(f"'{self.prefix_length_key}' must lie in [1, length - 1] for every example.")
        else:
            keys = sample_keys(ids, lengths, fresh_seed(self.seed), self.epoch)
            prefix = draw_split_points(keys, lengths, self.prefix_fraction_range, STREAM_PREFIX_SPLIT)
        cols = np.arange(ids.shape[1])[None, :]  # (1, T)
        if self.decoder_only:
            target = (cols >= prefix[:, None]) & (cols < lengths[:, None])  # (B, T)
            return {
                "input_ids": torch.from_numpy(ids.astype(np.int64)),
                "labels": torch.from_numpy(np.where(target, ids, np.int64(IGNORE_INDEX))),  # int64 by promotion
                "attention_mask": prefix_lm_attention_mask(lengths, prefix, ids.shape[1], self.attn_implementation),
                "prefix_lengths": torch.from_numpy(prefix),
            }
        source_flat = ids[cols < prefix[:, None]]
        target_flat = ids[(cols >= prefix[:, None]) & (cols < lengths[:, None])]
        inputs, input_lengths = assemble_rows(
            [(source_flat, prefix)], self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of
        )
        labels, _ = assemble_rows(
            [(target_flat, lengths - prefix)], IGNORE_INDEX, pad_to_multiple_of=self.pad_to_multiple_of
        )
        batch = {
            "input_ids": torch.from_numpy(inputs),
            "attention_mask": torch.from_numpy(
                (np.arange(inputs.shape[1])[None, :] < input_lengths[:, None]).astype(np.int64)
            ),
            "labels": torch.from_numpy(labels),
        }
        if self.return_decoder_input_ids:
            batch["decoder_input_ids"] = torch.from_numpy(
                shift_right(labels, self.decoder_start_token_id, self.pad_token_id)
            )
        return batch
