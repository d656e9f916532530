"""Exact and near duplicates planted in a small corpus are removed and counted; distinct documents stay."""

import numpy as np
from datasets import Dataset

from hf_pretrain.data.dedup import (
    document_hashes,
    document_signatures,
    exact_duplicates,
    minhash_signatures,
    near_duplicates,
    normalized_hash,
)

# Letters only: the normalisation maps every number to 0, so "w1" and "w2" would be the same word.
VOCABULARY = ["".join(np.random.default_rng(i).choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for i in range(2000)]


def planted_corpus(seed=0):
    """40 distinct documents, then 10 exact copies (case, punctuation, spacing changed) and 10 near copies (two
    word of a hundred replaced: Jaccard ≈ 0.9 over 5-word shingles), and 5 documents on the same topic that share only a sentence."""
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
    report = exact_duplicates(document_hashes(Dataset.from_dict({"text": corpus})))
    assert report.removed == 10 and report.clusters == 10 and report.cluster_sizes() == {2: 10}
    assert np.flatnonzero(~report.keep).tolist() == list(range(40, 50))
    assert report.representative[40:50].tolist() == list(range(10))  # each copy points at its original
    assert normalized_hash("Hello,   World!") == normalized_hash("hello world")


def test_near_duplicates_are_found_and_distinct_documents_kept():
    corpus = planted_corpus()
    documents = Dataset.from_dict({"text": corpus})
    report = near_duplicates(document_signatures(documents, num_perm=128, ngram=5), threshold=0.7)
    removed = np.flatnonzero(~report.keep).tolist()
    assert removed == list(range(40, 60))  # the exact copies are also near copies (Jaccard 1)
    assert report.representative[50:60].tolist() == list(range(10, 20))
    assert report.clusters == 20 and report.keep[:40].all() and report.keep[60:].all()


def test_a_cluster_keeps_its_first_document_only():
    base = " ".join(VOCABULARY[:80])
    variants = [base, base + " end", "start " + base, base.replace(VOCABULARY[40], "changed")]
    signatures = minhash_signatures(variants + ["something else entirely " * 5], num_perm=64, ngram=3)
    report = near_duplicates(signatures, threshold=0.8)
    assert report.keep.tolist() == [True, False, False, False, True]
    assert report.cluster_sizes() == {4: 1} and report.removed == 3


def test_signature_estimates_jaccard():
    a = " ".join(VOCABULARY[:200])
    b = " ".join(VOCABULARY[100:300])  # 5-word shingles: 96 shared of 296 -> Jaccard 0.32
    sig = minhash_signatures([a, b], num_perm=256, ngram=5)
    assert sig.dtype == np.uint32 and sig.shape == (2, 256)
    assert abs((sig[0] == sig[1]).mean() - 96 / 296) < 0.08  # 256 permutations: standard error ~0.03
