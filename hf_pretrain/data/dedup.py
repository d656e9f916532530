"""Exact and near-duplicate rules: what counts as a duplicate, the LSH shape for a threshold, and confirmed clusters.

The pipeline steps (`hf_pretrain.data.pipeline_steps`) run datatrove's own stages around these rules:

- Exact: datatrove's `simplify_text` (lowercase, no punctuation, one space, numbers and diacritics normalised),
  hashed to 64 bits by datatrove's `ExactDedupSignature` / `ExactFindDedups`. The priority of a document is its
  source's position (the first listed source keeps its copy).
- Near: datatrove's MinHash (`MinhashDedupSignature`, 5-word shingles of the same normalised text) and its bucket
  stage (`MinhashDedupBuckets`) find candidate pairs. Datatrove then calls every shared bucket a duplicate; here a
  candidate is confirmed with the full signature (`confirm_cutoff`), and a cluster keeps its first document.

Recall at the threshold. A pair of true Jaccard J is a candidate with probability 1 - (1 - J^r)^b (b bands of r
rows) and is confirmed when its estimated Jaccard (the share of equal signature values, standard deviation
sqrt(J(1 - J) / P) for P permutations) reaches the cutoff. Confirming at the threshold itself would remove only
half of the pairs sitting exactly at it; the cutoff is therefore `threshold - 2 sigma(threshold)`, and the shape
keeps the candidate probability at the threshold >= 0.995: a pair at the threshold is removed with probability
>= 0.97, and pairs well below it (about threshold - 4 sigma) rarely. The measured curve is in benchmarks/data.py.
"""

from __future__ import annotations

import math

import numpy as np
import xxhash
from datatrove.utils.word_tokenizers import WordTokenizer

CONFIRM_SIGMAS = 2.0  # the cutoff sits this many standard deviations of the estimator below the threshold
MIN_CANDIDATE_PROBABILITY = 0.995  # LSH recall required at the threshold when choosing bands x rows


def simplify(text: str) -> str:
    from datatrove.utils.text import simplify_text

    return simplify_text(text)


def normalized_hash(text: str) -> int:
    """64-bit hash of the normalised text: documents differing only in case, spacing or punctuation collide."""
    return xxhash.xxh3_64_intdigest(simplify(text).encode("utf-8"))


def candidate_probability(jaccard, bands: int, rows: int):
    """Probability that two documents of true Jaccard `jaccard` share at least one of `bands` buckets."""
    return 1.0 - (1.0 - np.asarray(jaccard, dtype=np.float64) ** rows) ** bands


def lsh_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands x rows = num_perm: the most rows per band (fewest spurious candidates) that keep
    the candidate probability at `threshold` >= MIN_CANDIDATE_PROBABILITY.

    >>> lsh_shape(0.8, 256), lsh_shape(0.8, 128)
    ((32, 8), (32, 4))
    """
    for rows in sorted((r for r in range(1, num_perm + 1) if num_perm % r == 0), reverse=True):
        if candidate_probability(threshold, num_perm // rows, rows) >= MIN_CANDIDATE_PROBABILITY:
            return num_perm // rows, rows
    return num_perm, 1


def confirm_cutoff(threshold: float, num_perm: int) -> float:
    """The estimated Jaccard a candidate pair must reach: CONFIRM_SIGMAS estimator deviations below `threshold`.

    >>> round(confirm_cutoff(0.8, 256), 3)
    0.75
    """
    sigma = math.sqrt(threshold * (1.0 - threshold) / num_perm)
    return max(0.0, threshold - CONFIRM_SIGMAS * sigma)


class UnionFind:
    """Clusters of (task, document) keys whose root is the smallest key: the first document wins."""

    def __init__(self):
        self.parent: dict = {}

    def find(self, key):
        parent = self.parent.setdefault(key, key)
        if parent == key:
            return key
        root = self.find(parent)
        self.parent[key] = root
        return root

    def union(self, a, b) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            low, high = sorted((root_a, root_b))
            self.parent[high] = low


def candidate_groups(pairs: np.ndarray) -> list[np.ndarray]:
    """Datatrove's bucket stage writes, for each run of equal bucket signatures, the consecutive pairs (a, b),
    (b, c), ...: rebuild the runs (M, 2) keys each, so that every pair of a run is confirmed, not only neighbours.

    `pairs` is (N, 4) uint32 (task_a, doc_a, task_b, doc_b) in file order.
    """
    groups, current = [], []
    for task_a, doc_a, task_b, doc_b in pairs.tolist():
        if current and current[-1] == (task_a, doc_a):
            current.append((task_b, doc_b))
        else:
            if current:
                groups.append(np.asarray(current, dtype=np.int64))
            current = [(task_a, doc_a), (task_b, doc_b)]
    if current:
        groups.append(np.asarray(current, dtype=np.int64))
    return groups


def confirm_group(members: np.ndarray, signatures, cutoff: float, clusters: UnionFind) -> int:
    """Union every pair of `members` (M, 2) whose estimated Jaccard reaches `cutoff`; `signatures(task)` gives the
    (D, P) signature matrix of a task. Returns how many pairs were confirmed."""
    rows = np.stack([signatures(int(task))[int(doc)] for task, doc in members])  # (M, P)
    confirmed = 0
    for i in range(len(members) - 1):
        similarity = (rows[i + 1 :] == rows[i]).mean(axis=1)  # (M - i - 1,) estimated Jaccard
        for j in np.flatnonzero(similarity >= cutoff) + i + 1:
            clusters.union(tuple(members[i].tolist()), tuple(members[j].tolist()))
            confirmed += 1
    return confirmed


def shingle_hash(text: str) -> int:
    """datatrove's xxhash64 of a shingle; xxhash >= 4 no longer hashes `str`, which datatrove 0.10 passes it."""
    return xxhash.xxh64_intdigest(text.encode("utf-8"))


class SpaceWords(WordTokenizer):
    """Words of already simplified text (datatrove's `simplify_text` leaves single spaces between them)."""

    def __init__(self):
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return [word for word in text.split(" ") if word]

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


# ---------------------------------------------------------------------------------------------------------------
# In memory, for a few thousand documents (tests, benchmarks/data.py's recall curve): the same signatures (datatrove's
# MinhashDedupSignature) and the same confirmation and clustering rule as the pipeline's cluster stage.
# ---------------------------------------------------------------------------------------------------------------


def _signature_step(num_perm: int, ngram: int, seed: int, threshold: float = 0.8):
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    bands, rows = lsh_shape(threshold, num_perm)
    config = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows, seed=seed,
                           hash_config=HashConfig(precision=64))  # fmt: skip
    step = MinhashDedupSignature("/tmp/unused", config=config, language=SpaceWords())
    step._hash_func = shingle_hash
    return step


def minhash_signatures(texts: list[str], num_perm: int = 256, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """(D, num_perm) uint64 MinHash signatures of `texts`, as the pipeline computes them (an all-zero row: no
    shingle)."""
    step = _signature_step(num_perm, ngram, seed)
    out = np.zeros((len(texts), num_perm), dtype=np.uint64)
    for i, text in enumerate(texts):
        shingles = step.get_shingles(text)
        if shingles.size:
            out[i] = np.asarray(step.get_signature(shingles), dtype=np.uint64).reshape(-1)
    return out


def exact_duplicates(hashes: np.ndarray) -> np.ndarray:
    """Keep mask (D,): the first document of each hash.

    >>> exact_duplicates(np.array([7, 3, 7, 7, 5], dtype=np.uint64)).tolist()
    [True, True, False, False, True]
    """
    _, first = np.unique(hashes, return_index=True)
    keep = np.zeros(len(hashes), dtype=bool)
    keep[first] = True
    return keep


def near_duplicates(signatures: np.ndarray, threshold: float = 0.8) -> np.ndarray:
    """Keep mask (D,): LSH candidates (the bands of `lsh_shape`) confirmed at `confirm_cutoff`, clustered, the
    first document of each cluster kept: the pipeline's rule, in memory."""
    count, num_perm = signatures.shape
    bands, rows = lsh_shape(threshold, num_perm)
    signed = np.flatnonzero(signatures.any(axis=1))
    clusters, cutoff = UnionFind(), confirm_cutoff(threshold, num_perm)
    for band in range(bands):
        keys = signatures[signed, band * rows : (band + 1) * rows]
        _, inverse, sizes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        for group in np.flatnonzero(sizes > 1):
            members = signed[inverse.reshape(-1) == group]
            confirm_group(np.stack([np.zeros_like(members), members], 1), lambda _: signatures, cutoff, clusters)
    keep = np.ones(count, dtype=bool)
    for key in clusters.parent:
        if clusters.find(key) != key:
            keep[key[1]] = False
    return keep
