"""One normalisation on every data path, and only undecodable bytes are invalid UTF-8 (a U+FFFD in valid text is
text): the in-memory, streamed and prepared blocks of the same sources are identical."""

import itertools
import json

import pytest

from hf_pretrain import DataArguments
from hf_pretrain.data.quality import DocumentFilter, filter_documents
from hf_pretrain.data.sources import SourceSpec, load_documents
from hf_pretrain.data.streaming import SourceStream
from hf_pretrain.data.training_data import load_source_documents, source_blocks, source_streams

# What normalisation changes: decomposed accents (NFC composes them), CRLF and CR newlines, surrounding blanks.
JSON_DOCUMENTS = [
    "  Cafe\u0301 au lait, the first line\r\nand the second line\rand the third.  ",
    "A replacement character \ufffd that the writer meant, in valid UTF-8.",
    *[f"Document {i}: the river carries seeds over old walls and fields, north wind {i * 7}." for i in range(30)],
]
TEXT_PARAGRAPHS = [
    "  e\u0301te\u0301 in a paragraph of a text file  ",
    "a valid \ufffd stays",
    *[f"Paragraph {i} of the book, with quiet light on the stone." for i in range(30)],
]


def write_sources(tmp_path):
    lines = tmp_path / "web.jsonl"
    with open(lines, "wb") as handle:
        for text in JSON_DOCUMENTS:
            handle.write(json.dumps({"text": text}, ensure_ascii=False).encode() + b"\n")
        handle.write(b'{"text": "undecodable \xff\xfe bytes"}\n')
    paragraphs = tmp_path / "book.txt"
    paragraphs.write_bytes(
        "\n\n".join(TEXT_PARAGRAPHS[:2]).encode()
        + b"\n\nbroken \xc3 byte\n\n"
        + "\n\n".join(TEXT_PARAGRAPHS[2:]).encode()
    )
    return [
        {"name": "web", "data_files": [str(lines)], "weight": 0.6},
        {"name": "book", "data_files": [str(paragraphs)], "weight": 0.4},
    ]


def test_valid_replacement_characters_are_kept_and_undecodable_bytes_dropped(tmp_path):
    assert DocumentFilter(filters=())(["x \ufffd"]) == (["x \ufffd"], [""])
    sources = write_sources(tmp_path)
    for source in sources:  # the prepared path: SourceSpec.load + filter_documents
        kept, dropped = filter_documents(SourceSpec(**source).load(), DocumentFilter(filters=()))
        assert dropped == {"invalid_utf8": 1}
        assert sum("\ufffd" in text for text in kept["text"]) == 1
    train, _ = load_documents(DataArguments(data_files=[sources[1]["data_files"][0]], validation_fraction=0.0))
    assert "a valid \ufffd stays" in train["text"] and not any("broken" in t for t in train["text"])
    stream = SourceStream("web", lambda: SourceSpec(**sources[0]).load(streaming=True), None, 8)
    texts, reasons = stream.document_filter(list(SourceSpec(**sources[0]).load(streaming=True)["text"]))
    assert reasons.count("invalid_utf8") == 1 and sum("\ufffd" in t for t in texts if t) == 1


def in_memory_blocks(data_args, tokenizer) -> dict[str, list]:
    train, _, specs = load_source_documents(data_args, seed=0)
    blocks = {spec.name: source_blocks(documents, tokenizer, data_args) for spec, documents in zip(specs, train)}
    return {name: list(zip(b["input_ids"], b["document_lengths"])) for name, b in blocks.items()}


def streamed_blocks(data_args, tokenizer) -> dict[str, list]:
    counts = {name: len(blocks) for name, blocks in in_memory_blocks(data_args, tokenizer).items()}
    return {
        stream.name: [(b.tolist(), p) for b, p, _ in itertools.islice(stream.blocks(), counts[stream.name])]
        for stream in source_streams(data_args, tokenizer)
    }


def prepared_blocks(data_args, tokenizer) -> dict[str, list]:
    """The datatrove pipeline's shards (one task per source, no filters or dedup: only the normalisation acts),
    read per source in storage order, which is document order before mixing."""
    import os

    from datasets import concatenate_datasets, load_from_disk

    from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus

    output = os.path.join(os.path.dirname(data_args.data_sources[0]["data_files"][0]), "prepared")
    args = PrepareArguments(
        sources=data_args.data_sources, output_dir=output, block_size=data_args.block_size,
        normalization=data_args.normalization, quality_filters=["none"], exact_dedup=False, near_dedup=False,
        validation_fraction=0.0, tasks=1,
    )  # fmt: skip
    prepare_corpus(args, tokenizer)
    with open(os.path.join(output, "index.json")) as handle:
        shards = json.load(handle)["train_shards"]
    rows = concatenate_datasets([load_from_disk(os.path.join(output, shard)) for shard in shards])
    names = [source["name"] for source in data_args.data_sources]
    blocks = {name: [] for name in names}
    for ids, lengths, source in zip(rows["input_ids"], rows["document_lengths"], rows["source_id"]):
        blocks[names[source]].append((ids, lengths))
    return blocks


PATHS = {"streamed": streamed_blocks, "prepared": prepared_blocks}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("normalization", ["NFC", "NFKC"])
def test_every_data_path_trains_on_the_same_blocks(tmp_path, tokenizer, path, normalization):
    data_args = DataArguments(
        data_sources=write_sources(tmp_path), validation_fraction=0.0, block_size=16, normalization=normalization,
        stream_shuffle_documents=0, stream_shuffle_blocks=0,
    )  # fmt: skip
    reference = in_memory_blocks(data_args, tokenizer)
    assert all(len(blocks) > 20 for blocks in reference.values())
    assert PATHS[path](data_args, tokenizer) == reference
    first = tokenizer.decode([t for ids, _ in reference["web"][:4] for t in ids])
    assert first.startswith("Café au lait, the first line\nand the second line\nand the third.<")  # then eos
