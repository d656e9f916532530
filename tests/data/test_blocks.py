"""Packing with document boundaries: no token lost but the final partial block, no boundary without an EOS."""

import numpy as np
import pyarrow as pa
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_pretrain.data.packing import block_document_lengths, encode_documents, pack_blocks, tokenize_documents

EOS = 0


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    block_size=st.integers(2, 64),
)
def test_blocks_keep_every_token_and_every_boundary(lengths, block_size):
    # Documents of distinct non-zero tokens, each ending with EOS (0), as tokenize_documents makes them.
    documents, next_token = [], 1
    for length in lengths:
        documents.append([*range(next_token, next_token + length - 1), EOS])
        next_token += length
    stream = [t for doc in documents for t in doc]
    if len(stream) < block_size:
        return
    blocks = pack_blocks(Dataset.from_dict({"input_ids": documents}), block_size, document_lengths=True)
    flat = [t for row in blocks["input_ids"] for t in row]
    assert flat == stream[: len(flat)] and len(stream) - len(flat) < block_size  # only the final partial block
    pieces_seen = []
    for row, pieces in zip(blocks["input_ids"], blocks["document_lengths"]):
        assert sum(pieces) == block_size and min(pieces) > 0
        ends = np.cumsum(pieces)
        for end in ends[:-1]:  # inside a block, a piece ends only where a document ends: at its EOS
            assert row[end - 1] == EOS
        pieces_seen.extend(pieces)
    # The pieces rebuild the documents: consecutive pieces join only across a block edge, never at an EOS.
    rebuilt, current, position = [], [], 0
    for piece in pieces_seen:
        current += flat[position : position + piece]
        position += piece
        if current[-1] == EOS:
            rebuilt.append(current)
            current = []
    assert rebuilt == documents[: len(rebuilt)]


def test_block_document_lengths_small_case():
    # Documents of 3, 5 and 4 tokens in blocks of 4: [3|1], [4], [4] (the last piece of the 5-token one ends it).
    lengths = block_document_lengths(np.array([3, 5, 4]), block_size=4, num_blocks=3)
    assert lengths.to_pylist() == [[3, 1], [4], [4]]
    assert block_document_lengths(np.array([2, 2, 9]), 4, 2).to_pylist() == [[2, 2], [4]]


def test_tokenize_documents_appends_eos_and_matches_the_tokenizer(tokenizer, tiny_corpus):
    tokenized = tokenize_documents(Dataset.from_dict({"text": tiny_corpus}), tokenizer)
    expected = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in tiny_corpus]
    assert tokenized["input_ids"] == expected
    flat, lengths = encode_documents(tokenizer, tiny_corpus[:3])
    assert flat.dtype == np.int32 and lengths.tolist() == [len(e) for e in expected[:3]]


def test_null_documents_are_an_error_not_a_silent_empty_document(tokenizer):
    documents = Dataset(pa.table({"text": pa.array(["fine", None])}))
    with pytest.raises(ValueError, match="1 documents have no text"):
        tokenize_documents(documents, tokenizer)
