"""Trainer callbacks, one concern each."""

from .hub_revisions import HubRevisionsCallback
from .masking_rate import MaskingRateCallback
from .objective_switch import ObjectiveSwitchCallback

__all__ = ["HubRevisionsCallback", "MaskingRateCallback", "ObjectiveSwitchCallback"]
