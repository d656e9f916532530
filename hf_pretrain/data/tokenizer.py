"""Tokenizers: load one, or train a byte-level BPE on the corpus in seconds, with every special token we need.

The objectives need more special tokens than most pretrained tokenizers carry: causal LM needs eos (the document
separator in packed blocks) and pad; masked LM needs mask; T5 span corruption needs sentinels `<extra_id_0>`,
`<extra_id_1>`, ...; UL2 needs its mode tokens. A trained tokenizer gets all of them; a loaded one is checked by
`check_special_tokens` before any work starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK, MASK = "<s>", "</s>", "<pad>", "<unk>", "<mask>"
UL2_MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")


def sentinel_token(index: int) -> str:
    """The T5 sentinel for span `index` (0 is the first span)."""
    return f"<extra_id_{index}>"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    num_sentinels: int = 100,
    mode_tokens: tuple[str, ...] = UL2_MODE_TOKENS,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 / Llama-3 style: no unknown tokens) on `texts`.

    `vocab_size` counts the special tokens; it is an upper bound (a small corpus runs out of merges first). The
    result is a `PreTrainedTokenizerFast` with bos/eos/pad/unk/mask, `num_sentinels` T5 sentinels (as additional
    special tokens) and the UL2 mode tokens.

    The mask token strips the space before it (`lstrip`, as RoBERTa's does): "The <mask> statement" is
    The, <mask>, Ġstatement, not The, Ġ, <mask>, Ġstatement, so a masked prompt has the token layout of the text it
    masks. It is set on the backend's added token, so it survives `save_pretrained` / `from_pretrained`.

    >>> tok = train_tokenizer(["a tiny corpus", "of two documents"], vocab_size=300, num_sentinels=2)
    >>> tok.eos_token, tok.mask_token, tok.convert_ids_to_tokens(tok("tiny")["input_ids"])[:1]
    ('</s>', '<mask>', ['t'])
    >>> tok.convert_ids_to_tokens(tok("a <mask>")["input_ids"])  # no Ġ (space) token before the mask
    ['a', '<mask>']
    """
    # The trainer adds the special tokens to the backend; only the backend's AddedToken flags take effect (the
    # wrapper's own mask_token does not change a token the backend already has).
    mask = AddedToken(MASK, lstrip=True, rstrip=False, normalized=False, special=True)
    specials = [PAD, BOS, EOS, UNK, mask, *mode_tokens, *(sentinel_token(i) for i in range(num_sentinels))]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(alphabet):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the {len(specials)} special tokens and the 256-byte alphabet "
            f"need at least {len(specials) + len(alphabet)}."
        )
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(_nonempty(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        mask_token=mask,
        additional_special_tokens=[*mode_tokens, *(sentinel_token(i) for i in range(num_sentinels))],
        clean_up_tokenization_spaces=False,
    )


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text and not text.isspace():
            yield text


def load_tokenizer(name_or_path: str, **kwargs) -> PreTrainedTokenizerBase:
    """Load a tokenizer from the Hub or a local folder, giving it a pad token (= eos) when it has none."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Safe for our collators: labels mark padding from the attention mask / lengths, never by pad id.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _has_token(tokenizer: PreTrainedTokenizerBase, name: str) -> bool:
    if name == "eos_token":  # the document separator of packed blocks: eos, or [SEP] in BERT-style tokenizers
        return tokenizer.eos_token is not None or getattr(tokenizer, "sep_token", None) is not None
    return getattr(tokenizer, name, None) is not None


def check_special_tokens(tokenizer: PreTrainedTokenizerBase, objective) -> None:
    """Raise a ValueError naming the missing tokens when `tokenizer` cannot serve `objective` (an `ObjectiveSpec`:
    its `required_tokens` are attribute names such as "mask_token", `needs_sentinels` the T5 sentinels)."""
    missing = [name for name in objective.required_tokens if not _has_token(tokenizer, name)]
    if objective.needs_sentinels and tokenizer.convert_tokens_to_ids(sentinel_token(0)) in (
        None,
        tokenizer.unk_token_id,
    ):
        missing.append("sentinel tokens <extra_id_N>")
    if missing:
        raise ValueError(
            f"The tokenizer lacks {', '.join(missing)}, which objective {objective.name!r} needs. Add them "
            "(tokenizer.add_special_tokens(...), then model.resize_token_embeddings(len(tokenizer))) or leave "
            "tokenizer_name_or_path unset to train a tokenizer that has every special token."
        )
