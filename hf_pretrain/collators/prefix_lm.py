"""Prefix language modelling: the model reads a prefix bidirectionally and predicts the rest left to right.

Decoder-only models get one sequence and labels only after the prefix; query i may attend to key j iff
(j < prefix_length or j <= i) and j is not padding. That pattern leaves the collator in one of two forms:

* `attention_on_device=False` (the default: a complete batch, for a plain `transformers.Trainer`): a 4D
  `attention_mask` (B, 1, T, T) built in the DataLoader worker. Transformers 5 hands a 4D mask to the attention
  function untouched (`masking_utils._preprocess_mask_arguments` returns early), so it must already be in the form
  that function consumes: a bool mask (True = attend, 1 byte per entry) for `sdpa`, the default; an *additive*
  float32 mask (0 = attend, `finfo(float32).min` = blocked) for `eager`, which adds the mask to the scores (a bool
  mask there would add 1.0 to the allowed scores and mask nothing; float32 works for models in any dtype).
* `attention_on_device=True` (`PretrainingTrainer`): no (T, T) object leaves the worker. The batch carries
  `document_ids` (B, T) int64 (0, 1, ... per document, -1 at padding), `prefix_mask` (B, T) bool and a (B, T)
  padding `attention_mask`; the trainer builds the 4D mask on the device at the step
  (`hf_pretrain.training.document_mask.isolate_documents`), in the model's format and dtype.

Both forms give every real query the same keys, hence bit-identical outputs at real tokens. Padding queries are
never fully masked (no NaN from sdpa's softmax): the staircase lets them see the real tokens of their row, the
device mask their own key only; no label reads them.

Packed rows (features with `document_lengths`, `hf_pretrain.data.packing`): every document piece is an example of
its own, with its own prefix and target (keyed by its own tokens: the same split packed or alone), positions
restarting at it (`position_ids`), attention only inside it and the prefix bidirectional only within it. A piece's
first token is always in its prefix, so no label is predicted across a boundary. A piece of one token has no
prefix + target: it stays one unlabelled token (all prefix) in a document of its own. The worker form of such rows
is `hf_pretrain.attention_masks.document_attention_mask`; `prefix_lengths` (one per row) is sent only without
documents.

Flash-attention kernels take no 4D mask, so the collator refuses them. Encoder-decoder models get the prefix as
`input_ids` and the rest as `labels`; their encoder would read a packed row as one sequence, so features with
`document_lengths` are refused there.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from hf_pretrain.attention_masks import document_attention_mask

from ._documents import PADDING_DOCUMENT_ID, document_prefix_mask, padded_document_columns
from ._features import column
from ._keyed import fresh_seed, sample_keys
from ._padding import check_pad_to_multiple_of
from ._rows import (
    IGNORE_INDEX,
    Pieces,
    assemble_rows,
    check_fraction_range,
    document_pieces_of,
    draw_split_points,
    input_id_rows,
    no_documents_error,
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
# The decoder-only batch (shared with decoder-only span corruption and UL2)
# ---------------------------------------------------------------------------------------------------------------


def check_attention_on_device(attention_on_device: bool, decoder_only: bool) -> None:
    if not isinstance(attention_on_device, bool):
        raise ValueError(f"attention_on_device must be True or False, got {attention_on_device!r}.")
    if attention_on_device and not decoder_only:
        raise ValueError(
            "attention_on_device=True applies to decoder_only=True (encoder-decoder batches carry no 4D mask)."
        )


def decoder_only_batch(
    input_ids: np.ndarray,
    pieces: Pieces,
    piece_totals: np.ndarray,
    piece_prefix: np.ndarray,
    *,
    attention_on_device: bool,
    attn_implementation: str,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """The decoder-only batch of rows whose pieces each read a prefix bidirectionally, then predict the rest.

    `input_ids` (B, T) int64 holds every row's pieces side by side, piece p `piece_totals[p]` tokens long of which
    the first `piece_prefix[p]` are its prefix (P,). Returns `input_ids`, `labels` (the tokens after each piece's
    prefix, -100 elsewhere) and the attention in the form `attention_on_device` asks for (module docstring), with
    `position_ids` restarting per piece when the features carried `document_lengths`, else `prefix_lengths` (B,).
    """
    width = input_ids.shape[1]
    row_totals = pieces.row_sums(piece_totals)  # (B,)
    if pieces.documented:
        position_ids, document_ids = padded_document_columns(
            piece_totals, pieces.counts, row_totals, pad_to_multiple_of
        )  # (B, T) each: offset within the piece (padding continues the last one), piece index (-1 at padding)
        if position_ids.shape[1] != width:
            raise ValueError(f"Rows of width {width} do not match their document layout {position_ids.shape[1]}.")
        # (B, T) bool: the first piece_prefix[p] tokens of every piece p (never padding)
        prefix_mask = document_prefix_mask(piece_totals, pieces.counts, row_totals, piece_prefix, width)
        real = document_ids >= 0
    else:
        cols = np.arange(width)[None, :]  # (1, T)
        real = cols < row_totals[:, None]  # (B, T)
        prefix_mask = cols < piece_prefix[:, None]  # prefix < length: real tokens only
        document_ids = None
    labels = np.where(real & ~prefix_mask, input_ids, np.int64(IGNORE_INDEX))  # (B, T): the targets, nothing else
    batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}
    if attention_on_device:
        if document_ids is None:
            document_ids = np.where(real, np.int64(0), np.int64(PADDING_DOCUMENT_ID))
        batch["attention_mask"] = torch.from_numpy(real.astype(np.int64))  # (B, T) padding mask: tokens counted
        batch["document_ids"] = torch.from_numpy(document_ids)
        batch["prefix_mask"] = torch.from_numpy(prefix_mask)
    elif pieces.one_per_row:  # the staircase gather: ~10x cheaper than the general pattern
        batch["attention_mask"] = prefix_lm_attention_mask(row_totals, piece_prefix, width, attn_implementation)
    else:
        batch["attention_mask"] = document_attention_mask(
            torch.from_numpy(document_ids),
            causal=True,
            implementation=attn_implementation,
            prefix_mask=torch.from_numpy(prefix_mask),
        )
    if pieces.documented:
        batch["position_ids"] = torch.from_numpy(position_ids)
    else:
        batch["prefix_lengths"] = torch.from_numpy(piece_prefix)
    return batch


# ---------------------------------------------------------------------------------------------------------------
# The collator
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DataCollatorForPrefixLM:
    """Prefix-LM batches: a bidirectional prefix, then next-token prediction of the rest.

    The split point of each example is `features[i][prefix_length_key]` when the features carry it, else
    floor(length · u) with u uniform in `prefix_fraction_range`, drawn from the example's own tokens (keyed
    randomness: the same split in any batch, any worker count), clipped so the prefix and the rest are non-empty.
    With `document_lengths` every document piece is an example (module docstring); a given split is refused there.

    Decoder-only (default): `input_ids` (B, T), `labels` (-100 on the prefix and padding), the attention as
    `attention_on_device` says (module docstring): a 4D `attention_mask` (B, 1, T, T) in the form
    `attn_implementation` consumes, or `document_ids`, `prefix_mask` and a (B, T) `attention_mask` for
    `PretrainingTrainer` to build it on the device; `prefix_lengths` (B,) without documents, `position_ids` (B, T)
    with them. Encoder-decoder: `input_ids` = prefix, `attention_mask` (B, S), `labels` = the rest (-100
    padding), and `decoder_input_ids` when `return_decoder_input_ids`.

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
    >>> packed = DataCollatorForPrefixLM(tok, seed=0, attention_on_device=True)(
    ...     [{"input_ids": [10, 11, 12, 13, 14, 15, 16], "document_lengths": [4, 1, 2]}])
    >>> packed["document_ids"].tolist(), packed["position_ids"].tolist()
    ([[0, 0, 0, 0, 1, 2, 2]], [[0, 1, 2, 3, 0, 0, 1]])
    >>> packed["prefix_mask"].int().tolist(), packed["labels"].tolist()  # the 1-token document: unlabelled
    ([[1, 1, 0, 0, 1, 1, 0]], [[-100, -100, 12, 13, -100, -100, 16]])
    """

    tokenizer: PreTrainedTokenizerBase
    prefix_fraction_range: tuple[float, float] = (0.0, 1.0)
    prefix_length_key: str = "prefix_length"
    decoder_only: bool = True
    attn_implementation: str = "sdpa"
    attention_on_device: bool = False
    return_decoder_input_ids: bool = False
    decoder_start_token_id: int | None = None
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    epoch: int = 0

    def __post_init__(self):
        check_fraction_range(self.prefix_fraction_range)
        check_pad_to_multiple_of(self.pad_to_multiple_of)
        check_attention_on_device(self.attention_on_device, self.decoder_only)
        if self.decoder_only:
            check_attn_implementation(self.attn_implementation)
        self.pad_token_id = tokenizer_id(self.tokenizer, "pad_token_id", "prefix LM")
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh split points for repeated data (the draws are keyed by seed, epoch and tokens)."""
        self.epoch = epoch

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        flat, ids, lengths = input_id_rows(features, self.pad_token_id, self.pad_to_multiple_of)  # (N,), (B, T), (B,)
        pieces = document_pieces_of(features, flat, ids, lengths, self.pad_token_id)  # the examples: (P,) pieces
        if pieces.documented and not self.decoder_only:
            raise no_documents_error("prefix LM")
        if not pieces.documented and lengths.min() < 2:
            raise ValueError("Prefix LM needs sequences of at least 2 tokens (a prefix and something to predict).")
        given = column(features, self.prefix_length_key, required=False)
        if given is not None:
            if pieces.documented:
                raise ValueError(
                    f"'{self.prefix_length_key}' gives one split per feature, but features with document_lengths "
                    "split every document on its own; drop one of the two."
                )
            prefix = np.asarray(given, dtype=np.int64)
            if (prefix < 1).any() or (prefix >= lengths).any():
                raise ValueError(f"'{self.prefix_length_key}' must lie in [1, length - 1] for every example.")
        else:
            keys = sample_keys(pieces.ids, pieces.lengths, fresh_seed(self.seed), self.epoch)  # (P,) uint32
            prefix = draw_split_points(keys, pieces.lengths, self.prefix_fraction_range, STREAM_PREFIX_SPLIT)
            if pieces.documented:  # a 1-token piece has nothing to predict: all prefix, unlabelled
                prefix = np.where(pieces.lengths < 2, pieces.lengths, prefix)
        if self.decoder_only:  # the tokens stay where they are: each piece is its own prefix, then its target
            return decoder_only_batch(
                ids.astype(np.int64),
                pieces,
                pieces.lengths,
                prefix,
                attention_on_device=self.attention_on_device,
                attn_implementation=self.attn_implementation,
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
        cols = np.arange(ids.shape[1])[None, :]  # (1, T)
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
