"""hf_pretrain: pre-train and continue pre-training language models with the Hugging Face stack."""

__version__ = "0.1.0"
