"""Streamed blocks: identical to the prepared ones, resumable exactly, failures retried or named."""

import itertools
import json

import numpy as np
import pytest
import torch
from datasets import Dataset, IterableDataset

from hf_pretrain.data.packing import pack_blocks, tokenize_documents
from hf_pretrain.data.quality import UNDECODABLE, DocumentFilter
from hf_pretrain.data.streaming import MixedBlockStream, SourceError, SourceStream, Standing

WORDS = ["the", "a", "of", "river", "stone", "light", "quiet", "north", "wind", "carries", "seeds", "over", "old", "walls", "and", "fields"]  # fmt: skip


def corpus(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 60))) for _ in range(count)]


def flaky_documents(texts, shards, failures):
    """A generator-based stream (the kind a Hub stream is) that raises at the documents listed in `failures`."""

    def generate(shards):
        for shard in shards:
            for index in shard:
                if index in failures:
                    failures.remove(index)
                    raise ConnectionError(f"connection reset at document {index}")
                yield {"text": texts[index]}

    split = np.array_split(np.arange(len(texts)), shards)
    return IterableDataset.from_generator(generate, gen_kwargs={"shards": [list(s) for s in split]})


def make_stream(tokenizer, texts_a, texts_b, failures=(), block_size=16, **shuffle):
    failures = set(failures)
    sources = [
        SourceStream("web", lambda: flaky_documents(texts_a, 3, failures), tokenizer, block_size, batch_size=7,
                     retry_wait=0, **shuffle),
        SourceStream("books", lambda: Dataset.from_dict({"text": texts_b}).to_iterable_dataset(num_shards=2),
                     tokenizer, block_size, batch_size=5, **shuffle),
    ]  # fmt: skip
    return MixedBlockStream(sources, [0.7, 0.3])


def rows(stream, count):
    return list(itertools.islice(iter(stream), count))


def same(a, b):
    return all(
        np.array_equal(x["input_ids"], y["input_ids"])
        and x["document_lengths"] == y["document_lengths"]
        and (x["source_id"], x["block_index"]) == (y["source_id"], y["block_index"])
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def texts():
    return corpus(120, seed=1), corpus(50, seed=2)


def test_a_streamed_source_gives_the_same_blocks_as_prepared_packing(tokenizer, texts):
    source = SourceStream("web", lambda: Dataset.from_dict({"text": texts[0]}), tokenizer, 16, batch_size=9)
    streamed = [(block, pieces) for block, pieces, _ in itertools.islice(source.blocks(), 60)]
    prepared = pack_blocks(tokenize_documents(Dataset.from_dict({"text": texts[0]}), tokenizer), 16, True)
    assert len(prepared) >= 60
    for (block, pieces), ids, lengths in zip(streamed, prepared["input_ids"], prepared["document_lengths"]):
        assert block.tolist() == ids and pieces == lengths


@pytest.mark.parametrize("stop", [1, 37, 150, 400])  # 400 blocks: both sources have wrapped around (passes)
def test_a_resumed_stream_yields_exactly_the_blocks_of_the_uninterrupted_one(tokenizer, texts, stop):
    full = rows(make_stream(tokenizer, *texts), 500)
    interrupted = make_stream(tokenizer, *texts)
    rows(interrupted, stop + 5)  # the producer runs ahead of what was trained on, as a DataLoader prefetches
    position = interrupted.position(stop)  # what a checkpoint at `stop` trained blocks records
    assert position["blocks"] == stop
    assert sum(s["blocks"] for s in position["sources"].values()) == stop
    resumed = make_stream(tokenizer, *texts)
    resumed.load_state_dict(position)
    assert same(rows(resumed, 500 - stop), full[stop:])


def test_a_source_failing_mid_stream_is_reopened_where_it_stood(tokenizer, texts):
    full = rows(make_stream(tokenizer, *texts), 200)
    flaky = make_stream(tokenizer, *texts, failures={10, 11, 20})  # twice in a row at 10-11, once at 20
    assert same(rows(flaky, 200), full)
    assert flaky.stats()["web"]["retries"] == 3


def test_a_source_that_keeps_failing_is_an_error_naming_it(tokenizer, texts):
    stream = make_stream(tokenizer, *texts, failures=set(range(20, 40)))
    with pytest.raises(RuntimeError, match="Source 'web' failed 4 times in a row"):
        rows(stream, 300)


def test_unusable_sources_are_clear_errors(tokenizer):
    blank = SourceStream("blank", lambda: Dataset.from_dict({"text": ["", "  ", UNDECODABLE]}), tokenizer, 8)
    with pytest.raises(SourceError, match="'blank' has no usable document"):
        next(blank.blocks())
    assert blank.stats["dropped:empty"] == 1 and blank.stats["dropped:invalid_utf8"] == 1
    wrong = SourceStream("wrong", lambda: Dataset.from_dict({"body": ["text"]}), tokenizer, 8)
    with pytest.raises(SourceError, match="text_column='text' is not a column"):
        next(wrong.blocks())


def test_documents_dropped_by_filters_are_counted(tokenizer, texts):
    bad = ["", "   ", f"broken {UNDECODABLE} text", "valid \ufffd", *texts[1][:20]]
    source = SourceStream("mixed", lambda: Dataset.from_dict({"text": bad}), tokenizer, 16,
                          document_filter=DocumentFilter(filters=()), batch_size=4)  # fmt: skip
    list(itertools.islice(source.blocks(), 5))
    assert source.stats["dropped:empty"] == 1 and source.stats["dropped:whitespace"] == 1
    assert source.stats["dropped:invalid_utf8"] == 1


def test_position_far_behind_the_producer_is_an_error(tokenizer, texts):
    stream = make_stream(tokenizer, *texts)
    stream._history = type(stream._history)(maxlen=10)
    rows(stream, 50)
    with pytest.raises(ValueError, match="no record of its position after 5 blocks"):
        stream.position(5)
    assert stream.position(45)["blocks"] == 45


def test_dataloader_workers_are_refused(tokenizer, texts):
    loader = torch.utils.data.DataLoader(make_stream(tokenizer, *texts), batch_size=2, num_workers=2,
                                         collate_fn=lambda rows: rows)  # fmt: skip
    with pytest.raises(RuntimeError, match="dataloader_num_workers: 0"):
        next(iter(loader))


def test_standing_round_trips_through_json():
    standing = Standing({"shard_idx": 2}, document=3, offset=17, passes=1)
    assert Standing.from_dict(standing.to_dict()) == standing and Standing.from_dict(None) == Standing()


SHUFFLED = {"shuffle_documents": 10, "shuffle_blocks": 8, "seed": 3}


@pytest.mark.parametrize("stop", [1, 37, 150, 400])
def test_a_resumed_shuffled_stream_continues_exactly_through_a_dataloader(tokenizer, texts, stop):
    def loader(stream):  # what the Trainer iterates: a DataLoader in the main process (num_workers: 0)
        return iter(torch.utils.data.DataLoader(stream, batch_size=4, num_workers=0, collate_fn=lambda rows: rows))

    full = [
        row for batch in itertools.islice(loader(make_stream(tokenizer, *texts, **SHUFFLED)), 125) for row in batch
    ]
    interrupted = make_stream(tokenizer, *texts, **SHUFFLED)
    for _ in itertools.islice(loader(interrupted), stop // 4 + 2):  # prefetched past the checkpoint
        pass
    resumed = make_stream(tokenizer, *texts, **SHUFFLED)
    resumed.load_state_dict(json.loads(json.dumps(interrupted.position(stop))))  # through the checkpoint's JSON
    again = [row for batch in itertools.islice(loader(resumed), (500 - stop) // 4) for row in batch]
    assert same(again, full[stop : stop + len(again)])
    assert not same(full[:100], rows(make_stream(tokenizer, *texts), 100))  # shuffling changed the stream
    with pytest.raises(ValueError, match="was saved with shuffle"):
        make_stream(tokenizer, *texts).load_state_dict(interrupted.position(stop))


def test_blocks_are_shuffled_within_windows(tokenizer, texts):
    plain = [
        b.tobytes()
        for b, _, _ in itertools.islice(
            SourceStream("web", lambda: Dataset.from_dict({"text": texts[0]}), tokenizer, 16).blocks(), 320
        )
    ]
    source = SourceStream(
        "web", lambda: Dataset.from_dict({"text": texts[0]}), tokenizer, 16, shuffle_blocks=16, seed=1
    )
    shuffled = [b.tobytes() for b, _, _ in itertools.islice(source.blocks(), 320)]
    for start in range(0, 320, 16):  # each window is a permutation of the same blocks
        assert sorted(shuffled[start : start + 16]) == sorted(plain[start : start + 16])
    where = {block: index for index, block in enumerate(plain)}
    adjacent = np.mean([where[b] - where[a] == 1 for a, b in zip(shuffled, shuffled[1:])])
    assert adjacent < 0.2  # a random permutation of 16 keeps about 1/16 of neighbours; the read order keeps all


def test_documents_are_shuffled_within_windows(tokenizer, texts):
    eos = tokenizer.eos_token_id
    documents = [
        tuple(ids) for ids in tokenize_documents(Dataset.from_dict({"text": texts[0]}), tokenizer)["input_ids"]
    ]
    source = SourceStream(
        "web", lambda: Dataset.from_dict({"text": texts[0]}), tokenizer, 16, shuffle_documents=20, seed=1
    )
    flat = [t for b, _, _ in itertools.islice(source.blocks(), 2000) for t in b.tolist()]
    order, current = [], []
    for token in flat:
        current.append(token)
        if token == eos:
            order.append(documents.index(tuple(current)))
            current = []
    order = order[:120]  # one pass
    assert sorted(order) == list(range(120))
    for start in range(0, 120, 20):
        window = order[start : start + 20]
        assert sorted(window) == list(range(start, start + 20))
    ranks = [np.corrcoef(order[s : s + 20], range(20))[0, 1] for s in range(0, 120, 20)]
    assert abs(np.mean(ranks)) < 0.35 and np.mean(np.diff(order) > 0) < 0.7  # no trace of the read order
