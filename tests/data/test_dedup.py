"""Duplicate rules: exact keys through normalisation, the LSH shape for a threshold (recall >= 0.95 at it), and
candidates confirmed with the full signature, clusters keeping their first document."""

import numpy as np
import pytest

from hf_pretrain.data.dedup import (
    candidate_groups,
    candidate_probability,
    confirm_cutoff,
    exact_duplicates,
    lsh_shape,
    minhash_signatures,
    near_duplicates,
    normalized_hash,
)

# Letters only: the normalisation maps every number to 0, so "w1" and "w2" would be the same word.
VOCABULARY = ["".join(np.random.default_rng(i).choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for i in range(2000)]


def planted_corpus(seed=0):
    """40 distinct documents, 10 exact copies (case, punctuation, spacing changed), 10 near copies (one word of a
    hundred replaced: Jaccard ~0.9 over 5-word shingles) and 5 documents sharing only a sentence."""
    rng = np.random.default_rng(seed)
    originals = [" ".join(rng.choice(VOCABULARY, 100)) for _ in range(40)]
    exact = [originals[i].upper().replace(" ", " ,  ") + "!" for i in range(10)]
    near = []
    for i in range(10, 20):
        words = originals[i].split()
        words[rng.integers(100)] = "replaced"
        near.append(" ".join(words))
    shared = "the committee met on tuesday to discuss the budget"
    related = [shared + " " + " ".join(rng.choice(VOCABULARY, 60)) for _ in range(5)]
    return originals + exact + near + related


def test_exact_duplicates_are_found_through_normalisation():
    corpus = planted_corpus()
    keep = exact_duplicates(np.array([normalized_hash(t) for t in corpus], dtype=np.uint64))
    assert np.flatnonzero(~keep).tolist() == list(range(40, 50))
    assert normalized_hash("Hello,   World!") == normalized_hash("hello world")


def test_near_duplicates_are_found_and_distinct_documents_kept():
    keep = near_duplicates(minhash_signatures(planted_corpus()), threshold=0.8)
    assert np.flatnonzero(~keep).tolist() == list(range(40, 60))  # exact copies are near copies too (Jaccard 1)


@pytest.mark.parametrize("threshold, num_perm", [(0.8, 256), (0.8, 128), (0.7, 256), (0.9, 112)])
def test_the_lsh_shape_keeps_recall_at_the_threshold(threshold, num_perm):
    bands, rows = lsh_shape(threshold, num_perm)
    assert bands * rows == num_perm
    assert candidate_probability(threshold, bands, rows) >= 0.995  # 9 x 13 at 0.8 gave 0.40
    assert confirm_cutoff(threshold, num_perm) < threshold


def test_runs_of_consecutive_pairs_become_groups():
    pairs = np.array([[0, 1, 0, 5], [0, 5, 1, 2], [0, 3, 1, 4]], dtype=np.uint32)
    groups = candidate_groups(pairs)
    assert [g.tolist() for g in groups] == [[[0, 1], [0, 5], [1, 2]], [[0, 3], [1, 4]]]


def test_signature_estimates_jaccard():
    a = " ".join(VOCABULARY[:200])
    b = " ".join(VOCABULARY[100:300])  # 5-word shingles: 96 shared of 296 -> Jaccard 0.32
    signatures = minhash_signatures([a, b], num_perm=256, ngram=5)
    assert signatures.dtype == np.uint64 and signatures.shape == (2, 256)
    assert abs((signatures[0] == signatures[1]).mean() - 96 / 296) < 0.08  # standard error ~0.03
