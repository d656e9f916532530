"""Exact and near-duplicate removal: a hash of normalised text, then MinHash-LSH at a Jaccard threshold.

Both keep the first document of each duplicate cluster (in corpus order, so the earlier source wins a tie between
sources) and report how many documents each removed and how many clusters there were.

- Exact: datatrove's `simplify_text` (lowercase, no punctuation, one space, numbers and diacritics normalised)
  hashed to 64 bits (xxh3); grouping is a vectorized `np.unique`, 8 bytes per document.
- Near: datasketch's `MinHash` over word n-gram shingles of the same normalised text, computed in `datasets.map`
  (batched, `num_proc`), and its `MinHashLSH` (bands and rows chosen for the threshold) to find candidates, which
  are confirmed by the estimated Jaccard similarity. Signatures take num_perm × 4 bytes per document; on a
  cluster, datatrove's multi-stage `MinhashDedup*` pipeline on its SLURM executor is the scale-out path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash
from datasets import Dataset

SCHEME = "affine32"  # datasketch's default: 32-bit values, collision-free permutations


def simplify(text: str) -> str:
    from datatrove.utils.text import simplify_text

    return simplify_text(text)


def normalized_hash(text: str) -> int:
    """64-bit hash of the normalised text: documents differing only in case, spacing or punctuation collide."""
    return xxhash.xxh3_64_intdigest(simplify(text).encode("utf-8"))


def shingles(text: str, ngram: int) -> list[bytes]:
    """Word n-grams of the normalised text (the whole text when it has fewer words), as bytes."""
    words = simplify(text).split(" ")
    if len(words) <= ngram:
        return [" ".join(words).encode("utf-8")]
    return [" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)]


def _hash32(data: bytes) -> int:
    return xxhash.xxh32_intdigest(data)


def minhash_signatures(texts: list[str], num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """(D, num_perm) uint32 MinHash signatures of `texts`."""
    from datasketch import MinHash

    sketches = MinHash.generator(
        (shingles(t, ngram) for t in texts), num_perm=num_perm, seed=seed, hashfunc=_hash32, scheme=SCHEME
    )
    return np.stack([m.hashvalues for m in sketches]) if texts else np.zeros((0, num_perm), np.uint32)


@dataclass
class DuplicateReport:
    """Which documents to keep, and what was removed: documents and clusters (groups of ≥ 2 duplicates)."""

    keep: np.ndarray  # (D,) bool
    representative: np.ndarray  # (D,) int64: the kept document each one duplicates (itself when kept)

    @property
    def removed(self) -> int:
        return int((~self.keep).sum())

    @property
    def clusters(self) -> int:
        return len(np.unique(self.representative[~self.keep]))

    def cluster_sizes(self) -> dict[int, int]:
        """{cluster size: how many clusters of that size}."""
        _, sizes = np.unique(self.representative[~self.keep], return_counts=True)
        values, counts = np.unique(sizes + 1, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


def exact_duplicates(hashes: np.ndarray) -> DuplicateReport:
    """Keep the first document of each hash.

    >>> report = exact_duplicates(np.array([7, 3, 7, 7, 5], dtype=np.uint64))
    >>> report.keep.tolist(), report.representative.tolist(), report.clusters
    ([True, True, False, False, True], [0, 1, 0, 0, 4], 1)
    """
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    representative = first[inverse.reshape(-1)].astype(np.int64)
    return DuplicateReport(keep=representative == np.arange(len(hashes)), representative=representative)


def near_duplicates(signatures: np.ndarray, threshold: float = 0.8, seed: int = 1) -> DuplicateReport:
    """Keep a document unless its estimated Jaccard similarity to an earlier kept one reaches `threshold`."""
    from datasketch import LeanMinHash, MinHashLSH

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"The near-duplicate threshold must be in (0, 1], got {threshold}.")
    count, num_perm = signatures.shape
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    representative = np.arange(count, dtype=np.int64)
    for i in range(count):
        sketch = LeanMinHash(seed=seed, hashvalues=signatures[i], scheme=SCHEME)
        candidates = lsh.query(sketch) if i else []
        if candidates:
            candidates = np.sort(np.fromiter(candidates, dtype=np.int64, count=len(candidates)))
            similarity = (signatures[candidates] == signatures[i]).mean(axis=1)  # estimated Jaccard
            close = candidates[similarity >= threshold]
            if len(close):
                representative[i] = representative[close[0]]
                continue
        lsh.insert(i, sketch, check_duplication=False)
    return DuplicateReport(keep=representative == np.arange(count), representative=representative)


def document_hashes(documents: Dataset, text_column: str = "text", num_proc: int | None = None) -> np.ndarray:
    hashed = documents.map(
        lambda texts: {"hash": np.fromiter(map(normalized_hash, texts), dtype=np.uint64, count=len(texts))},
        input_columns=text_column,
        batched=True,
        remove_columns=documents.column_names,
        num_proc=num_proc,
        desc="Hashing",
    )
    return hashed.data.column("hash").to_numpy().astype(np.uint64)


def document_signatures(
    documents: Dataset,
    text_column: str = "text",
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
    num_proc: int | None = None,
) -> np.ndarray:
    signed = documents.map(
        lambda texts: {"minhash": minhash_signatures(texts, num_perm, ngram, seed)},
        input_columns=text_column,
        batched=True,
        batch_size=256,
        remove_columns=documents.column_names,
        num_proc=num_proc,
        desc="MinHash",
    )
    column = signed.data.column("minhash").combine_chunks()
    return column.flatten().to_numpy().reshape(len(signed), num_perm).astype(np.uint32)
