"""hf_pretrain: pre-train and continue pre-training language models with the Hugging Face stack."""

from hf_pretrain.arguments import DataArguments, ModelArguments, PretrainingArguments
from hf_pretrain.callbacks import HubRevisionsCallback, MaskingRateCallback, ObjectiveSwitchCallback
from hf_pretrain.cli import parse_config
from hf_pretrain.collators import (
    UL2_DENOISERS,
    DataCollatorForCausalLM,
    DataCollatorForMaskedLM,
    DataCollatorForPrefixLM,
    DataCollatorForSpanCorruption,
    DataCollatorForUL2,
    Denoiser,
    add_sentinel_tokens,
    compute_span_corruption_lengths,
    prefix_lm_attention_mask,
)
from hf_pretrain.data.tokenizer import train_tokenizer
from hf_pretrain.hub import HubPublisher, RetryPolicy
from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM, masked_lm_loss, set_bidirectional
from hf_pretrain.models import MODEL_PRESETS, build_config, build_model
from hf_pretrain.objectives import ObjectivePlan
from hf_pretrain.pipeline import run_pretraining
from hf_pretrain.schedules import WSDSchedule, cooldown_schedule, schedule_from_checkpoint, wsd_schedule
from hf_pretrain.trainer import PretrainingTrainer

__version__ = "0.1.0"

__all__ = [
    "MODEL_PRESETS",
    "UL2_DENOISERS",
    "DataArguments",
    "DataCollatorForCausalLM",
    "DataCollatorForMaskedLM",
    "DataCollatorForPrefixLM",
    "DataCollatorForSpanCorruption",
    "DataCollatorForUL2",
    "Denoiser",
    "HubPublisher",
    "HubRevisionsCallback",
    "LlamaForMaskedLM",
    "MaskingRateCallback",
    "ModelArguments",
    "ObjectivePlan",
    "ObjectiveSwitchCallback",
    "PretrainingArguments",
    "PretrainingTrainer",
    "RetryPolicy",
    "WSDSchedule",
    "add_sentinel_tokens",
    "build_config",
    "build_model",
    "compute_span_corruption_lengths",
    "cooldown_schedule",
    "masked_lm_loss",
    "parse_config",
    "prefix_lm_attention_mask",
    "run_pretraining",
    "schedule_from_checkpoint",
    "set_bidirectional",
    "train_tokenizer",
    "wsd_schedule",
]
