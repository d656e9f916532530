"""Publishing to the Hub: background pushes (publisher), the run's files and branches (run), the model card, and
the callback that pushes every checkpoint to its own revision."""

from .publisher import HubPublisher, RetryPolicy
from .revisions import HubRevisionsCallback

__all__ = ["HubPublisher", "HubRevisionsCallback", "RetryPolicy"]
