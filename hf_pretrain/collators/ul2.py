"""UL2 (Tay et al. 2022): a mixture of denoisers, one drawn per example, each announced by a mode token.

R-denoisers are T5 span corruption with short spans, X-denoisers extreme span corruption (long spans or high
density), the S-denoiser prefix LM. The denoiser of an example is a keyed draw from its own tokens (same choice in
any batch); the batch is then grouped by denoiser so each group runs the vectorized span-corruption or prefix-LM
code once (a Python loop over the few denoisers, none over examples), and all groups are assembled into one padded
batch in the original example order.

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

from ._keyed import fresh_seed, keyed_fraction, sample_keys
from ._padding import check_pad_to_multiple_of
from ._rows import (
    IGNORE_INDEX,
    assemble_rows,
    check_fraction_range,
    document_pieces_of,
    draw_split_points,
    input_id_rows,
    no_documents_error,
    shift_right,
    tokenizer_id,
)
from .prefix_lm import check_attention_on_device, check_attn_implementation, decoder_only_batch
from .span_corruption import check_span_parameters, missing_sentinels_error, sentinel_ids, span_corrupt_flat

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

    def set_epoch(self, epoch: int) -> None:
        """Fresh denoiser choices and corruption for repeated data."""
        self.epoch = epoch

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        flat, ids, lengths = input_id_rows(features, self.pad_token_id)  # (N,), (B, T), (B,)
        pieces = document_pieces_of(features, flat, ids, lengths, self.pad_token_id)  # the examples: (P,) pieces
        if pieces.documented and not self.decoder_only:
            raise no_documents_error("UL2")
        if not pieces.documented and lengths.min() < 2:
            raise ValueError("UL2 needs sequences of at least 2 tokens.")
        piece_ids, piece_lengths = pieces.ids, pieces.lengths  # (P, L), (P,)
        keys = sample_keys(piece_ids, piece_lengths, fresh_seed(self.seed), self.epoch)  # (P,) uint32
        choice = np.searchsorted(self._cumulative, keyed_fraction(keys, STREAM_DENOISER), side="right")  # (P,)
        choice = np.minimum(choice, len(self.denoisers) - 1)  # guards the cumulative sum's rounding at 1.0
        single = np.flatnonzero(piece_lengths < 2)  # 1-token pieces (packed rows only): fit no denoiser
        choice[single] = -1
        cols = np.arange(piece_ids.shape[1])[None, :]  # (1, L)
        equal_lengths = piece_lengths.min() == piece_ids.shape[1]
        if not equal_lengths:
            # Ragged pieces are gathered from the flat tokens (N,), not from their padded (P, L) rows: packed rows'
            # pieces pad to ~3x their tokens. The denoiser of each token, and its offset in its piece:
            token_choice = np.repeat(choice, piece_lengths)  # (N,)
            within = np.arange(len(flat)) - np.repeat(np.cumsum(piece_lengths) - piece_lengths, piece_lengths)

        # One vectorized pass per denoiser over its pieces; parts are collected flat, in grouped piece order.
        rows, modes, mode_lengths, sources, source_lengths, targets, target_lengths, eos_lengths = (
            [] for _ in range(8)
        )
        for d, denoiser in enumerate(self.denoisers):
            group = np.flatnonzero(choice == d)  # (G,)
            if len(group) == 0:
                continue
            group_lengths, group_keys = piece_lengths[group], keys[group]
            # (sum of the group's lengths,): the group's real tokens, piece after piece
            in_group = None if equal_lengths else token_choice == d  # (N,)
            group_flat = piece_ids[group].reshape(-1) if equal_lengths else flat[in_group]
            stream = STREAM_BASE + 2 * d
            if denoiser.kind == "span":
                source, source_length, target, target_length = span_corrupt_flat(
                    group_flat,
                    group_lengths,
                    group_keys,
                    denoiser.noise_density,
                    denoiser.mean_noise_span_length,
                    self.sentinel_ids,
                    stream,
                )
            else:
                split = draw_split_points(group_keys, group_lengths, denoiser.prefix_fraction_range, stream)
                if equal_lengths:
                    in_source = (cols < split[:, None]).reshape(-1)  # (G * L,)
                else:
                    in_source = within[in_group] < np.repeat(split, group_lengths)  # (tokens of the group,)
                source, target = group_flat[in_source], group_flat[~in_source]
                source_length, target_length = split, group_lengths - split
            has_mode = self._mode_ids[d] is not None
            rows.append(group)
            modes.append(np.full(len(group) if has_mode else 0, self._mode_ids[d] or 0, dtype=np.int64))
            mode_lengths.append(np.full(len(group), int(has_mode), dtype=np.int64))
            sources.append(source)
            source_lengths.append(source_length)
            targets.append(target)
            target_lengths.append(target_length)
            eos_lengths.append(np.ones(len(group), dtype=np.int64))
        if len(single):  # the token as it is: no mode token, no EOS, nothing to predict
            zeros = np.zeros(len(single), dtype=np.int64)
            rows.append(single)
            modes.append(zeros[:0])
            mode_lengths.append(zeros)
            sources.append(piece_ids[single, 0])
            source_lengths.append(zeros + 1)
            targets.append(zeros[:0])
            target_lengths.append(zeros)
            eos_lengths.append(zeros)
        grouped = np.concatenate(rows)  # (P,) piece of each grouped piece: parts land there directly
        mode, mode_length = np.concatenate(modes), np.concatenate(mode_lengths)
        source, source_length = np.concatenate(sources), np.concatenate(source_lengths)
        target, target_length = np.concatenate(targets), np.concatenate(target_lengths)
        eos, eos_length = self.eos_token_id, np.concatenate(eos_lengths)
        first = [(mode, mode_length), (source, source_length), (eos, eos_length)]  # what the model reads
        second = [(target, target_length), (eos, eos_length)]  # what it predicts
        if self.decoder_only:
            input_ids, totals = pieces.lay_out(
                first + second, self.pad_token_id, None, self.pad_to_multiple_of, grouped
            )
            prefix = np.empty_like(totals)  # (P,)
            prefix[grouped] = mode_length + source_length + eos_length
            batch = decoder_only_batch(
                input_ids,
                pieces,
                totals,
                prefix,
                attention_on_device=self.attention_on_device,
                attn_implementation=self.attn_implementation,
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
        else:
            batch = {}
            input_ids, totals = assemble_rows(first, self.pad_token_id, None, self.pad_to_multiple_of, grouped)
            labels, _ = assemble_rows(second, IGNORE_INDEX, None, self.pad_to_multiple_of, grouped)
            batch["input_ids"] = torch.from_numpy(input_ids)
            batch["attention_mask"] = torch.from_numpy(
                (np.arange(input_ids.shape[1])[None, :] < totals[:, None]).astype(np.int64)
            )
            batch["labels"] = torch.from_numpy(labels)
            if self.return_decoder_input_ids:
                batch["decoder_input_ids"] = torch.from_numpy(
                    shift_right(labels, self.decoder_start_token_id, self.pad_token_id)
                )
        if self.return_denoiser_ids:
            batch["denoiser_ids"] = torch.from_numpy(choice.astype(np.int64))
        return batch
