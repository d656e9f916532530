"""UL2 (Tay et al. 2022): a mixture of denoisers, one drawn per example, each announced by a mode token.

R-denoisers are T5 span corruption with short spans, X-denoisers extreme span corruption (long spans or high
density), the S-denoiser prefix LM. The denoiser of an example is a keyed draw from its own tokens (same choice in
any batch). The examples of every span denoiser then go through one vectorized span-corruption pass (`_span_draw`,
density and span length per example), those of each prefix denoiser through one split, and every token goes
straight to its place in the output (`_part_layout`: one scatter for the batch's tokens, one per kind of inserted
token); no Python loop runs over examples or spans.

Every example becomes (mode token, source, EOS) and (target, EOS):

* span denoisers: source = corrupted inputs, target = sentinels and spans (T5 layout);
* the prefix denoiser: source = the first part of the sequence, target = the rest (split as in prefix LM).

Encoder-decoder: `input_ids` = mode + source + EOS, `labels` = target + EOS. Decoder-only: one sequence of both
parts, `labels` -100 over the first part, bidirectional over the first part: the prefix-LM attention in the form
`attention_on_device` says (`prefix_lm.py`: a 4D `attention_mask` in `attn_implementation`'s format, or
`document_ids` and `prefix_mask` for the trainer to build it on the device), with `prefix_lengths` (B,).

Packed rows (`document_lengths`, decoder-only only): every document piece is an example of its own: its own
denoiser, its own corruption or split (keyed by its own tokens: the same packed or alone), laid out
[doc0 mode source EOS target EOS][doc1 ...] with `position_ids` restarting per piece, attention only inside each
piece and no label across a boundary. A piece of one token fits no denoiser: it stays one unlabelled token (no mode
token, no EOS), a document of its own. `denoiser_ids` is then one per piece (P,), row-major, -1 for those.
Encoder-decoder batches refuse `document_lengths` (the encoder would read the documents as one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ._documents import document_keys
from ._keyed import fresh_seed, keyed_fraction
from ._padding import check_pad_to_multiple_of
from ._part_layout import decoder_only_starts, encoder_decoder_starts, examples_of, merge_segments, place_segments
from ._rows import (
    IGNORE_INDEX,
    Pieces,
    check_fraction_range,
    draw_split_points,
    no_documents_error,
    shift_right,
    tokenizer_id,
)
from ._span_draw import SpanDraw, check_span_parameters, draw_spans
from .prefix_lm import check_attention_on_device, check_attn_implementation, decoder_only_batch
from .span_corruption import missing_sentinels_error, sentinel_ids

DENOISER_KINDS = ("span", "prefix")
STREAM_DENOISER = 5  # keyed stream of the denoiser choice
STREAM_BASE = 16  # denoiser d draws from streams STREAM_BASE + 2d and + 2d + 1


@dataclass(frozen=True)
class Denoiser:
    """One UL2 denoiser: `kind="span"` (T5 span corruption with these parameters) or `kind="prefix"` (prefix LM,
    split uniformly in `prefix_fraction_range`), announced by `mode_token` (None: no token)."""

    kind: str = "span"
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    mode_token: str | None = None
    prefix_fraction_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        if self.kind not in DENOISER_KINDS:
            raise ValueError(f"Denoiser kind={self.kind!r} is unknown; expected one of {DENOISER_KINDS}.")
        if self.kind == "span":
            check_span_parameters(self.noise_density, self.mean_noise_span_length, where="Denoiser ")
        else:
            check_fraction_range(self.prefix_fraction_range, "Denoiser prefix_fraction_range")


# The UL2 paper's families: R (regular spans), X (extreme: long spans, or high density), S (sequential / prefix LM).
UL2_DENOISERS = (
    Denoiser("span", noise_density=0.15, mean_noise_span_length=3.0, mode_token="[NLU]"),
    Denoiser("span", noise_density=0.15, mean_noise_span_length=32.0, mode_token="[NLG]"),
    Denoiser("span", noise_density=0.5, mean_noise_span_length=3.0, mode_token="[NLG]"),
    Denoiser("prefix", mode_token="[S2S]"),
)


@dataclass
class _Parts:
    """What each piece of a batch becomes (`DataCollatorForUL2._parts`)."""

    span: np.ndarray  # (S,) the pieces of span denoisers
    prefix: np.ndarray  # (Q,) the pieces of prefix denoisers
    single: np.ndarray  # the 1-token pieces, kept as they are
    mode: np.ndarray  # (P,) 1 where a mode token leads the piece
    first: np.ndarray  # (P,) mode + source + EOS
    second: np.ndarray  # (P,) target + EOS
    draw: SpanDraw  # the span pieces' spans
    split: np.ndarray  # (Q,) the prefix pieces' source lengths


@dataclass
class DataCollatorForUL2:
    """UL2 mixture-of-denoisers batches, for encoder-decoder models or (`decoder_only=True`) causal LMs.

    `denoisers` (default `UL2_DENOISERS`: R μ=3 15% `[NLU]`, X μ=32 15% and μ=3 50% `[NLG]`, S prefix LM `[S2S]`)
    are drawn per example with probabilities proportional to `weights` (default equal). Mode tokens are prepended
    when `add_mode_tokens`. `return_denoiser_ids` adds `denoiser_ids` (B,), the index of each example's denoiser
    ((P,), one per document piece, with `document_lengths`: module docstring). `attention_on_device`: where the
    decoder-only prefix mask is built (`prefix_lm.py`).

    >>> from hf_pretrain.data.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["a tiny corpus", "of two documents"], vocab_size=300, num_sentinels=10)
    >>> collator = DataCollatorForUL2(tok, return_denoiser_ids=True)
    >>> batch = collator([{"input_ids": list(range(100, 140))} for _ in range(3)])
    >>> sorted(batch)
    ['attention_mask', 'denoiser_ids', 'input_ids', 'labels']
    >>> modes = tok.convert_ids_to_tokens(batch["input_ids"][:, 0])
    >>> all(mode == UL2_DENOISERS[d].mode_token for mode, d in zip(modes, batch["denoiser_ids"].tolist()))
    True
    """

    tokenizer: PreTrainedTokenizerBase
    denoisers: Sequence[Denoiser] = UL2_DENOISERS
    weights: Sequence[float] | None = None
    add_mode_tokens: bool = True
    decoder_only: bool = False
    attn_implementation: str = "sdpa"
    attention_on_device: bool = False
    return_decoder_input_ids: bool = False
    return_denoiser_ids: bool = False
    decoder_start_token_id: int | None = None
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    epoch: int = 0

    def __post_init__(self):
        self.denoisers = tuple(self.denoisers)
        check_pad_to_multiple_of(self.pad_to_multiple_of)
        check_attention_on_device(self.attention_on_device, self.decoder_only)
        if not self.denoisers:
            raise ValueError("denoisers must name at least one Denoiser.")
        for i, denoiser in enumerate(self.denoisers):
            if not isinstance(denoiser, Denoiser):
                raise ValueError(f"denoisers[{i}] must be a Denoiser, got {type(denoiser).__name__}.")
            # Denoisers validate themselves, but a frozen dataclass can still be built with object.__setattr__.
            Denoiser.__post_init__(denoiser)
        weights = np.ones(len(self.denoisers)) if self.weights is None else np.asarray(self.weights, dtype=float)
        if weights.shape != (len(self.denoisers),):
            raise ValueError(f"weights must give one weight per denoiser ({len(self.denoisers)}), got {self.weights}.")
        if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be finite, non-negative and sum to a positive number, got {self.weights}.")
        self._cumulative = np.cumsum(weights) / weights.sum()  # (D,) for inverse-CDF sampling
        if self.decoder_only:
            check_attn_implementation(self.attn_implementation)
        self.eos_token_id = tokenizer_id(self.tokenizer, "eos_token_id", "UL2")
        self.pad_token_id = tokenizer_id(self.tokenizer, "pad_token_id", "UL2")
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        self.sentinel_ids = sentinel_ids(self.tokenizer)
        if any(d.kind == "span" for d in self.denoisers) and len(self.sentinel_ids) == 0:
            raise missing_sentinels_error(1, 0)
        vocab = self.tokenizer.get_vocab()
        self._mode_ids = []
        for i, denoiser in enumerate(self.denoisers):
            if not self.add_mode_tokens or denoiser.mode_token is None:
                self._mode_ids.append(None)
            elif denoiser.mode_token not in vocab:
                raise ValueError(
                    f"denoisers[{i}].mode_token={denoiser.mode_token!r} is not in the tokenizer; add it "
                    "(tokenizer.add_special_tokens({'extra_special_tokens': [...]}, "
                    "replace_extra_special_tokens=False)) or set add_mode_tokens=False."
                )
            else:
                self._mode_ids.append(vocab[denoiser.mode_token])
        # Per denoiser (D,), indexed by the pieces' choices: what the vectorized passes read
        self._is_span = np.array([d.kind == "span" for d in self.denoisers])
        self._density = np.array([d.noise_density for d in self.denoisers])
        self._mean_span = np.array([d.mean_noise_span_length for d in self.denoisers])
        self._mode_lengths = np.array([m is not None for m in self._mode_ids], dtype=np.int64)
        self._mode_values = np.array([m or 0 for m in self._mode_ids], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Fresh denoiser choices and corruption for repeated data."""
        self.epoch = epoch

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        flat, lengths, pieces, counts, documented = examples_of(features)  # (N,), (B,), (P,) the examples, (B,)
        if documented and not self.decoder_only:
            raise no_documents_error("UL2")
        if not documented and lengths.min() < 2:
            raise ValueError("UL2 needs sequences of at least 2 tokens.")
        keys = document_keys(flat, pieces, fresh_seed(self.seed), self.epoch)  # (P,) uint32
        choice = np.searchsorted(self._cumulative, keyed_fraction(keys, STREAM_DENOISER), side="right")  # (P,)
        choice = np.minimum(choice, len(self.denoisers) - 1)  # guards the cumulative sum's rounding at 1.0
        choice[pieces < 2] = -1  # 1-token pieces (packed rows only): fit no denoiser
        parts = self._parts(pieces, keys, choice)
        if self.decoder_only:
            first_at, second_at, _, width = decoder_only_starts(
                parts.first, parts.second, counts, None, self.pad_to_multiple_of
            )  # (P,), (P,): where each piece's parts start in the (B * W,) output
            out = np.full(len(counts) * width, self.pad_token_id, dtype=np.int64)
        else:
            first_at, second_at, width, target_width = encoder_decoder_starts(
                parts.first, parts.second, pad_to_multiple_of=self.pad_to_multiple_of
            )
            out = np.empty(len(counts) * (width + target_width), dtype=np.int64)  # inputs (B, W), labels (B, W2)
            out[: len(counts) * width] = self.pad_token_id
            out[len(counts) * width :] = IGNORE_INDEX
        self._write(out, flat, pieces, choice, parts, first_at, second_at)
        if self.decoder_only:
            batch = decoder_only_batch(
                out.reshape(len(counts), width),
                Pieces(pieces, counts, None, documented),  # no padded piece ids: the keys read the flat tokens
                parts.first + parts.second,
                parts.first,
                attention_on_device=self.attention_on_device,
                attn_implementation=self.attn_implementation,
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
        else:
            input_ids = out[: len(counts) * width].reshape(len(counts), width)
            labels = out[len(counts) * width :].reshape(len(counts), target_width)
            real = np.arange(width)[None, :] < parts.first[:, None]  # (B, W)
            batch = {
                "input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(real.astype(np.int64)),
                "labels": torch.from_numpy(labels),
            }
            if self.return_decoder_input_ids:
                batch["decoder_input_ids"] = torch.from_numpy(
                    shift_right(labels, self.decoder_start_token_id, self.pad_token_id)
                )
        if self.return_denoiser_ids:
            batch["denoiser_ids"] = torch.from_numpy(choice.astype(np.int64))
        return batch

    def _parts(self, pieces: np.ndarray, keys: np.ndarray, choice: np.ndarray) -> _Parts:
        """Every piece's draws and part lengths: one span-corruption pass for the pieces of every span denoiser
        (their densities and span lengths per piece), one split per prefix denoiser."""
        framed = choice >= 0  # (P,) the pieces that get a denoiser, its mode token and two EOS
        span = np.flatnonzero(framed & self._is_span[choice])  # (S,)
        prefix = np.flatnonzero(framed & ~self._is_span[choice])  # (Q,)
        mode = np.where(framed, self._mode_lengths[choice], 0)  # (P,) 1 where a mode token leads the piece
        draw = draw_spans(
            pieces[span],
            self._density[choice[span]],
            self._mean_span[choice[span]],
            keys[span],
            STREAM_BASE + 2 * choice[span],  # (S,) the keyed streams of each piece's denoiser
        )
        if len(span) and draw.num_spans.max() > len(self.sentinel_ids):
            raise missing_sentinels_error(int(draw.num_spans.max()), len(self.sentinel_ids))
        split = np.zeros_like(pieces)  # (P,) source length of the prefix pieces
        for d, denoiser in enumerate(self.denoisers):  # a loop over the few prefix denoisers, not over pieces
            if denoiser.kind == "prefix" and (group := np.flatnonzero(choice == d)).size:
                split[group] = draw_split_points(
                    keys[group], pieces[group], denoiser.prefix_fraction_range, STREAM_BASE + 2 * d
                )
        split = split[prefix]  # (Q,)
        # (P,) first = mode + source + EOS (read bidirectionally), second = target + EOS; a 1-token piece: itself
        first, second = np.ones_like(pieces), np.zeros_like(pieces)
        first[span] = mode[span] + draw.source_lengths + 1
        second[span] = draw.target_lengths + 1
        first[prefix] = mode[prefix] + split + 1
        second[prefix] = pieces[prefix] - split + 1
        return _Parts(span, prefix, np.flatnonzero(~framed), mode, first, second, draw, split)

    def _write(self, out, flat, pieces, choice, parts: _Parts, first_at, second_at) -> None:
        """Every piece into `out` (flat): its runs of its own tokens with one scatter, merged into token order (2
        per span, a prefix piece's source and target, a 1-token piece), then sentinels, mode tokens and EOS."""
        span, prefix, single, draw = parts.span, parts.prefix, parts.single, parts.draw
        source_at = first_at + parts.mode  # (P,)
        per_piece = np.ones_like(pieces)  # (P,) segments per piece
        per_piece[span] = 2 * draw.num_spans
        per_piece[prefix] = 2
        split_lengths = np.stack([parts.split, pieces[prefix] - parts.split], axis=1).reshape(-1)  # (2Q,)
        split_starts = np.stack([source_at[prefix], second_at[prefix]], axis=1).reshape(-1)
        ones = np.ones(len(single), dtype=np.int64)
        segments = merge_segments(
            per_piece,
            [
                (span, 2 * draw.num_spans, *draw.segments(source_at[span], second_at[span])),
                (prefix, np.full(len(prefix), 2), split_lengths, split_starts),
                (single, ones, ones, first_at[single]),
            ],
        )
        place_segments(out, flat, *segments)
        where, sentinels = draw.sentinels(source_at[span], second_at[span], self.sentinel_ids)  # (2K,) each
        out[where] = sentinels
        moded = np.flatnonzero(parts.mode)
        out[first_at[moded]] = self._mode_values[choice[moded]]
        framed = np.concatenate([span, prefix])
        out[first_at[framed] + parts.first[framed] - 1] = self.eos_token_id
        out[second_at[framed] + parts.second[framed] - 1] = self.eos_token_id
