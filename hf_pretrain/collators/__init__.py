"""Data collators for the pretraining objectives; each works as a plain `collate_fn` in any script."""

from .causal import DataCollatorForCausalLM
from .contrastive import DataCollatorForContrastive
from .masked import DataCollatorForMaskedLM
from .prefix_lm import DataCollatorForPrefixLM, prefix_lm_attention_mask
from .span_corruption import DataCollatorForSpanCorruption, add_sentinel_tokens, compute_span_corruption_lengths
from .ul2 import UL2_DENOISERS, DataCollatorForUL2, Denoiser

__all__ = [
    "DataCollatorForCausalLM",
    "DataCollatorForContrastive",
    "DataCollatorForMaskedLM",
    "DataCollatorForPrefixLM",
    "DataCollatorForSpanCorruption",
    "DataCollatorForUL2",
    "Denoiser",
    "UL2_DENOISERS",
    "add_sentinel_tokens",
    "compute_span_corruption_lengths",
    "prefix_lm_attention_mask",
]
