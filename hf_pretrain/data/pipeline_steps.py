"""The datatrove PipelineSteps of data preparation that datatrove does not have; the rest are datatrove's own.

Task ids are source-major: task `source * tasks_per_source + shard` reads contiguous shard `shard` of source
`source`, so sorting by task sorts by source first (the first listed source keeps a duplicate's copy) and every
figure is the same whatever the number of workers. Every step that counts writes one JSON per task, replaced
atomically, so a task that is killed and rerun overwrites its own figures.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
from collections import Counter, defaultdict

import numpy as np
import xxhash
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import ExactDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.pipeline.readers import JsonlReader

from hf_pretrain.data import dedup

READ_BATCH = 1024  # documents taken from the Arrow column (and filtered) at a time
SHARD_DOCUMENTS = 50_000  # documents per packed shard: bounds a task's memory whatever its size


def write_json(path: str, value, sort_keys: bool = True) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "w") as handle:
        json.dump(value, handle, indent=1, sort_keys=sort_keys)
    os.replace(f"{path}.tmp", path)


def read_json(path: str):
    with open(path) as handle:
        return json.load(handle)


def simplified_text(document: Document) -> bytes:
    """What exact dedup hashes: datatrove's `simplify_text` of the normalised text (bytes: datatrove picks its
    hash function from this annotation, a string under `from __future__ import annotations`)."""
    return dedup.simplify(document.text).encode("utf-8")


def source_priority(document: Document) -> int:
    """datatrove keeps the highest-priority copy of an exact duplicate: the first listed source."""
    return 65535 - int(document.metadata["source_id"])


def is_validation(text: str, fraction: float, seed: int) -> bool:
    """Held out or not, from the document's own text: the same at any scale, and copies go the same way."""
    return fraction > 0 and xxhash.xxh64_intdigest(text.encode("utf-8"), seed=seed) < fraction * 2.0**64


class SourceShardReader(PipelineStep):
    """Reads this task's contiguous shard of its source (`SourceSpec.load()`: local files, a Hub dataset or the
    default corpus), raw: the quality step decides what is unusable and counts it."""

    name = "📖 sources"
    type = "📖 - READER"

    def __init__(self, sources: list[dict], tasks_per_source: int):
        super().__init__()
        self.sources = sources
        self.tasks_per_source = tasks_per_source

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from hf_pretrain.data.sources import SourceSpec

        source_id, shard = divmod(rank, self.tasks_per_source)
        spec = SourceSpec(**self.sources[source_id])
        documents = spec.load()
        count = len(documents)
        start, stop = count * shard // self.tasks_per_source, count * (shard + 1) // self.tasks_per_source
        column = documents.data.column(spec.text_column)
        for first in range(start, stop, READ_BATCH):
            texts = column.slice(first, min(READ_BATCH, stop - first)).to_pylist()
            for offset, text in enumerate(texts):
                self.stat_update("documents")
                yield Document(text=text, id=f"{source_id}/{first + offset}", metadata={"source_id": source_id})


class QualityFilterStep(PipelineStep):
    """Normalisation and the quality filters (`hf_pretrain.data.quality`), batched; counts drops per reason into
    `{stats_folder}/{rank:05d}.json`."""

    name = "🧹 quality"
    type = "🔻 - FILTER"

    def __init__(self, sources: list[dict], normalization: str, filters: list[str], settings: dict, stats_folder: str):
        super().__init__()
        self.sources, self.normalization, self.filters, self.settings = sources, normalization, filters, settings
        self.stats_folder = stats_folder

    def _filter(self, source_id: int):
        from hf_pretrain.data import quality
        from hf_pretrain.data.sources import SourceSpec

        spec = SourceSpec(**self.sources[source_id])
        return quality.source_filter(spec, self.normalization, self.filters, self.settings)

    def run(self, data, rank: int = 0, world_size: int = 1):
        document_filter, read, dropped, source_id = None, 0, Counter(), None
        batch: list[Document] = []

        def flush():
            nonlocal document_filter
            if document_filter is None:
                document_filter = self._filter(batch[0].metadata["source_id"])
            texts, reasons = document_filter([document.text for document in batch])
            for document, text, reason in zip(batch, texts, reasons):
                if text is None:
                    dropped[reason] += 1
                    self.stat_update("dropped")
                    continue
                document.text = text
                self.stat_update("forwarded")
                yield document
            batch.clear()

        for document in data:
            read += 1
            source_id = document.metadata["source_id"]
            batch.append(document)
            if len(batch) == READ_BATCH:
                yield from flush()
        if batch:
            yield from flush()
        write_json(
            os.path.join(self.stats_folder, f"{rank:05d}.json"),
            {"source_id": source_id, "read": read, "after_filters": read - sum(dropped.values()), "dropped": dropped},
        )


class DedupSignatures(MinhashDedupSignature):
    """datatrove's MinHash signature stage, which also writes datatrove's exact-dedup hashes of the same documents
    (one pass over them) and the full signature of each document (`{rank:05d}.u64`, (D, P) uint64, row = document
    index in the task), which the cluster stage uses to confirm candidate pairs."""

    def __init__(self, minhash_folder: str, exact_folder: str, full_folder: str, config, exact_config, finders: int,
                 near: bool = True, exact: bool = True):  # fmt: skip
        super().__init__(minhash_folder, config=config, language=dedup.SpaceWords())
        self._hash_func = dedup.shingle_hash
        self.exact = ExactDedupSignature(exact_folder, exact_config, finder_workers=finders) if exact else None
        self.full_folder, self.near = full_folder, near
        self._row = None

    def get_signature(self, shingles):
        buckets = super().get_signature(shingles)
        self._row = np.asarray(buckets, dtype=np.uint64).reshape(-1)
        return buckets

    def run(self, data, rank: int = 0, world_size: int = 1):
        if not self.near:  # exact hashes only
            hashes = [h for index, document in enumerate(data) for h in self.exact.get_hashes(document, index)]
            self.exact.save_hashes(rank, hashes)
            return
        os.makedirs(self.full_folder, exist_ok=True)
        path = os.path.join(self.full_folder, f"{rank:05d}.u64")
        hashes = []
        with open(f"{path}.tmp", "wb") as full:

            def documents():
                for index, document in enumerate(data):
                    if self.exact is not None:
                        hashes.extend(self.exact.get_hashes(document, index))
                    self._row = None
                    yield document
                    # MinhashDedupSignature signs the document after it is yielded; no shingle: an empty row
                    full.write((self._row if self._row is not None else np.zeros(self.num_hashes, np.uint64)).data)

            super().run(documents(), rank, world_size)
        os.replace(f"{path}.tmp", path)
        if self.exact is not None:
            self.exact.save_hashes(rank, hashes)


def full_signatures(folder: str, task: int, num_perm: int) -> np.ndarray:
    path = os.path.join(folder, f"{task:05d}.u64")
    if os.path.getsize(path) == 0:
        return np.zeros((0, num_perm), np.uint64)
    return np.memmap(path, dtype=np.uint64, mode="r").reshape(-1, num_perm)


class ConfirmedClusters(PipelineStep):
    """Duplicates of the whole corpus (one task): datatrove's exact duplicates (`ExactFindDedups`) and the MinHash
    candidate pairs (`MinhashDedupBuckets`) confirmed with the full signatures; clusters keep their first document
    that is not an exact copy. Writes `{task:06d}.remove` for datatrove's `MinhashDedupFilter` and the counts."""

    name = "🫂 confirmed clusters"
    type = "🫂 - DEDUP"

    def __init__(self, work: str, tasks: int, tasks_per_source: int, num_perm: int, cutoff: float | None,
                 exact: bool = True):  # fmt: skip
        super().__init__()
        self.exact = exact
        self.work, self.tasks, self.tasks_per_source = work, tasks, tasks_per_source
        self.num_perm, self.cutoff = num_perm, cutoff

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from collections import deque

        deque(data or (), maxlen=0)
        exact = {task: set() for task in range(self.tasks)}
        for path in glob.glob(os.path.join(self.work, "exact_dups", "*", "*.c4_dup")):
            task = int(os.path.basename(path).split(".")[0])
            exact[task].update(np.fromfile(path, dtype="<u4").tolist())
        exact_sizes = Counter()
        for path in glob.glob(os.path.join(self.work, "exact_dups", "*", "*.c4_counts")):
            for _, count in np.fromfile(path, dtype="<u4").reshape(-1, 2).tolist():
                exact_sizes[count + 1] += 1

        near = {task: set() for task in range(self.tasks)}
        near_sizes, candidate_pairs, confirmed = Counter(), 0, 0
        if self.cutoff is not None:
            clusters, cache = dedup.UnionFind(), {}

            def signatures(task):
                if task not in cache:
                    cache[task] = full_signatures(os.path.join(self.work, "signatures"), task, self.num_perm)
                return cache[task]

            for path in sorted(glob.glob(os.path.join(self.work, "buckets", "*.dups"))):
                pairs = np.fromfile(path, dtype="<u4").reshape(-1, 4)
                candidate_pairs += len(pairs)
                for group in dedup.candidate_groups(pairs):
                    confirmed += dedup.confirm_group(group, signatures, self.cutoff, clusters)
            members = defaultdict(list)
            for key in clusters.parent:
                members[clusters.find(key)].append(key)
            for group in members.values():
                unique = sorted(key for key in group if key[1] not in exact[key[0]])
                for task, doc in unique[1:]:
                    near[task].add(doc)
                if len(unique) > 1:
                    near_sizes[len(unique)] += 1

        removed = {"exact_duplicate": Counter(), "near_duplicate": Counter()}
        os.makedirs(os.path.join(self.work, "remove"), exist_ok=True)
        for task in range(self.tasks):
            source = task // self.tasks_per_source
            removed["exact_duplicate"][source] += len(exact[task])
            removed["near_duplicate"][source] += len(near[task])
            drop = np.asarray(sorted(exact[task] | near[task]), dtype="<u4")
            drop.tofile(os.path.join(self.work, "remove", f"{task:06d}.remove"))

        def summary(step, sizes):
            return {
                "removed": sum(removed[step].values()),
                "clusters": sum(sizes.values()),
                "cluster_sizes": {int(size): int(count) for size, count in sorted(sizes.items())},
            }

        write_json(
            os.path.join(self.work, "stats", "clusters.json"),
            {
                "removed_per_source": {step: dict(counts) for step, counts in removed.items()},
                "duplicates": {
                    **({"exact_duplicate": summary("exact_duplicate", exact_sizes)} if self.exact else {}),
                    **(
                        {"near_duplicate": {**summary("near_duplicate", near_sizes),
                                            "candidate_pairs": candidate_pairs, "confirmed_pairs": confirmed}}
                        if self.cutoff is not None else {}
                    ),
                },
            },
        )  # fmt: skip


class TaskDocuments(JsonlReader):
    """The documents the first stage wrote for this very task (`{rank:05d}.jsonl.gz`), in the order they were
    signed: datatrove's dedup filters address documents by their index in the task."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        name = f"{rank:05d}.jsonl.gz"
        if self.data_folder.isfile(name):
            yield from self.read_file(name)


def tokenizer_texts(work: str, tasks: int, tasks_per_source: int, per_source: int, fraction: float, seed: int):
    """A sample for training the tokenizer: the first `per_source` kept training documents of each source."""
    reader = TaskDocuments(os.path.join(work, "documents"))
    for source_start in range(0, tasks, tasks_per_source):
        taken = 0
        for task in range(source_start, source_start + tasks_per_source):
            removed = set(np.fromfile(os.path.join(work, "remove", f"{task:06d}.remove"), dtype="<u4").tolist())
            for index, document in enumerate(reader.run(rank=task)):
                if taken == per_source:
                    break
                if index not in removed and not is_validation(document.text, fraction, seed):
                    taken += 1
                    yield document.text


class PrepareTokenizer(PipelineStep):
    """Loads the tokenizer, or trains one on a sample of the kept training documents; saves it to `output`."""

    name = "🔤 tokenizer"
    type = "🔢 - TOKENIZER"

    def __init__(self, output: str, work: str, name_or_path, vocab_size, documents, tasks, tasks_per_source,
                 fraction, seed):  # fmt: skip
        super().__init__()
        self.output, self.work, self.name_or_path, self.vocab_size = output, work, name_or_path, vocab_size
        self.documents, self.tasks, self.tasks_per_source = documents, tasks, tasks_per_source
        self.fraction, self.seed = fraction, seed

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from collections import deque

        from hf_pretrain.data.tokenizer import load_tokenizer, train_tokenizer

        deque(data or (), maxlen=0)
        if os.path.isfile(os.path.join(self.output, "tokenizer_config.json")):
            return  # given to prepare_corpus as an object, or saved by an earlier run of this task
        if self.name_or_path:
            tokenizer = load_tokenizer(self.name_or_path)
        else:
            per_source = math.ceil(self.documents / (self.tasks // self.tasks_per_source))
            texts = tokenizer_texts(self.work, self.tasks, self.tasks_per_source, per_source, self.fraction, self.seed)
            tokenizer = train_tokenizer(texts, vocab_size=self.vocab_size)
        shutil.rmtree(f"{self.output}.tmp", ignore_errors=True)
        tokenizer.save_pretrained(f"{self.output}.tmp")
        shutil.rmtree(self.output, ignore_errors=True)
        os.replace(f"{self.output}.tmp", self.output)
