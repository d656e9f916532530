"""T5 span corruption, vectorized over the batch.

T5 (Raffel et al. 2020) drops round(length · noise_density) tokens in spans of mean length `mean_noise_span_length`,
replaces each span in the inputs by one sentinel (`<extra_id_0>`, `<extra_id_1>`, ... in order) and asks for the
spans back, each behind its sentinel:

    raw      a b c d e f g h
    inputs   a <extra_id_0> d e <extra_id_1> </s>          (b c and f g h are noise)
    labels   <extra_id_0> b c <extra_id_1> f g h </s>

The segmentation is T5's: n items cut into k non-empty segments by a uniformly random choice of k - 1 of the n - 1
gaps, non-noise and noise segments interleaved starting with non-noise (so a row always ends in noise). Here the
whole batch is done at once in flat (row-major, unpadded) index space: the k - 1 cuts of every row come from one
`np.partition` over keyed random uint32 keys (B, n - 1), span lengths from one diff, the noise flags of every token
from one `np.repeat` of the span lengths, and inputs/labels from one boolean compaction each. No Python loop runs
per example or per span, and the random draws are keyed by each sample's tokens (see `_keyed`), so a sample gets
the same corruption in any batch.

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

from ._keyed import fresh_seed, keyed_bits, sample_keys
from ._padding import check_pad_to_multiple_of
from ._rows import (
    IGNORE_INDEX,
    Pieces,
    assemble_rows,
    document_pieces_of,
    input_id_rows,
    no_documents_error,
    shift_right,
    tokenizer_id,
)
from .prefix_lm import check_attention_on_device, check_attn_implementation, decoder_only_batch

STREAM_NONNOISE = 1  # keyed-randomness streams: cuts of the non-noise segments, cuts of the noise segments
STREAM_NOISE = 2


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
# Lengths
# ---------------------------------------------------------------------------------------------------------------


def check_span_parameters(noise_density: float, mean_noise_span_length: float, where: str = "") -> None:
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"{where}noise_density must lie in (0, 1), got {noise_density!r}.")
    if not mean_noise_span_length >= 1.0:
        raise ValueError(f"{where}mean_noise_span_length must be at least 1, got {mean_noise_span_length!r}.")


def noise_counts(lengths: np.ndarray, noise_density: float, mean_noise_span_length: float):
    """Noise tokens and noise spans per row (each (B,) int64), T5's rule, valid for lengths >= 2.

    noise = round(length · density) clipped to [1, length - 1]; spans = max(1, round(noise / μ)), also at most
    the non-noise count (every non-noise segment needs a token; T5 would fail there, only at extreme densities).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    # np.rint rounds half to even on float64, like Python's round() in T5's reference code.
    noise = np.clip(np.rint(lengths * noise_density).astype(np.int64), 1, lengths - 1)
    spans = np.maximum(np.rint(noise / mean_noise_span_length).astype(np.int64), 1)
    return noise, np.minimum(spans, lengths - noise)


def corrupted_lengths(lengths, noise_density: float, mean_noise_span_length: float):
    """Lengths of the corrupted inputs and of the targets, EOS included, for raw lengths `lengths`."""
    noise, spans = noise_counts(lengths, noise_density, mean_noise_span_length)
    return np.asarray(lengths) - noise + spans + 1, noise + spans + 1


def compute_span_corruption_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """(raw_length, targets_length): tokenize `raw_length` tokens to get corrupted inputs of `inputs_length`.

    T5's `compute_input_and_target_lengths`: the longest raw length whose inputs (non-noise tokens, one sentinel
    per span, EOS) fit `inputs_length`; targets hold every noise token, one sentinel per span and EOS.

    >>> compute_span_corruption_lengths(512, 0.15, 3.0)
    (568, 114)
    """
    check_span_parameters(noise_density, mean_noise_span_length)
    smallest = int(corrupted_lengths(np.array([2]), noise_density, mean_noise_span_length)[0][0])
    if inputs_length < smallest:
        raise ValueError(f"inputs_length={inputs_length} is too short: even 2 raw tokens corrupt to {smallest}.")
    # The inputs length grows by at most one per raw token until the span count saturates, so the answer is at
    # most ~ inputs_length / (1 - density); evaluate every candidate at once.
    candidates = np.arange(2, int(inputs_length / (1.0 - noise_density)) + 4)
    inputs, targets = corrupted_lengths(candidates, noise_density, mean_noise_span_length)
    best = int(np.flatnonzero(inputs <= inputs_length)[-1])
    return int(candidates[best]), int(targets[best])


# ---------------------------------------------------------------------------------------------------------------
# The vectorized algorithm
# ---------------------------------------------------------------------------------------------------------------


def random_segment_lengths(
    num_items: np.ndarray, num_segments: np.ndarray, width: int, keys: np.ndarray, stream: int
) -> np.ndarray:
    """Cut row b's `num_items[b]` items into `num_segments[b]` non-empty segments, uniformly: lengths (B, width).

    T5's `_random_segmentation` (shuffle k - 1 ones among the n - 1 gaps, i.e. a uniformly random (k - 1)-subset
    of the gaps as cuts) for all rows at once: the k - 1 gaps with the smallest keyed random keys are the cuts.
    Rows with fewer segments than `width` get zero-length segments at the end. A row's result depends only on
    its own key and counts, never on the rest of the batch.
    """
    batch = len(num_items)
    cuts = width - 1
    if cuts == 0:
        return num_items[:, None].astype(np.int64)
    gaps = num_items - 1  # (B,)
    num_gaps = int(gaps.max())
    # Random keys with the gap index in the low bits: distinct within a row, so exactly `cuts` keys are smallest
    # (plain 24-bit uniforms would tie in ~1% of 500-gap rows). uint32 throughout: no float64 over (B, n).
    low_bits = max(num_gaps - 1, 1).bit_length()
    index_mask = np.uint32((1 << low_bits) - 1)
    order = keyed_bits(keys, num_gaps, stream)  # (B, G)
    order &= ~index_mask
    order |= np.arange(num_gaps, dtype=np.uint32)
    if gaps.min() != num_gaps:  # ragged rows: gaps past a row's end are never chosen first
        order[np.arange(num_gaps)[None, :] >= gaps[:, None]] = np.uint32(0xFFFFFFFF)
    if cuts < num_gaps:
        # Selection (O(n) per row) instead of a full sort, on the keys themselves (the gap index rides in the low
        # bits): moving one uint32 array is ~2x cheaper than argpartition's keys + indices.
        order = np.partition(order, cuts - 1, axis=1)[:, :cuts]  # (B, cuts), unordered
    if num_segments.min() != width:
        # Rows with fewer segments keep their smallest keys; their other cuts go to the row end (empty segments).
        order.sort(axis=1)
        chosen = np.where(np.arange(cuts)[None, :] < (num_segments - 1)[:, None], order & index_mask, gaps[:, None])
    else:
        chosen = order & index_mask
    bounds = np.empty((batch, width + 1), dtype=np.int64)  # segment boundaries, 0 .. n
    bounds[:, 0] = 0
    bounds[:, 1:-1] = np.sort(chosen, axis=1)
    bounds[:, 1:-1] += 1  # a cut at gap g = a boundary before item g + 1
    bounds[:, -1] = num_items
    return np.diff(bounds, axis=1)  # (B, width)


def span_corrupt_flat(
    flat_ids: np.ndarray,
    lengths: np.ndarray,
    keys: np.ndarray,
    noise_density: float,
    mean_noise_span_length: float,
    sentinels: np.ndarray,
    stream: int = STREAM_NONNOISE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Span-corrupt rows given flat: `flat_ids` (sum(lengths),) row after row, `lengths` (B,) all >= 2.

    Returns (inputs, input_lengths, targets, target_lengths), the first and third flat in the same way, without
    EOS: inputs = non-noise tokens with one sentinel per noise span, targets = each sentinel followed by its span.
    Uses keyed streams `stream` and `stream + 1`.
    """
    batch = len(lengths)
    num_noise, num_spans = noise_counts(lengths, noise_density, mean_noise_span_length)  # (B,), (B,)
    width = int(num_spans.max())
    if width > len(sentinels):
        raise missing_sentinels_error(width, len(sentinels))
    nonnoise_lengths = random_segment_lengths(lengths - num_noise, num_spans, width, keys, stream)  # (B, K)
    noise_lengths = random_segment_lengths(num_noise, num_spans, width, keys, stream + 1)  # (B, K)
    # Interleave non-noise, noise, non-noise, ... (B, K, 2) → flat (B * 2K,): each row's spans tile its tokens
    # exactly, so consecutive rows' spans tile the flat token array.
    span_lengths = np.stack([nonnoise_lengths, noise_lengths], axis=2).reshape(-1)
    is_noise = np.repeat(np.tile(np.array([False, True]), batch * width), span_lengths)  # (S,)
    starts = (np.cumsum(span_lengths) - span_lengths).reshape(batch, width, 2)  # flat index of each span start
    span_sentinels = np.broadcast_to(sentinels[:width], (batch, width))  # (B, K): span s of any row → <extra_id_s>
    if num_spans.min() == width:
        nonnoise_starts, noise_starts = starts[:, :, 0].reshape(-1), starts[:, :, 1].reshape(-1)
        span_sentinels = span_sentinels.reshape(-1)
    else:  # drop the empty padding spans (their "start" is the next row's first token)
        real = np.arange(width)[None, :] < num_spans[:, None]  # (B, K)
        nonnoise_starts, noise_starts = starts[:, :, 0][real], starts[:, :, 1][real]
        span_sentinels = span_sentinels[real]

    # Inputs: non-noise tokens, and each noise span's first token turned into its sentinel.
    values = flat_ids.copy()
    values[noise_starts] = span_sentinels
    keep = ~is_noise
    keep[noise_starts] = True
    inputs = values[keep]  # boolean compaction keeps row-major order: rows stay contiguous
    # Targets: noise tokens, and each non-noise span's first token turned into the next noise span's sentinel.
    values[noise_starts] = flat_ids[noise_starts]
    values[nonnoise_starts] = span_sentinels
    is_noise[nonnoise_starts] = True
    targets = values[is_noise]
    return inputs, lengths - num_noise + num_spans, targets, num_noise + num_spans


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
        flat, ids, lengths = input_id_rows(features, self.pad_token_id)  # (N,), (B, T), (B,)
        pieces = document_pieces_of(features, flat, ids, lengths, self.pad_token_id)  # the examples: (P,) pieces
        if pieces.documented:
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
        keys = sample_keys(pieces.ids, pieces.lengths, fresh_seed(self.seed), self.epoch)  # (P,) uint32
        if self.decoder_only:
            return self._decoder_only(flat, pieces, keys)
        inputs, input_lengths, targets, target_lengths = span_corrupt_flat(
            flat, lengths, keys, self.noise_density, self.mean_noise_span_length, self.sentinel_ids
        )
        ones = np.ones_like(lengths)
        eos = self.eos_token_id
        input_ids, totals = assemble_rows(
            [(inputs, input_lengths), (eos, ones)], self.pad_token_id, self.inputs_length, self.pad_to_multiple_of
        )
        labels, _ = assemble_rows(
            [(targets, target_lengths), (eos, ones)], IGNORE_INDEX, self.targets_length, self.pad_to_multiple_of
        )
        if totals.min() == input_ids.shape[1]:
            attention_mask = np.ones(input_ids.shape, dtype=np.int64)
        else:
            attention_mask = (np.arange(input_ids.shape[1])[None, :] < totals[:, None]).astype(np.int64)
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

    def _decoder_only(self, flat: np.ndarray, pieces: Pieces, keys: np.ndarray) -> dict[str, torch.Tensor]:
        """[inputs EOS targets EOS] per piece (a 1-token piece: the token alone), a row's pieces side by side."""
        lengths = pieces.lengths  # (P,)
        long = lengths >= 2  # (P,) the pieces that can be corrupted
        every = bool(long.all())
        long_tokens = None if every else np.repeat(long, lengths)  # (N,)
        if long.any():
            inputs, input_lengths, targets, target_lengths = span_corrupt_flat(
                flat if every else flat[long_tokens],
                lengths if every else lengths[long],
                keys if every else keys[long],
                self.noise_density,
                self.mean_noise_span_length,
                self.sentinel_ids,
            )
        else:
            inputs = targets = np.zeros(0, dtype=np.int64)
            input_lengths = target_lengths = np.zeros(0, dtype=np.int64)
        eos = self.eos_token_id
        if every:
            ones = np.ones_like(lengths)
            parts = [(inputs, input_lengths), (eos, ones), (targets, target_lengths), (eos, ones)]
            prefix = input_lengths + 1  # (P,): inputs and their EOS are read bidirectionally
        else:

            def spread(values):  # (long pieces,) -> (P,), 0 for 1-token pieces
                out = np.zeros_like(lengths)
                out[long] = values
                return out

            framed = long.astype(np.int64)  # (P,) 1 where a piece gets its EOS tokens
            single = 1 - framed
            parts = [
                (inputs, spread(input_lengths)),
                (eos, framed),
                (targets, spread(target_lengths)),
                (eos, framed),
                (flat[~long_tokens], single),  # a 1-token piece as it is
            ]
            prefix = spread(input_lengths + 1) + single
        width = None if self.inputs_length is None else self.inputs_length + self.targets_length
        input_ids, totals = pieces.lay_out(parts, self.pad_token_id, width, self.pad_to_multiple_of)  # (B, W), (P,)
        return decoder_only_batch(
            input_ids,
            pieces,
            totals,
            prefix,
            attention_on_device=self.attention_on_device,
            attn_implementation=self.attn_implementation,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
