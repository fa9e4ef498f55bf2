"""The consume corridor: decide (decider), run (executors), settle (loop), and policies.

Read in this order to follow a message from poll to commit: :mod:`service.dispatch.loop`,
:mod:`service.dispatch.executors`, :mod:`service.dispatch.decider`, then the subscription's
:class:`~service.backends.checkpoint.Checkpoint`.
"""

from service.dispatch.executors import Ordering
from service.dispatch.outcomes import DispatchObserver, DispatchOutcome, Verdict
from service.dispatch.retry import RetryPolicy

__all__ = ["DispatchObserver", "DispatchOutcome", "Ordering", "RetryPolicy", "Verdict"]
