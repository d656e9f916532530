"""What the model-level tests share: tiny Llama configs, one torch thread, and a subprocess preamble that makes
importing hf_pretrain fail (to prove a checkpoint loads with transformers alone)."""

import pytest
import torch
from transformers import LlamaConfig

VOCAB = 97

# Prepended to scripts run in a fresh interpreter: any import of hf_pretrain raises there.
NO_HF_PRETRAIN = """
import importlib.abc, json, sys

class NoHfPretrain(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_pretrain":
            raise ImportError("hf_pretrain must not be imported here")

sys.meta_path.insert(0, NoHfPretrain())
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a thread pool's wake-ups cost more than the matmuls (10x on a loaded host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama_config(**overrides) -> LlamaConfig:
    kwargs = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
        **overrides,
    }
    return LlamaConfig(**kwargs)
