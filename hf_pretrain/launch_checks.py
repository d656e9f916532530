"""Checks of the launch setup (DeepSpeed, Accelerate) that must fail before training, not silently change it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping


def load_deepspeed_config(config: str | Mapping | None) -> dict | None:
    if config is None or isinstance(config, Mapping):
        return dict(config) if config is not None else None
    if not os.path.isfile(config):
        raise ValueError(f"deepspeed: no such config file {config!r}.")
    with open(config) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"deepspeed: {config!r} is not valid JSON: {error}") from None


def check_deepspeed_config(config: str | Mapping | None) -> None:
    """A DeepSpeed `scheduler` block silently replaces the Trainer's schedule (our WSD), and an `optimizer` block
    its optimizer; both make a run differ from its config without a word, so both are errors."""
    loaded = load_deepspeed_config(config)
    if not loaded:
        return
    for block, owner in (("scheduler", "the WSD schedule (decay_steps, decay_type, ...)"), ("optimizer", "optim")):
        if block in loaded:
            raise ValueError(
                f"The DeepSpeed config has a {block!r} block, which would silently replace the Trainer's {owner}. "
                f"Remove the block; the Trainer passes its own {block} to DeepSpeed ('auto' values come from "
                "the training arguments)."
            )
