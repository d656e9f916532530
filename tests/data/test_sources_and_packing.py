import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, IterableDataset

from hf_pretrain import DataArguments
from hf_pretrain.data.packing import pack, pack_blocks, tokenize_documents
from hf_pretrain.data.sources import default_corpus, load_documents


def test_default_corpus_is_cpythons_reference_text():
    corpus = default_corpus()
    assert len(corpus) > 50
    assert sum(len(t) for t in corpus["text"]) > 300_000
    assert any("for_stmt" in t or 'The "for" statement' in t for t in corpus["text"])


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet"])
def test_local_files_of_each_format(tmp_path, suffix):
    docs = ["first document\nstill first", "second document", "third one", "fourth and last"]
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".txt":
        path.write_text("\n\n".join(docs))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    else:
        pq.write_table(pa.table({"text": docs}), path)
    train, validation = load_documents(DataArguments(data_files=[str(path)], validation_fraction=0.25))
    assert sorted(list(train["text"]) + list(validation["text"])) == sorted(
        docs
    )  # paragraphs are documents; none lost
    assert len(validation) == 1


def test_blank_documents_are_skipped_and_an_empty_corpus_is_an_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["real text", "   ", "", "more text"]))
    train, _ = load_documents(DataArguments(data_files=[str(path)], validation_fraction=0.0))
    assert list(train["text"]) == ["real text", "more text"]
    path.write_text("\n".join(json.dumps({"text": t}) for t in [" ", "\n"]))
    with pytest.raises(ValueError, match="corpus is empty"):
        load_documents(DataArguments(data_files=[str(path)], validation_fraction=0.0))


def test_missing_text_column_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"body": "x"}))
    with pytest.raises(ValueError, match="text_column='text' is not a column"):
        load_documents(DataArguments(data_files=[str(path)]))


def test_packing_loses_only_the_final_partial_block(tokenizer, tiny_corpus):
    docs = Dataset.from_dict({"text": tiny_corpus})
    tokenized = tokenize_documents(docs, tokenizer)
    stream = [t for row in tokenized["input_ids"] for t in row]
    assert sum(row[-1] == tokenizer.eos_token_id for row in tokenized["input_ids"]) == len(tiny_corpus)
    blocks = pack_blocks(tokenized, block_size=7)
    flat = [t for row in blocks["input_ids"] for t in row]
    assert len(blocks) == len(stream) // 7
    assert flat == stream[: len(flat)]  # same order, nothing skipped in between
    assert len(stream) - len(flat) < 7


def test_streamed_packing_yields_the_same_blocks(tokenizer, tiny_corpus):
    docs = Dataset.from_dict({"text": tiny_corpus})
    expected = list(pack(tokenize_documents(docs, tokenizer), 16)["input_ids"])
    streamed = pack(tokenize_documents(docs.to_iterable_dataset(num_shards=3), tokenizer), 16)
    assert isinstance(streamed, IterableDataset)
    assert [row["input_ids"] for row in streamed] == expected


def test_corpus_smaller_than_a_block_is_an_error(tokenizer):
    tokenized = tokenize_documents(Dataset.from_dict({"text": ["tiny"]}), tokenizer)
    with pytest.raises(ValueError, match="fewer than one block of block_size=4096"):
        pack_blocks(tokenized, 4096)
