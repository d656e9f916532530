"""Metrics against hand-computed values: perplexity of a known distribution, NDCG@10 of known rankings, CIs."""

import math

import numpy as np
import pytest
import torch

from hf_pretrain.evaluation.intrinsic import score_causal
from hf_pretrain.evaluation.metrics import (
    accuracy,
    bits_per_byte,
    f1_score,
    mean_confidence_interval,
    ndcg_at_k,
    perplexity,
    squad_exact_match,
    squad_f1,
    student_t_quantile,
)


class FixedDistribution(torch.nn.Module):
    """A 'language model' that predicts the same next-token distribution everywhere."""

    def __init__(self, probabilities):
        super().__init__()
        self.log_probs = torch.log(torch.tensor(probabilities))

    def forward(self, input_ids, attention_mask=None):
        logits = self.log_probs.expand(*input_ids.shape, -1)
        return type("Output", (), {"logits": logits})()


def test_perplexity_of_a_known_distribution_through_the_windowed_scorer():
    # p = (1/2, 1/4, 1/4): a stream of 9 predicted tokens, four 0s, three 1s, two 2s.
    stream = [0, 0, 1, 2, 0, 1, 0, 1, 2, 0]  # the first token is context only
    model = FixedDistribution([0.5, 0.25, 0.25])
    for block_size, batch_size in [(3, 2), (4, 1), (100, 8)]:  # windows overlap by one token: each scored once
        nll, count = score_causal(model, stream, block_size, batch_size, pad_id=0)
        assert count == 9
        assert nll == pytest.approx(4 * math.log(2) + 5 * math.log(4))
        # ppl = exp(mean NLL) = 2^(14/9); bits per byte over 7 bytes: (14 bits) / 7 = 2.
        assert perplexity(nll, count) == pytest.approx(2 ** (14 / 9))
        assert bits_per_byte(nll, 7) == pytest.approx(2.0)


def test_uniform_distribution_has_perplexity_of_its_vocabulary_size():
    nll, count = score_causal(FixedDistribution([0.125] * 8), list(range(8)) * 3, 5, 4, pad_id=0)
    assert perplexity(nll, count) == pytest.approx(8.0)


def test_ndcg_at_10_of_known_rankings():
    # Binary relevance, documents 1 and 4 relevant; the scores rank them 2nd and 3rd.
    scores = [[0.9, 0.8, 0.1, 0.2, 0.7]]
    relevance = [[0, 1, 0, 0, 1]]
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(scores, relevance)[0] == pytest.approx(dcg / ideal)
    # Graded relevance (gain 2^rel - 1): ranking [d2 (rel 1), d0 (rel 3), d1 (rel 2)].
    graded = ndcg_at_k([[0.5, 0.1, 0.9]], [[3, 2, 1]])[0]
    assert graded == pytest.approx((1 / 1 + 7 / math.log2(3) + 3 / 2) / (7 / 1 + 3 / math.log2(3) + 1 / 2))
    # Only the top 10 count: a relevant document ranked 11th scores 0; perfect order scores 1; no relevant: 0.
    ranked_11th = np.zeros((1, 12))
    ranked_11th[0, 10] = 1
    assert ndcg_at_k(-np.arange(12.0)[None], ranked_11th)[0] == 0.0
    assert ndcg_at_k(-np.arange(12.0)[None], ranked_11th, k=11)[0] == pytest.approx(1 / math.log2(12))
    assert ndcg_at_k([[3.0, 2.0, 1.0]], [[1, 1, 0]])[0] == pytest.approx(1.0)
    assert ndcg_at_k([[1.0, 2.0]], [[0, 0]])[0] == 0.0


def test_ndcg_ties_keep_document_order():
    assert ndcg_at_k([[1.0, 1.0]], [[0, 1]])[0] == pytest.approx(1 / math.log2(3))


@pytest.mark.parametrize(
    ("df", "quantile"), [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (9, 2.262157163), (30, 2.042272456)]
)
def test_student_t_quantiles_match_tables(df, quantile):
    assert student_t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-6)


def test_confidence_interval_of_known_samples():
    mean, low, high = mean_confidence_interval([1, 2, 3, 4, 5])
    half = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)
    assert (mean, low, high) == pytest.approx((3.0, 3.0 - half, 3.0 + half))
    mean, low, high = mean_confidence_interval([0.8, 0.8, 0.8])
    assert (mean, low, high) == pytest.approx((0.8, 0.8, 0.8))
    mean, low, high = mean_confidence_interval([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    # A 90% interval is narrower: t(0.95, 4) = 2.131847.
    assert mean_confidence_interval([1, 2, 3, 4, 5], 0.90)[2] == pytest.approx(3 + 2.131847 * math.sqrt(0.5), abs=1e-5)


def test_classification_metrics():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    # tp=2, fp=1, fn=1 for class 1.
    assert f1_score([1, 1, 1, 0], [1, 1, 0, 1]) == pytest.approx(2 / 3)
    # Tagging, outside label 0: predicted entities (pos 1: B wrong type, pos 2: C right), gold (1: C, 2: C, 3: B).
    assert f1_score([0, 2, 2, 0], [0, 1, 2, 2], average="micro") == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    # Macro over classes {0, 1}: class 0 F1 = 2/3 (tp 1, fp 0, fn 1), class 1 F1 = 4/5 (tp 2, fp 1, fn 0).
    assert f1_score([0, 1, 1, 1], [0, 0, 1, 1], average="macro") == pytest.approx((2 / 3 + 4 / 5) / 2)
    with pytest.raises(ValueError, match="average"):
        f1_score([0], [0], average="weighted")


def test_squad_scores():
    assert squad_exact_match(["The Cat.", "dog"], [["cat"], ["a bird"]]) == 0.5
    # "the black cat sat" vs "black cat": normalised ["black", "cat", "sat"] vs ["black", "cat"]: P 2/3, R 1.
    assert squad_f1(["the black cat sat"], [["black cat", "dog"]]) == pytest.approx(0.8)
    assert squad_f1(["nothing here"], [["cat"]]) == 0.0
