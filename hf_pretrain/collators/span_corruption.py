"""T5 span corruption, vectorized over the batch.

T5 (Raffel et al. 2020) drops round(length · noise_density) tokens in spans of mean length `mean_noise_span_length`,
replaces each span in the inputs by one sentinel (`<extra_id_0>`, `<extra_id_1>`, ... in order) and asks for the
spans back, each behind its sentinel:

    raw      a b c d e f g h
    inputs   a <extra_id_0> d e <extra_id_1> </s>          (b c and f g h are noise)
    labels   <extra_id_0> b c <extra_id_1> f g h </s>

The segmentation is T5's (`_span_draw`: every example's spans in one keyed, flat pass over the batch, no Python
loop per example or span), and the tokens go straight to their place in the output (`_part_layout`): one scatter
moves every kept and noise token of the batch, one more writes the sentinels and EOS. The random draws are keyed by
each sample's tokens (see `_keyed`), so a sample gets the same corruption in any batch.

`compute_span_corruption_lengths` gives the raw length to tokenize so the inputs come out exactly `inputs_length`
long (T5's `compute_input_and_target_lengths`); a collator given `inputs_length` then always returns that shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from hf_pretrain.data.tokenizer import sentinel_token

from ._documents import document_keys
from ._keyed import fresh_seed
from ._padding import check_pad_to_multiple_of
from ._part_layout import (
    decoder_only_starts,
    encoder_decoder_starts,
    examples_of,
    merge_segments,
    place_segments,
)
from ._rows import IGNORE_INDEX, Pieces, no_documents_error, shift_right, tokenizer_id
from ._span_draw import (
    SpanDraw,
    check_span_parameters,
    compute_span_corruption_lengths,
    draw_spans,
    noise_counts,
)
from .prefix_lm import check_attention_on_device, check_attn_implementation, decoder_only_batch

STREAM_NONNOISE = 1  # keyed-randomness streams: cuts of the non-noise segments, then (2) of the noise segments


# ---------------------------------------------------------------------------------------------------------------
# Sentinels
# ---------------------------------------------------------------------------------------------------------------


def add_sentinel_tokens(tokenizer: PreTrainedTokenizerBase, num_sentinels: int = 100) -> int:
    """Add the T5 sentinels `<extra_id_0>` ... `<extra_id_{num_sentinels - 1}>` that `tokenizer` lacks.

    Returns how many were added; resize the model's embeddings afterwards
    (`model.resize_token_embeddings(len(tokenizer))`).

    >>> from hf_pretrain.data.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["a tiny corpus"], vocab_size=300, num_sentinels=2)
    >>> add_sentinel_tokens(tok, 4), len(sentinel_ids(tok))
    (2, 4)
    """
    vocab = tokenizer.get_vocab()
    missing = [sentinel_token(i) for i in range(num_sentinels) if sentinel_token(i) not in vocab]
    if not missing:
        return 0
    return tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)


def sentinel_ids(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Ids of `<extra_id_0>`, `<extra_id_1>`, ... up to the first missing one (int64). Any id layout works."""
    vocab = tokenizer.get_vocab()
    ids = []
    while sentinel_token(len(ids)) in vocab:
        ids.append(vocab[sentinel_token(len(ids))])
    return np.asarray(ids, dtype=np.int64)


def missing_sentinels_error(needed: int, available: int) -> ValueError:
    return ValueError(
        f"tokenizer has {available} sentinel tokens <extra_id_N> but span corruption needs {needed} here (one per "
        "noise span); add them with hf_pretrain.collators.span_corruption.add_sentinel_tokens(tokenizer, n), then "
        "model.resize_token_embeddings(len(tokenizer))."
    )


# ---------------------------------------------------------------------------------------------------------------
# The collator
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DataCollatorForSpanCorruption:
    """T5 span-corruption batches for `T5ForConditionalGeneration` (or, `decoder_only=True`, a causal LM).

    Give `inputs_length` to get fixed shapes: features must then hold at most `raw_length` tokens
    (`compute_span_corruption_lengths(inputs_length, ...)[0]`; exactly that many for unpadded batches) and every
    batch has `input_ids` (B, inputs_length) and `labels` (B, targets_length). Without it, rows of any length >= 2
    work and are padded to the longest. Outputs: `input_ids`, `attention_mask`, `labels` (-100 on padding),
    `decoder_input_ids` when `return_decoder_input_ids` (labels shifted right behind `decoder_start_token_id`,
    default the pad id, T5's convention; T5 also builds them itself from `labels`).

    `decoder_only=True`: one sequence, corrupted inputs + EOS (the bidirectional prefix) then targets + EOS,
    `labels` -100 over the prefix, and the prefix-LM attention as `attention_on_device` says (`prefix_lm.py`): a
    4D `attention_mask` (B, 1, T, T) in `attn_implementation`'s format, or `document_ids` and `prefix_mask` for
    `PretrainingTrainer` to build it on the device; `prefix_lengths` (B,) without documents.

    Packed rows (`document_lengths`, decoder-only only): every document piece is corrupted on its own (keyed by its
    own tokens: the same corruption packed or alone) and a row is laid out [doc0 inputs EOS targets EOS][doc1 ...],
    with `position_ids` restarting per piece, attention inside each piece only, no label across a boundary. A
    piece of one token cannot be corrupted (a noise and a kept token): it stays one unlabelled token, a document of
    its own. Such rows cannot keep `inputs_length`'s fixed shape (each piece adds its sentinels and EOS): refused.
    Encoder-decoder batches refuse `document_lengths` (the encoder would read the documents as one).

    Corruption is keyed by (seed, epoch, the sample's tokens): the same in any batch or worker; `set_epoch` for
    fresh corruption of repeated data; `seed=None` for a fresh seed per call.

    >>> from hf_pretrain.data.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["a tiny corpus", "of two documents"], vocab_size=300, num_sentinels=10)
    >>> raw_length, targets_length = compute_span_corruption_lengths(12, noise_density=0.3)
    >>> raw_length, targets_length
    (14, 6)
    >>> collator = DataCollatorForSpanCorruption(tok, noise_density=0.3, inputs_length=12)
    >>> batch = collator([{"input_ids": list(range(100, 100 + raw_length))}] * 2)
    >>> batch["input_ids"].shape, batch["labels"].shape
    (torch.Size([2, 12]), torch.Size([2, 6]))
    >>> tok.convert_ids_to_tokens(batch["labels"][0, :1])
    ['<extra_id_0>']
    """

    tokenizer: PreTrainedTokenizerBase
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    inputs_length: int | None = None
    decoder_only: bool = False
    attn_implementation: str = "sdpa"
    attention_on_device: bool = False
    return_decoder_input_ids: bool = False
    decoder_start_token_id: int | None = None
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    epoch: int = 0

    def __post_init__(self):
        check_span_parameters(self.noise_density, self.mean_noise_span_length)
        check_pad_to_multiple_of(self.pad_to_multiple_of)
        check_attention_on_device(self.attention_on_device, self.decoder_only)
        if self.decoder_only:
            check_attn_implementation(self.attn_implementation)
        self.eos_token_id = tokenizer_id(self.tokenizer, "eos_token_id", "span corruption")
        self.pad_token_id = tokenizer_id(self.tokenizer, "pad_token_id", "span corruption")
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        self.sentinel_ids = sentinel_ids(self.tokenizer)  # looked up once; any id layout
        if len(self.sentinel_ids) == 0:
            raise missing_sentinels_error(1, 0)
        self.raw_length = self.targets_length = None
        if self.inputs_length is not None:
            self.raw_length, self.targets_length = compute_span_corruption_lengths(
                self.inputs_length, self.noise_density, self.mean_noise_span_length
            )
            _, spans = noise_counts(np.array([self.raw_length]), self.noise_density, self.mean_noise_span_length)
            if spans[0] > len(self.sentinel_ids):
                raise missing_sentinels_error(int(spans[0]), len(self.sentinel_ids))

    def set_epoch(self, epoch: int) -> None:
        """Fresh corruption for repeated data (draws are keyed by seed, epoch and the sample's tokens)."""
        self.epoch = epoch

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        flat, lengths, pieces, counts, documented = examples_of(features)  # (N,), (B,), (P,), (B,)
        if documented:
            if not self.decoder_only:
                raise no_documents_error("span corruption")
            if self.inputs_length is not None:
                raise ValueError(
                    "inputs_length promises fixed shapes, which rows with document_lengths cannot keep (every "
                    "document adds its own sentinels and EOS); drop inputs_length (pad_to_multiple_of bounds the "
                    "shapes) or the features' document_lengths."
                )
        elif lengths.min() < 2:
            raise ValueError("Span corruption needs sequences of at least 2 tokens (one noise, one kept).")
        if self.raw_length is not None and lengths.max() > self.raw_length:
            raise ValueError(
                f"Features hold up to {lengths.max()} tokens but inputs_length={self.inputs_length} takes at most "
                f"{self.raw_length} (compute_span_corruption_lengths); chunk the data to that length."
            )
        keys = document_keys(flat, pieces, fresh_seed(self.seed), self.epoch)  # (P,) uint32
        if self.decoder_only:
            return self._decoder_only(flat, pieces, counts, documented, keys)
        draw = self._draw(lengths, keys)
        first, second = draw.source_lengths + 1, draw.target_lengths + 1  # (B,) each, with EOS
        source_at, target_at, width, target_width = encoder_decoder_starts(
            first, second, self.inputs_length, self.targets_length, self.pad_to_multiple_of
        )
        batch_size = len(lengths)
        out = np.empty(batch_size * (width + target_width), dtype=np.int64)  # inputs (B, W), then labels (B, W2)
        out[: batch_size * width] = self.pad_token_id
        out[batch_size * width :] = IGNORE_INDEX
        self._write(out, flat, draw, source_at, target_at)
        input_ids = out[: batch_size * width].reshape(batch_size, width)
        labels = out[batch_size * width :].reshape(batch_size, target_width)
        if first.min() == width:
            attention_mask = np.ones(input_ids.shape, dtype=np.int64)
        else:
            attention_mask = (np.arange(width)[None, :] < first[:, None]).astype(np.int64)
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),
        }
        if self.return_decoder_input_ids:
            batch["decoder_input_ids"] = torch.from_numpy(
                shift_right(labels, self.decoder_start_token_id, self.pad_token_id)
            )
        return batch

    def _draw(self, lengths: np.ndarray, keys: np.ndarray) -> SpanDraw:
        draw = draw_spans(lengths, self.noise_density, self.mean_noise_span_length, keys, STREAM_NONNOISE)
        if len(draw.num_spans) and draw.num_spans.max() > len(self.sentinel_ids):
            raise missing_sentinels_error(int(draw.num_spans.max()), len(self.sentinel_ids))
        return draw

    def _write(self, out, flat, draw: SpanDraw, source_at, target_at, segments=None) -> None:
        """Every token into `out` (`segments`: the corrupted pieces' and any others', in token order), then the
        corrupted pieces' sentinels and EOS; their sources start at `source_at`, their targets at `target_at`."""
        place_segments(out, flat, *(draw.segments(source_at, target_at) if segments is None else segments))
        where, sentinels = draw.sentinels(source_at, target_at, self.sentinel_ids)  # (2K,) each
        out[where] = sentinels
        out[source_at + draw.source_lengths] = self.eos_token_id
        out[target_at + draw.target_lengths] = self.eos_token_id

    def _decoder_only(self, flat, pieces, counts, documented, keys) -> dict[str, torch.Tensor]:
        """[inputs EOS targets EOS] per piece (a 1-token piece: the token alone), a row's pieces side by side."""
        long, single = np.flatnonzero(pieces >= 2), np.flatnonzero(pieces < 2)  # corrupted, kept as they are
        draw = self._draw(pieces[long], keys[long])
        first = np.ones_like(pieces)  # (P,): inputs and their EOS, read bidirectionally (a 1-token piece: itself)
        second = np.zeros_like(pieces)  # (P,): targets and their EOS
        first[long] = draw.source_lengths + 1
        second[long] = draw.target_lengths + 1
        width = None if self.inputs_length is None else self.inputs_length + self.targets_length
        first_at, second_at, _, width = decoder_only_starts(first, second, counts, width, self.pad_to_multiple_of)
        out = np.full(len(counts) * width, self.pad_token_id, dtype=np.int64)  # (B * W,)
        per_piece = np.ones_like(pieces)  # (P,) segments per piece: 2 per span, a 1-token piece is one
        per_piece[long] = 2 * draw.num_spans
        ones = np.ones(len(single), dtype=np.int64)
        segments = merge_segments(
            per_piece,
            [
                (long, 2 * draw.num_spans, *draw.segments(first_at[long], second_at[long])),
                (single, ones, ones, first_at[single]),
            ],
        )
        self._write(out, flat, draw, first_at[long], second_at[long], segments)
        return decoder_only_batch(
            out.reshape(len(counts), width),
            Pieces(pieces, counts, None, documented),  # no padded piece ids: the keys read the flat tokens
            first + second,
            first,
            attention_on_device=self.attention_on_device,
            attn_implementation=self.attn_implementation,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
