"""Metrics of the evaluation protocol, computed locally with numpy.

`evaluate.load("accuracy")` fetches its metric script from the Hub on first use, so it fails on an offline machine
(and in our CI); these functions have no download and are checked against hand-computed values in the tests.

- language modelling: `perplexity`, `bits_per_byte` (comparable across tokenizers: the text's bytes are fixed);
- classification: `accuracy`, `f1_score` (binary, micro over the non-outside labels, or macro);
- extractive QA: SQuAD's `squad_exact_match` and `squad_f1` (max over the gold answers);
- retrieval: `ndcg_at_k` (NDCG@10 by default) from a score matrix and graded relevance;
- seeds: `mean_confidence_interval` (Student t, 95% by default).
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence

import numpy as np


def perplexity(nll_sum: float, num_tokens: int) -> float:
    """exp(mean negative log-likelihood in nats per token).

    >>> round(perplexity(4 * math.log(4), 4), 6)  # a uniform guess over 4 tokens
    4.0
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}.")
    return math.exp(nll_sum / num_tokens)


def bits_per_byte(nll_sum: float, num_bytes: int) -> float:
    """Total negative log-likelihood (nats) of a text, in bits per UTF-8 byte of that text.

    Per-token losses depend on the tokenizer (a larger vocabulary has fewer, harder tokens); the byte count of the
    scored text does not, so models with different tokenizers compare on this number.

    >>> bits_per_byte(8 * math.log(2), 8)  # one bit per byte
    1.0
    """
    if num_bytes <= 0:
        raise ValueError(f"num_bytes must be positive, got {num_bytes}.")
    return nll_sum / (math.log(2) * num_bytes)


def accuracy(predictions: Sequence, references: Sequence) -> float:
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape or predictions.size == 0:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} must match, non-empty.")
    return float((predictions == references).mean())


def f1_score(predictions: Sequence, references: Sequence, average: str = "binary", outside_label=0) -> float:
    """F1 of integer labels.

    average: "binary" (class 1 is positive), "micro" (every class but `outside_label` is positive: the token-level F1
    of tagging tasks, where "O" is the outside label) or "macro" (the unweighted mean of per-class F1).

    >>> f1_score([1, 1, 0, 0], [1, 0, 1, 0])  # tp=1, fp=1, fn=1
    0.5
    """
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} must match.")

    def f1(positive_pred: np.ndarray, positive_ref: np.ndarray, hits: np.ndarray) -> float:
        tp, fp, fn = hits.sum(), (positive_pred & ~hits).sum(), (positive_ref & ~hits).sum()
        return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 1.0  # nothing to find, nothing found

    if average == "binary":
        return f1(predictions == 1, references == 1, (predictions == 1) & (references == 1))
    if average == "micro":
        positive_pred, positive_ref = predictions != outside_label, references != outside_label
        return f1(positive_pred, positive_ref, positive_pred & (predictions == references))
    if average == "macro":
        labels = np.union1d(predictions, references)
        return float(
            np.mean([f1(predictions == c, references == c, (predictions == c) & (references == c)) for c in labels])
        )
    raise ValueError(f"average must be 'binary', 'micro' or 'macro', got {average!r}.")


# ---- extractive QA: the official SQuAD v1.1 normalisation and scores ---------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def _normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
    predicted, expected = _normalize_answer(prediction).split(), _normalize_answer(gold).split()
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if not predicted or not expected:
        return float(predicted == expected)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Fraction of predictions equal to one of their gold answers after SQuAD normalisation.

    >>> squad_exact_match(["The cat", "a dog"], [["cat"], ["bird", "dog!"]])
    1.0
    """
    scores = [
        max(_normalize_answer(p) == _normalize_answer(g) for g in golds) for p, golds in zip(predictions, answers)
    ]
    return float(np.mean(scores))


def squad_f1(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean over questions of the best token-overlap F1 against the gold answers.

    >>> squad_f1(["black cat"], [["cat"]])  # precision 1/2, recall 1
    0.6666666666666666
    """
    return float(np.mean([max(_token_f1(p, g) for g in golds) for p, golds in zip(predictions, answers)]))


# ---- retrieval --------------------------------------------------------------------------------------------------


def ndcg_at_k(scores, relevance, k: int = 10) -> np.ndarray:
    """NDCG@k of each query (Q,), from model scores (Q, D) and graded relevance (Q, D) (0 = not relevant).

    DCG@k = sum over the top-k documents by score of (2^rel - 1) / log2(rank + 1), rank from 1; NDCG divides by the
    DCG of the ideal order. Ties in the scores keep document order (a stable sort), so results are deterministic.
    A query without relevant documents scores 0.

    >>> float(ndcg_at_k([[0.9, 0.5, 0.1]], [[0, 1, 0]])[0]) == 1 / math.log2(3)  # the relevant one ranked second
    True
    """
    scores, relevance = np.atleast_2d(np.asarray(scores, dtype=np.float64)), np.atleast_2d(np.asarray(relevance))
    if scores.shape != relevance.shape:
        raise ValueError(f"scores {scores.shape} and relevance {relevance.shape} must have the same shape (Q, D).")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}.")
    k = min(k, scores.shape[1])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    gains = np.exp2(relevance.astype(np.float64)) - 1.0  # (Q, D)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
    dcg = (np.take_along_axis(gains, order, axis=1) * discounts).sum(1)
    ideal = (-np.sort(-gains, axis=1)[:, :k] * discounts).sum(1)
    return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)


# ---- confidence intervals over seeds ----------------------------------------------------------------------------


def _student_t_cdf(x: float, df: int) -> float:
    """P(T <= x) for x >= 0: 1/2 plus the density integrated over [0, x] by Simpson's rule (no scipy needed)."""
    grid = np.linspace(0.0, x, 4001)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
    h = x / 4000
    return 0.5 + h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())


def student_t_quantile(probability: float, df: int) -> float:
    """The `probability` quantile (> 0.5) of Student's t with `df` degrees of freedom, by bisection on the CDF.

    >>> round(student_t_quantile(0.975, 4), 4)
    2.7764
    """
    if not 0.5 < probability < 1.0 or df < 1:
        raise ValueError(f"need 0.5 < probability < 1 and df >= 1, got {probability}, {df}.")
    low, high = 0.0, 1.0
    while _student_t_cdf(high, df) < probability:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _student_t_cdf(middle, df) < probability else (low, middle)
    return (low + high) / 2


def mean_confidence_interval(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided Student-t interval of the mean; low = high = nan for fewer than 2 samples.

    >>> mean, low, high = mean_confidence_interval([1, 2, 3, 4, 5])
    >>> mean, round(low, 4), round(high, 4)  # 3 -/+ t(0.975, 4) * sqrt(2.5 / 5)
    (3.0, 1.0368, 4.9632)
    """
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_confidence_interval needs at least one sample.")
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    half = (
        student_t_quantile(0.5 + confidence / 2, values.size - 1) * float(values.std(ddof=1)) / math.sqrt(values.size)
    )
    return mean, mean - half, mean + half
