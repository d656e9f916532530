"""The reference point for the span-corruption benchmark: T5 span corruption done one example at a time in NumPy.

Written from the algorithm in the shape of the old Flax example collator (`FlaxDataCollatorForT5MLM` in
transformers' `run_t5_mlm_flax.py`): a noise mask per example from `random_spans_noise_mask` (a Python call per
example, np.random shuffles), then batch-wide `create_sentinel_ids` and `filter_input_ids`. The Flax collator
counts sentinels down from the vocabulary end (`vocab_size - sentinel`); this one maps sentinel numbers through the
tokenizer's `<extra_id_N>` ids instead, so both collators emit the same token ids.
"""

from __future__ import annotations

import numpy as np


class NumpySpanCorruptionBaseline:
    """Per-example NumPy T5 span corruption over equal-length rows (the Flax example's contract)."""

    def __init__(
        self,
        sentinel_ids: np.ndarray,
        eos_token_id: int,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        seed: int = 0,
    ):
        self.sentinel_ids = np.asarray(sentinel_ids, dtype=np.int64)
        self.eos_token_id = eos_token_id
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length
        self.rng = np.random.RandomState(seed)  # the Flax example shuffles with the legacy global np.random

    def __call__(self, examples: list[dict]) -> dict[str, np.ndarray]:
        input_ids = np.array([example["input_ids"] for example in examples], dtype=np.int64)  # (B, L)
        batch_size, length = input_ids.shape
        mask_indices = np.asarray([self.random_spans_noise_mask(length) for _ in range(batch_size)])  # (B, L)
        labels_mask = ~mask_indices
        input_sentinels = self.create_sentinel_ids(mask_indices.astype(np.int8))
        labels_sentinels = self.create_sentinel_ids(labels_mask.astype(np.int8))
        return {
            "input_ids": self.filter_input_ids(input_ids, input_sentinels),
            "labels": self.filter_input_ids(input_ids, labels_sentinels),
        }

    def create_sentinel_ids(self, mask: np.ndarray) -> np.ndarray:
        """Sentinel token id at each span start, -1 inside spans, 0 elsewhere (B, L)."""
        starts = mask - np.roll(mask, 1, axis=-1) * mask
        starts[:, 0] = mask[:, 0]
        numbers = np.where(starts != 0, np.cumsum(starts, axis=-1), 0)  # 1, 2, ... at span starts
        sentinels = np.where(numbers != 0, self.sentinel_ids[np.maximum(numbers - 1, 0)], 0)
        return sentinels - (mask - starts)

    def filter_input_ids(self, input_ids: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
        """Replace span starts by their sentinel, drop the rest of each span, append EOS (B, L')."""
        full = np.where(sentinel_ids != 0, sentinel_ids, input_ids)
        kept = full[full >= 0].reshape((input_ids.shape[0], -1))
        return np.concatenate([kept, np.full((input_ids.shape[0], 1), self.eos_token_id, dtype=np.int64)], axis=-1)

    def random_spans_noise_mask(self, length: int) -> np.ndarray:
        """One example's noise mask (L,): T5's noise/span counts, segmentation by shuffling, non-noise first."""
        num_noise_tokens = min(max(int(round(length * self.noise_density)), 1), length - 1)
        num_noise_spans = max(int(round(num_noise_tokens / self.mean_noise_span_length)), 1)
        num_noise_spans = min(num_noise_spans, length - num_noise_tokens)
        num_nonnoise_tokens = length - num_noise_tokens

        def random_segmentation(num_items: int, num_segments: int) -> np.ndarray:
            first_in_segment = np.arange(num_items - 1) < num_segments - 1
            self.rng.shuffle(first_in_segment)
            first_in_segment = np.pad(first_in_segment, [[1, 0]])
            segment_id = np.cumsum(first_in_segment)
            _, segment_length = np.unique(segment_id, return_counts=True)  # as the Flax example counts them
            return segment_length

        noise_span_lengths = random_segmentation(num_noise_tokens, num_noise_spans)
        nonnoise_span_lengths = random_segmentation(num_nonnoise_tokens, num_noise_spans)
        interleaved = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(-1)
        span_starts = np.cumsum(interleaved)[:-1]
        span_start_indicator = np.zeros(length, dtype=np.int8)
        span_start_indicator[span_starts] = 1
        span_number = np.cumsum(span_start_indicator)
        return span_number % 2 == 1
