"""`PretrainingTrainer`: `transformers.Trainer` with thin, pretraining-specific overrides.

Tokens seen (non-padding) and tokens/s come from the Trainer itself (`include_num_input_tokens_seen`, on by
default in `PretrainingArguments`); this class adds what the Trainer lacks and calls `super()` for everything else.
"""

from __future__ import annotations

import math

from transformers import Trainer

_MAX_LOG_LOSS = 80.0  # exp(80) ~ 5e34: an untrained-model perplexity stays finite in JSON logs


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy), capped so a diverged loss still logs a finite number."""
    return math.exp(min(loss, _MAX_LOG_LOSS))


class PretrainingTrainer(Trainer):
    """A `Trainer` for pretraining. Logs `<split>_perplexity` next to every evaluation loss.

    >>> from hf_pretrain import PretrainingArguments, PretrainingTrainer
    >>> PretrainingTrainer.__mro__[1].__name__
    'Trainer'
    """

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Evaluation logs come as {"eval_loss": ...}; a prefix other than "eval" is possible (metric_key_prefix).
        for key in [k for k in logs if k.endswith("_loss") and k != "loss" and not k.startswith("train")]:
            logs[key.removesuffix("loss") + "perplexity"] = perplexity(logs[key])
        super().log(logs, start_time)
