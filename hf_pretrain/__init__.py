"""hf_pretrain: pre-train and continue pre-training language models with the Hugging Face stack."""

from hf_pretrain.arguments import DataArguments, ModelArguments, PretrainingArguments
from hf_pretrain.checkpoint_state import schedule_from_checkpoint
from hf_pretrain.cli import parse_config
from hf_pretrain.collators import (
    UL2_DENOISERS,
    DataCollatorForCausalLM,
    DataCollatorForContrastive,
    DataCollatorForMaskedLM,
    DataCollatorForPrefixLM,
    DataCollatorForSpanCorruption,
    DataCollatorForUL2,
    Denoiser,
    add_sentinel_tokens,
    compute_span_corruption_lengths,
    prefix_lm_attention_mask,
)
from hf_pretrain.data.curriculum import CurriculumCollator, SequenceLengthCurriculum
from hf_pretrain.data.dedup import exact_duplicates, minhash_signatures, near_duplicates
from hf_pretrain.data.mixing import MixingSchedule, mix_blocks
from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus
from hf_pretrain.data.quality import DocumentFilter, filter_documents
from hf_pretrain.data.shards import load_prepared
from hf_pretrain.data.sources import SourceSpec, parse_sources
from hf_pretrain.data.streaming import MixedBlockStream, SourceStream
from hf_pretrain.data.tokenizer import train_tokenizer
from hf_pretrain.evaluation import (
    AblationArguments,
    BiEncoder,
    FinetuneArguments,
    IntrinsicArguments,
    run_ablation,
    run_finetuning,
    run_intrinsic,
)
from hf_pretrain.hub import HubPublisher, HubRevisionsCallback, RetryPolicy
from hf_pretrain.losses import info_nce_loss, mean_pool
from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM, masked_lm_loss, set_bidirectional
from hf_pretrain.models import MODEL_PRESETS, build_config, build_model
from hf_pretrain.objectives import ObjectivePlan
from hf_pretrain.pipeline import run_pretraining
from hf_pretrain.planning import ComputePlan, PlanArguments, chinchilla_tokens, optimal_for_budget, plan_compute
from hf_pretrain.schedules import WSDSchedule, cooldown_schedule, wsd_schedule
from hf_pretrain.training.callbacks import MaskingRateCallback, ObjectiveSwitchCallback
from hf_pretrain.training.callbacks.data_position import (
    SequenceLengthCallback,
    SourceTokensCallback,
    StreamPositionCallback,
)
from hf_pretrain.training.trainer import PretrainingTrainer

__version__ = "0.1.0"

__all__ = [
    "MODEL_PRESETS",
    "UL2_DENOISERS",
    "AblationArguments",
    "BiEncoder",
    "ComputePlan",
    "CurriculumCollator",
    "DataArguments",
    "DataCollatorForCausalLM",
    "DataCollatorForContrastive",
    "DataCollatorForMaskedLM",
    "DataCollatorForPrefixLM",
    "DataCollatorForSpanCorruption",
    "DataCollatorForUL2",
    "Denoiser",
    "DocumentFilter",
    "FinetuneArguments",
    "HubPublisher",
    "HubRevisionsCallback",
    "IntrinsicArguments",
    "LlamaForMaskedLM",
    "MaskingRateCallback",
    "MixedBlockStream",
    "MixingSchedule",
    "ModelArguments",
    "ObjectivePlan",
    "ObjectiveSwitchCallback",
    "PlanArguments",
    "PrepareArguments",
    "PretrainingArguments",
    "PretrainingTrainer",
    "RetryPolicy",
    "SequenceLengthCallback",
    "SequenceLengthCurriculum",
    "SourceSpec",
    "SourceStream",
    "SourceTokensCallback",
    "StreamPositionCallback",
    "WSDSchedule",
    "add_sentinel_tokens",
    "build_config",
    "build_model",
    "chinchilla_tokens",
    "compute_span_corruption_lengths",
    "cooldown_schedule",
    "exact_duplicates",
    "filter_documents",
    "info_nce_loss",
    "load_prepared",
    "masked_lm_loss",
    "mean_pool",
    "minhash_signatures",
    "mix_blocks",
    "near_duplicates",
    "optimal_for_budget",
    "parse_config",
    "parse_sources",
    "plan_compute",
    "prefix_lm_attention_mask",
    "prepare_corpus",
    "run_ablation",
    "run_finetuning",
    "run_intrinsic",
    "run_pretraining",
    "schedule_from_checkpoint",
    "set_bidirectional",
    "train_tokenizer",
    "wsd_schedule",
]
