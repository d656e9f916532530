"""Streamed, mixed, resumable blocks: for corpora larger than memory or disk, consumed by the Trainer directly.

Each source is read in batches of documents (`datasets` streaming), normalised and filtered, tokenized and packed
on the fly; memory holds one batch of documents, one shuffle window of blocks and less than a block of carried
tokens per source, whatever the corpus size. Sources are interleaved by the deterministic `MixingSchedule`.

**Shuffling** (`shuffle_documents`, `shuffle_blocks`; `stream_shuffle_documents` / `stream_shuffle_blocks` of a
run): documents are read in windows of `shuffle_documents` and each window is permuted before packing; packed
blocks are taken in windows of `shuffle_blocks` and each window is permuted before it is given out. Each
permutation is keyed by (seed, source, pass, window number), never drawn from a global RNG, so a stream is the
same in every run. Windows rather than a rolling buffer: a resume rebuilds the one window it stands in from its
start and the checkpoint holds no buffered data (a rolling buffer's content would have to be stored, or replayed
from arbitrarily far back). The source order of the mixture is not shuffled: it is what makes the tokens seen per
source an exact function of the step.

**Exact resume.** Every block comes with where its source stands after it (`Standing`): the `datasets` state of
the document batch holding the next unread token (its shard and row), the batch's number in its pass, the
document's index in the (permuted) batch and how many of its tokens were already used; with block shuffling, the
standing at the start of the current block window and how many of its blocks were given out. A checkpoint records
the standing of every source after the last block *trained on* (the Trainer consumes a fixed number of blocks per
optimizer step, so that is block `global_step · blocks per step`, whatever the DataLoader prefetched), and the
shuffle settings; resuming loads each source's state, re-reads at most one batch of documents (plus, with block
shuffling, the documents of one block window) and skips what was used, so it yields exactly the blocks the
uninterrupted run would have.

**Failures.** A source that raises mid-stream is reopened at its last standing (so nothing is lost or repeated)
up to `max_retries` times in a row, then the error is raised naming the source and where it stood. A source that
runs out starts a new pass (counted and logged). Blocks are produced in the process that iterates the stream
(`dataloader_num_workers: 0`) because that is where the standings must be known.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from datasets import Dataset, IterableDataset

from hf_pretrain.data.mixing import MixingSchedule
from hf_pretrain.data.packing import encode_documents
from hf_pretrain.data.quality import DocumentFilter

logger = logging.getLogger(__name__)


class SourceError(ValueError):
    """A configuration problem in a source (missing column, no usable document): retrying cannot help."""


def keyed_rng(seed: int, *key) -> np.random.Generator:
    """A generator that depends only on the seed and the key (never on what ran before)."""
    digest = hashlib.blake2b(json.dumps([seed, *key]).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


@dataclass(frozen=True)
class Standing:
    """Where a source stands: the next token to use is token `offset` of document `document` of batch number
    `batch` of pass `passes`, the batch that starts at `datasets` state `state` (None: the start of the source).
    With block shuffling this is the start of block window number `window`, `taken` of whose blocks are used."""

    state: dict | None = None
    document: int = 0
    offset: int = 0
    passes: int = 0
    batch: int = 0
    window: int = 0
    taken: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Standing:
        return cls(**data) if data else cls()


class _Pending:
    """A read document whose tokens are not all in blocks yet."""

    __slots__ = ("batch", "document", "offset", "passes", "state", "tokens")

    def __init__(self, state, batch, document, tokens, offset, passes):
        self.state, self.batch, self.document, self.tokens = state, batch, document, tokens
        self.offset, self.passes = offset, passes

    def standing(self) -> Standing:
        return Standing(self.state, self.document, self.offset, self.passes, self.batch)


class SourceStream:
    """One source's blocks of `block_size` tokens with their document pieces and the standing after each.

    Args:
        name: the source's name (in errors, logs and stats).
        open_documents: returns a fresh `datasets.IterableDataset` of the source's documents.
        tokenizer: any tokenizer with an eos token.
        document_filter: normalisation and quality filters (default: NFC normalisation and validity only).
        batch_size: documents read, filtered and tokenized together.
        shuffle_documents: above 1, documents are read in windows of this many (instead of `batch_size`), each
            window permuted.
        shuffle_blocks: above 1, blocks are given out in windows of this many, each window permuted.
        seed: the key of the permutations.
    """

    def __init__(
        self,
        name: str,
        open_documents: Callable[[], IterableDataset | Dataset],
        tokenizer,
        block_size: int,
        text_column: str = "text",
        document_filter: DocumentFilter | None = None,
        batch_size: int = 256,
        max_retries: int = 3,
        retry_wait: float = 1.0,
        shuffle_documents: int = 0,
        shuffle_blocks: int = 0,
        seed: int = 0,
    ):
        self.name, self.open_documents, self.tokenizer = name, open_documents, tokenizer
        self.block_size, self.text_column = block_size, text_column
        self.shuffle_documents = shuffle_documents if shuffle_documents > 1 else 0
        self.shuffle_blocks = shuffle_blocks if shuffle_blocks > 1 else 0
        self.seed = seed
        self.batch_size = self.shuffle_documents or batch_size
        self.document_filter = document_filter or DocumentFilter(filters=())
        self.max_retries, self.retry_wait = max_retries, retry_wait
        self.stats: Counter = Counter()  # documents read / dropped:<reason> / blocks / tokens / passes / retries

    def _open(self, standing: Standing) -> IterableDataset:
        documents = self.open_documents()
        if isinstance(documents, Dataset):
            documents = documents.to_iterable_dataset()
        if documents.column_names is not None and self.text_column not in documents.column_names:
            raise SourceError(
                f"Source {self.name!r}: text_column={self.text_column!r} is not a column; it has "
                f"{documents.column_names}."
            )
        if standing.state is not None:
            documents.load_state_dict(copy.deepcopy(standing.state))
        return documents

    def shuffle_settings(self) -> dict:
        """What the stream's order depends on besides the data: stored with a position, checked on resume."""
        shuffled = bool(self.shuffle_documents or self.shuffle_blocks)
        return {
            "documents": self.shuffle_documents,
            "blocks": self.shuffle_blocks,
            "seed": self.seed if shuffled else None,
        }

    def _read_pass(self, start: Standing, pending: deque) -> Iterator[Standing]:
        """Append the documents of one pass (from `start`) to `pending`; after each batch, yield the standing at
        the start of the next one."""
        documents = self._open(start)
        state_before, number = start.state, start.batch
        skip_documents, skip_tokens = start.document, start.offset
        for batch in documents.iter(batch_size=self.batch_size):
            state_after = copy.deepcopy(documents.state_dict())
            if self.text_column not in batch:
                raise SourceError(f"Source {self.name!r}: documents have no {self.text_column!r} column.")
            raw = batch[self.text_column]
            if self.shuffle_documents:  # the permuted order is the batch's order, indices included
                order = keyed_rng(self.seed, self.name, "documents", start.passes, number).permutation(len(raw))
                raw = [raw[i] for i in order]
            texts, reasons = self.document_filter(raw[skip_documents:])
            self.stats["documents"] += len(texts)
            self.stats.update(f"dropped:{reason}" for reason in reasons if reason)
            kept = [(skip_documents + i, text) for i, text in enumerate(texts) if text is not None]
            if skip_tokens and (not kept or kept[0][0] != skip_documents):
                raise SourceError(
                    f"Source {self.name!r}: the document to resume from is now filtered out; the filters or the "
                    "data changed since the checkpoint."
                )
            if kept:
                flat, lengths = encode_documents(self.tokenizer, [text for _, text in kept])
                for (index, _), tokens in zip(kept, np.split(flat, np.cumsum(lengths)[:-1])):
                    offset, skip_tokens = skip_tokens, 0  # only the first document after a resume is cut
                    pending.append(_Pending(state_before, number, index, tokens, offset, start.passes))
            state_before, number, skip_documents = state_after, number + 1, 0
            yield Standing(state_after, 0, 0, start.passes, number)

    def _take_block(self, pending: deque) -> tuple[np.ndarray, list[int]]:
        parts, pieces, need = [], [], self.block_size
        while need:
            head = pending[0]
            take = min(len(head.tokens) - head.offset, need)
            parts.append(head.tokens[head.offset : head.offset + take])
            pieces.append(take)
            head.offset += take
            need -= take
            if head.offset == len(head.tokens):
                pending.popleft()
        return np.concatenate(parts), pieces

    def _produce(self, standing: Standing) -> Iterator[tuple[np.ndarray, list[int], Standing]]:
        pending: deque[_Pending] = deque()
        start = standing
        while True:
            tokens_read = 0
            for next_batch in self._read_pass(start, pending):
                buffered = sum(len(p.tokens) - p.offset for p in pending)
                tokens_read += buffered
                while buffered >= self.block_size:
                    block, pieces = self._take_block(pending)
                    buffered -= self.block_size
                    after = pending[0].standing() if pending else next_batch
                    self.stats["blocks"] += 1
                    self.stats["tokens"] += self.block_size
                    yield block, pieces, after
            if start == Standing(passes=start.passes) and tokens_read == 0:
                dropped = {k: v for k, v in self.stats.items() if k.startswith("dropped:")}
                raise SourceError(f"Source {self.name!r} has no usable document (dropped: {dropped}).")
            self.stats["passes"] += 1
            logger.warning("Source %r is exhausted: starting pass %d over it.", self.name, start.passes + 2)
            start = Standing(None, 0, 0, start.passes + 1)

    def _windows(self, standing: Standing) -> Iterator[tuple[np.ndarray, list[int], Standing]]:
        """The blocks in permuted windows of `shuffle_blocks`. Within a window the standing after a block is the
        window's start with the blocks taken; after its last block, the next window's start."""
        if not self.shuffle_blocks:
            yield from self._produce(standing)
            return
        start, skip = replace(standing, taken=0), standing.taken
        produced = self._produce(replace(start, window=0))
        while True:
            window = [next(produced) for _ in range(self.shuffle_blocks)]
            end = replace(window[-1][2], window=start.window + 1)
            order = keyed_rng(self.seed, self.name, "blocks", start.window).permutation(len(window))
            for rank in range(skip, len(window)):
                block, pieces, _ = window[order[rank]]
                yield block, pieces, end if rank + 1 == len(window) else replace(start, taken=rank + 1)
            start, skip = end, 0

    def blocks(self, standing: Standing | None = None) -> Iterator[tuple[np.ndarray, list[int], Standing]]:
        """(block (block_size,) int32, document pieces, standing after the block), forever; see the module doc."""
        standing = standing or Standing()
        failures = 0
        while True:
            try:
                for item in self._windows(standing):
                    standing, failures = item[2], 0
                    yield item
            except SourceError:
                raise
            except Exception as error:  # a network or storage error mid-stream: reopen where we stood
                failures += 1
                self.stats["retries"] += 1
                if failures > self.max_retries:
                    raise RuntimeError(
                        f"Source {self.name!r} failed {failures} times in a row at {standing}: {error!r}. Its data "
                        "is unreadable from there; fix or remove the source (its position is in the checkpoint)."
                    ) from error
                logger.warning(
                    "Source %r failed (%r); reopening at its last position (%d).", self.name, error, failures
                )
                time.sleep(self.retry_wait * failures)


class MixedBlockStream(torch.utils.data.IterableDataset):
    """Blocks from several `SourceStream`s mixed by weight; a torch `IterableDataset` the Trainer can consume.

    Rows: `input_ids` (block_size,), `document_lengths`, `source_id` and `block_index` (the block's position in
    the mixed stream). `position(n)` is where every source stands after the first n blocks (JSON-able), and
    `load_state_dict(position)` makes the next iteration start there.
    """

    def __init__(self, sources: Sequence[SourceStream], weights: Sequence[float], history: int = 16384):
        if len(sources) != len(weights):
            raise ValueError(f"{len(sources)} sources but {len(weights)} weights.")
        self.sources = list(sources)
        self.names = [source.name for source in self.sources]
        self.schedule = MixingSchedule(weights, self.names)
        self.block_size = self.sources[0].block_size
        self._start = self._position(0, [Standing()] * len(self.sources))
        self._history: deque = deque(maxlen=history)  # (blocks produced, standings after them)

    def _position(self, blocks: int, standings: Sequence[Standing]) -> dict:
        counts = self.schedule.counts(blocks).tolist()
        return {
            "blocks": blocks,
            "sources": {
                name: {**standing.to_dict(), "blocks": count}
                for name, standing, count in zip(self.names, standings, counts)
            },
            "shuffle": {source.name: source.shuffle_settings() for source in self.sources},
        }

    def load_state_dict(self, position: dict) -> None:
        missing = sorted(set(self.names) - set(position["sources"]))
        if missing:
            raise ValueError(f"The stored data position has no entry for source(s) {missing}: the mixture changed.")
        unshuffled = {"documents": 0, "blocks": 0, "seed": None}  # positions saved before streams shuffled
        for source in self.sources:
            saved = position.get("shuffle", {}).get(source.name, unshuffled)
            if saved != source.shuffle_settings():
                raise ValueError(
                    f"The stream position of source {source.name!r} was saved with shuffle {saved} (stream_shuffle_"
                    f"documents, stream_shuffle_blocks, seed), this run has {source.shuffle_settings()}: set them back."
                )
        self._start = copy.deepcopy(position)

    def state_dict(self) -> dict:
        """The position after the last block produced (for loops that consume every block they produce)."""
        if not self._history:
            return copy.deepcopy(self._start)
        blocks, standings = self._history[-1]
        return self._position(blocks, standings)

    def position(self, blocks: int) -> dict:
        """Where every source stands after the first `blocks` blocks of the mixed stream."""
        if self._history:
            first = self._history[0][0]
            if first <= blocks <= self._history[-1][0]:
                recorded, standings = self._history[blocks - first]
                return self._position(recorded, standings)
        if blocks == self._start["blocks"]:
            return copy.deepcopy(self._start)
        raise ValueError(
            f"The stream has no record of its position after {blocks} blocks (it kept {len(self._history)} recent "
            "ones): the consumer is further behind the producer than `history` blocks."
        )

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise RuntimeError(
                "A MixedBlockStream is produced where its position is recorded: use dataloader_num_workers: 0 "
                "(tokenization runs in Rust threads, off the GIL)."
            )
        start = self._start
        blocks = start["blocks"]
        standings = [
            Standing.from_dict({k: v for k, v in start["sources"][n].items() if k != "blocks"}) for n in self.names
        ]
        generators = [source.blocks(standing) for source, standing in zip(self.sources, standings)]
        self._history.clear()
        self._history.append((blocks, tuple(standings)))
        while True:
            for source_id in self.schedule.sources(blocks, blocks + 1024).tolist():
                ids, pieces, standings[source_id] = next(generators[source_id])
                self._history.append((blocks + 1, tuple(standings)))  # before the yield: the row is out
                row = {"input_ids": ids, "document_lengths": pieces, "source_id": source_id, "block_index": blocks}
                blocks += 1
                yield row

    def stats(self) -> dict:
        return {source.name: dict(source.stats) for source in self.sources}
