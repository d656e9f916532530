"""Trainer callbacks, one concern each."""

from .masking_rate import MaskingRateCallback
from .objective_switch import ObjectiveSwitchCallback

__all__ = ["MaskingRateCallback", "ObjectiveSwitchCallback"]
