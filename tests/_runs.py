"""What the end-to-end tests share: the repository root, the pretraining recipe, and reading a run's logs."""

import json
import os

import pretrain  # recipes/pretrain.py, the command users run (conftest.py puts recipes/ on sys.path)
import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log_history(output_dir: str) -> list[dict]:
    """Every log entry of a finished run (`trainer_state.json`)."""
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        return json.load(handle)["log_history"]


def train_logs(output_dir: str) -> dict[int, dict]:
    """The training log entries (those with a loss), by global step."""
    return {entry["step"]: entry for entry in log_history(output_dir) if "loss" in entry}


def wordpiece_bert(folder, texts):
    """A tiny BertForMaskedLM and a WordPiece tokenizer trained on `texts`, saved to `folder`."""
    from tokenizers import BertWordPieceTokenizer

    os.makedirs(folder, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(texts, vocab_size=300, min_frequency=1)
    trainer.save_model(str(folder))
    tokenizer = BertTokenizerFast(os.path.join(folder, "vocab.txt"))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


__all__ = ["REPO", "log_history", "pretrain", "train_logs", "wordpiece_bert"]
