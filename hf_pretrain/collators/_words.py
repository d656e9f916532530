"""Word boundaries for whole-word masking, as vocabulary-level lookup tables built once per tokenizer.

A fast tokenizer's vocabulary says which tokens begin a word, by one of three conventions:

* byte-level BPE (GPT-2, RoBERTa, Llama 3): a token that begins with a space is spelled with the `Ġ` prefix;
* SentencePiece / Metaspace (T5, Llama 2, XLM-R): a token that begins a word carries the `▁` prefix;
* WordPiece (BERT): tokens that continue a word carry the `continuing_subword_prefix` (`##`), all others begin one.

The collators add the context-dependent rules (first token of a sequence; special tokens and padding are always
words of their own) with shifted tensor operations. A word is then exactly "a start token and the non-start
tokens that follow it". Punctuation glued to a word without a space (`dog.`) belongs to that word under the
byte-level and Metaspace conventions; pass `word_ids` features (from `encoding.word_ids()`) to use the
tokenizer's own pre-tokenization instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

_BYTE_LEVEL_SPACE = "\u0120"  # Ġ
_METASPACE = "\u2581"  # ▁


def _components(node) -> Iterator[dict]:
    """Every component of a (possibly nested `Sequence`) normalizer or pre-tokenizer spec."""
    if isinstance(node, dict):
        yield node
        for child in node.get("pretokenizers") or node.get("normalizers") or []:
            yield from _components(child)


def _space_marker(spec: dict, tokens: list[str]) -> str | None:
    for part in _components(spec.get("pre_tokenizer")):
        if part.get("type") == "ByteLevel":
            return _BYTE_LEVEL_SPACE
        if part.get("type") == "Metaspace":
            return part.get("replacement") or _METASPACE
    for part in _components(spec.get("normalizer")):  # Llama 2 style: Prepend("▁") + Replace(" ", "▁")
        if part.get("type") == "Replace" and part.get("content") == _METASPACE:
            return _METASPACE
    # Unknown pipeline: trust the vocabulary if a marker prefixes a good share of it.
    for marker in (_BYTE_LEVEL_SPACE, _METASPACE):
        if sum(t.startswith(marker) for t in tokens) > 0.1 * len(tokens):
            return marker
    return None


def word_start_table(tokenizer) -> np.ndarray | None:
    """(V,) bool, V = len(tokenizer): True where the token begins a word. None when the tokenizer follows none of
    the known conventions (then whole-word masking needs `word_ids` features)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    vocab_size = len(tokenizer)
    tokens = [t if isinstance(t, str) else "" for t in tokenizer.convert_ids_to_tokens(list(range(vocab_size)))]
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        starts = np.fromiter((not t.startswith(prefix) for t in tokens), dtype=bool, count=vocab_size)
    else:
        marker = _space_marker(spec, tokens)
        if marker is None:
            return None
        starts = np.fromiter((t.startswith(marker) for t in tokens), dtype=bool, count=vocab_size)
    added = [i for i in tokenizer.added_tokens_decoder if i < vocab_size]
    starts[added] = True  # added tokens are split out before the model runs: always words of their own
    return starts
