"""hf_pretrain: pre-train and continue pre-training language models with the Hugging Face stack."""

from hf_pretrain.arguments import DataArguments, ModelArguments, PretrainingArguments
from hf_pretrain.callbacks import MaskingRateCallback
from hf_pretrain.cli import parse_config
from hf_pretrain.collators import DataCollatorForCausalLM, DataCollatorForMaskedLM
from hf_pretrain.data.tokenizer import train_tokenizer
from hf_pretrain.models import MODEL_PRESETS, build_config, build_model
from hf_pretrain.pipeline import run_pretraining
from hf_pretrain.trainer import PretrainingTrainer

__version__ = "0.1.0"

__all__ = [
    "MODEL_PRESETS",
    "DataArguments",
    "DataCollatorForCausalLM",
    "DataCollatorForMaskedLM",
    "MaskingRateCallback",
    "ModelArguments",
    "PretrainingArguments",
    "PretrainingTrainer",
    "build_config",
    "build_model",
    "parse_config",
    "run_pretraining",
    "train_tokenizer",
]
