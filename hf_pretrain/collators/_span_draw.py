"""T5's span counts and the keyed draw of the spans, for many examples of any lengths at once, in flat space.

T5 (Raffel et al. 2020) drops round(n · noise_density) of an example's n tokens in spans of mean length
`mean_noise_span_length`; the spans are T5's segmentation: the kept (non-noise) tokens and the noise tokens are each
cut into k non-empty segments by a uniformly random choice of k - 1 of their gaps, and the segments interleave,
non-noise first (so an example always starts with a kept token and ends in noise).

Everything here runs over the examples back to back (flat, unpadded: packed rows hold documents of very different
lengths, and padding each to the longest costs ~3x the tokens). An example's cuts are the k - 1 gaps with the
smallest keyed random draws (ties to the lower gap), found without a sort over all gaps: a threshold three standard
deviations above the expected k - 1-th draw keeps a few more than k - 1 candidates per example in one pass, and only
those (~k per example) are sorted. The result is exactly the k - 1 smallest (an example with too few candidates is
redone with twice the threshold), so a uniformly random (k - 1)-subset, and a function of the example's own key only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._keyed import _stream_keys, mix32

_GOLDEN32 = np.uint32(0x9E3779B9)  # the counter step of `_keyed.keyed_bits`: gap j's draw is keyed_bits(...)[p, j]
_MARGIN_SIGMAS, _MARGIN_EXTRA = 3.0, 4.0  # candidates expected per example: c + 3·sqrt(c) + 4 for c cuts
_LOW32 = np.uint64(0xFFFFFFFF)
_LAST = np.uint64(0xFFFFFFFFFFFFFFFF)


def check_span_parameters(noise_density: float, mean_noise_span_length: float, where: str = "") -> None:
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"{where}noise_density must lie in (0, 1), got {noise_density!r}.")
    if not mean_noise_span_length >= 1.0:
        raise ValueError(f"{where}mean_noise_span_length must be at least 1, got {mean_noise_span_length!r}.")


def noise_counts(lengths: np.ndarray, noise_density, mean_noise_span_length):
    """Noise tokens and noise spans per example (each (B,) int64), T5's rule, valid for lengths >= 2.

    noise = round(length · density) clipped to [1, length - 1]; spans = max(1, round(noise / μ)), also at most
    the non-noise count (every non-noise segment needs a token; T5 would fail there, only at extreme densities).
    The density and μ may be one per example ((B,) arrays: UL2's span denoisers in one pass).
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


def segment_lengths(num_items: np.ndarray, num_segments: np.ndarray, stream_keys: np.ndarray) -> np.ndarray:
    """Cut example p's `num_items[p]` items into `num_segments[p]` non-empty segments, uniformly at random.

    Returns the segment lengths flat (sum(num_segments),), example after example, in order. `stream_keys` (P,)
    uint32 are the examples' keys of this draw (`_keyed._stream_keys(keys, stream)`); gap j of example p draws
    `mix32(mix32(stream_keys[p] + j · golden))`, `keyed_bits`' draw, and the cuts are the smallest.
    """
    num_items = np.asarray(num_items, dtype=np.int64)
    num_segments = np.asarray(num_segments, dtype=np.int64)
    item_start = np.cumsum(num_items) - num_items  # (P,) flat index of each example's first item
    first = np.zeros(int(num_items.sum()), dtype=bool)  # (I,) True at every segment's first item
    first[item_start] = True
    cuts = num_segments - 1  # (P,)
    active = np.flatnonzero(cuts > 0)
    if active.size:
        gaps, wanted = num_items[active] - 1, cuts[active]  # (A,) each, gaps >= wanted >= 1
        cut = _smallest_gaps(gaps, wanted, stream_keys[active])  # (sum(wanted),) gap index within its example
        first[np.repeat(item_start[active] + 1, wanted) + cut] = True  # a cut at gap g starts a segment at g + 1
    return np.diff(np.flatnonzero(first), append=len(first))  # segments tile the items, example after example


def _smallest_gaps(gaps: np.ndarray, wanted: np.ndarray, stream_keys: np.ndarray) -> np.ndarray:
    """For every example a of (A,), the indices of the `wanted[a]` of its `gaps[a]` gaps with the smallest draws:
    (sum(wanted),), example after example, unordered within one."""
    gap_start = np.cumsum(gaps) - gaps  # (A,)
    total = int(gaps.sum())
    # (G,) the draws of every gap, flat: stream_key + j · golden with j = flat index - gap_start (mod 2**32)
    bits = np.repeat(stream_keys - gap_start.astype(np.uint32) * _GOLDEN32, gaps)
    bits += np.arange(total, dtype=np.uint32) * _GOLDEN32
    mix32(mix32(bits))
    # Candidates: draws at most a threshold expected to let c + 3·sqrt(c) + 4 through: at least c but for ~0.1%
    # of the examples, whose threshold then doubles until they have c.
    fraction = (wanted + _MARGIN_SIGMAS * np.sqrt(wanted) + _MARGIN_EXTRA) / gaps  # (A,) of the draws' range
    while True:
        threshold = np.minimum(fraction * 2.0**32, 2.0**32 - 1).astype(np.uint32)  # (A,); fraction >= 1: all
        candidate = bits <= np.repeat(threshold, gaps)  # (G,)
        count = np.add.reduceat(candidate, gap_start, dtype=np.int64)  # (A,), every example has a gap
        short = count < wanted
        if not short.any():
            break
        fraction[short] *= 2.0
    where = np.flatnonzero(candidate)  # (C,) in example order
    first_candidate = np.cumsum(count) - count  # (A,)
    within = np.repeat(gap_start, count)  # (C,)
    # Sort each example's candidates by (draw, gap): a (A, max count) table of draw << 32 | gap, ~k per row.
    order = bits[where].astype(np.uint64) << np.uint64(32)
    order |= (where - within).astype(np.uint64)
    width = int(count.max())
    table = np.full(len(gaps) * width, _LAST, dtype=np.uint64)  # after every candidate
    slot = np.arange(len(where)) + np.repeat(np.arange(len(gaps)) * width - first_candidate, count)
    table[slot] = order
    table = np.sort(table.reshape(len(gaps), width), axis=1)[:, : int(wanted.max())]  # (A, max wanted)
    keep = np.arange(table.shape[1])[None, :] < wanted[:, None]
    return (table[keep] & _LOW32).astype(np.int64)


@dataclass
class SpanDraw:
    """The spans of examples (P,), T5's layout: non-noise segment s, noise span s, for s < k, in token order.

    Span s of an example becomes sentinel s in its source (`<extra_id_s>` where the span was) and sentinel s then
    the span in its target. Per span (K = the sum of k, example after example): the lengths of its non-noise
    segment and of itself, its sentinel number and its example's non-noise and noise tokens before them.
    """

    lengths: np.ndarray  # (P,) the examples' raw lengths
    num_noise: np.ndarray  # (P,)
    num_spans: np.ndarray  # (P,) k
    kept: np.ndarray  # (K,) length of non-noise segment s
    noise: np.ndarray  # (K,) length of noise span s
    example: np.ndarray  # (K,) the span's example
    index: np.ndarray  # (K,) s, the span's sentinel number
    kept_before: np.ndarray  # (K,) the example's non-noise tokens before non-noise segment s
    noise_before: np.ndarray  # (K,) the example's noise tokens before noise span s

    @property
    def source_lengths(self) -> np.ndarray:
        """(P,) the corrupted sources: kept tokens and one sentinel per span (no EOS)."""
        return self.lengths - self.num_noise + self.num_spans

    @property
    def target_lengths(self) -> np.ndarray:
        """(P,) the targets: every noise token behind its span's sentinel (no EOS)."""
        return self.num_noise + self.num_spans

    def segments(self, source_start: np.ndarray, target_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The examples' tokens as segments in token order (non-noise 0, noise 0, non-noise 1, ...): their lengths
        (2K,) and the output index of each segment's first token, for sources starting at `source_start` (P,) and
        targets at `target_start` (P,) in the output (`_part_layout.place_segments`)."""
        example = self.example
        lengths = np.stack([self.kept, self.noise], axis=1).reshape(-1)
        kept_at = source_start[example] + self.kept_before + self.index  # behind the s sentinels before it
        noise_at = target_start[example] + self.noise_before + self.index + 1  # behind its own sentinel
        return lengths, np.stack([kept_at, noise_at], axis=1).reshape(-1)

    def sentinels(
        self, source_start: np.ndarray, target_start: np.ndarray, sentinel_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Output indices (2K,) and ids (2K,) of the sentinels: span s's in the source, then in the target."""
        example = self.example
        in_source = source_start[example] + self.kept_before + self.kept + self.index
        in_target = target_start[example] + self.noise_before + self.index
        ids = sentinel_ids[self.index]
        return np.concatenate([in_source, in_target]), np.concatenate([ids, ids])


def draw_spans(lengths, noise_density, mean_noise_span_length, keys: np.ndarray, streams) -> SpanDraw:
    """T5 span corruption draws of examples of `lengths` (P,) >= 2 keyed by `keys` (P,); density and μ scalars or
    (P,) arrays; the non-noise cuts from keyed stream `streams` (an int or (P,)), the noise cuts from `streams` + 1."""
    lengths = np.asarray(lengths, dtype=np.int64)
    num_noise, num_spans = noise_counts(lengths, noise_density, mean_noise_span_length)  # (P,), (P,)
    # Both segmentations in one pass: the kept tokens of every example, then their noise tokens, as 2P examples
    streams = np.broadcast_to(np.asarray(streams, dtype=np.int64), lengths.shape)
    both = segment_lengths(
        np.concatenate([lengths - num_noise, num_noise]),
        np.concatenate([num_spans, num_spans]),
        _stream_keys(np.concatenate([keys, keys]), np.concatenate([streams, streams + 1])),
    )
    kept, noise = both[: len(both) // 2], both[len(both) // 2 :]  # (K,) each
    example = np.repeat(np.arange(len(lengths)), num_spans)  # (K,)
    first_span = (np.cumsum(num_spans) - num_spans)[example]  # (K,) the example's first span
    index = np.arange(len(kept)) - first_span  # (K,) s within the example
    # Exclusive running sums within each example: the flat running sum less its value at the example's first span.
    kept_before, noise_before = np.cumsum(kept) - kept, np.cumsum(noise) - noise
    kept_before -= kept_before[first_span]
    noise_before -= noise_before[first_span]
    return SpanDraw(lengths, num_noise, num_spans, kept, noise, example, index, kept_before, noise_before)
