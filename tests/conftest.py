"""Shared fixtures: a tiny tokenizer and corpus built locally, never downloaded."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The recipes (recipes/pretrain.py, ...) are what users run; tests import them as modules.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes"))

import pytest  # noqa: E402

from hf_pretrain.data.tokenizer import train_tokenizer  # noqa: E402

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Pretraining language models needs data, compute and patience.",
    "Masked language modelling hides tokens; causal language modelling predicts the next one.",
    "Span corruption replaces spans of tokens with sentinels and asks the decoder to restore them.",
] * 8


@pytest.fixture(scope="session")
def tiny_corpus() -> list[str]:
    return list(TINY_CORPUS)


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer (vocab 512) with pad/bos/eos/unk/mask, UL2 mode tokens and 100 sentinels."""
    return train_tokenizer(TINY_CORPUS, vocab_size=512, min_frequency=1)
