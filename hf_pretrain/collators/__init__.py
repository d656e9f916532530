"""Data collators for the pretraining objectives; each works as a plain `collate_fn` in any script.

`pad_rows` is the padding every collator uses, public for other batch builders (e.g. the evaluation tasks).
"""

from ._padding import pad_rows
from ._rows import IGNORE_INDEX  # the label of positions nothing is predicted at, as in transformers
from .causal import DataCollatorForCausalLM
from .contrastive import DataCollatorForContrastive
from .masked import DataCollatorForMaskedLM
from .prefix_lm import DataCollatorForPrefixLM, prefix_lm_attention_mask
from .span_corruption import DataCollatorForSpanCorruption, add_sentinel_tokens, compute_span_corruption_lengths
from .ul2 import UL2_DENOISERS, DataCollatorForUL2, Denoiser

__all__ = [
    "IGNORE_INDEX",
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
    "pad_rows",
    "prefix_lm_attention_mask",
]
