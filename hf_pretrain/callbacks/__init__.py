"""Trainer callbacks, one concern each."""

from .masking_rate import MaskingRateCallback

__all__ = ["MaskingRateCallback"]
