"""What the dispatcher reports: outcomes, the observer protocol, and error policy helpers."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from service.backends.base import DeadLetterReason
from service.backends.outputs import Outputs
from service.errors import (
    BackendError,
    ConsumerError,
    DeduplicationStoreError,
    TransientError,
)
from service.messages import Message

__all__ = ["ACK", "SKIP", "DispatchObserver", "DispatchOutcome", "ExceptionCallback", "Verdict"]

logger = logging.getLogger("service.dispatcher")

ExceptionCallback = Callable[[Exception], None]


class DispatchObserver(Protocol):
    """Told what the dispatcher does (metrics); every method must be cheap and not raise."""

    def polled(self, count: int) -> None:
        """A poll returned ``count`` messages."""

    def consumer_outcome(self, consumer: str, outcome: str) -> None:
        """``consumer`` ended a message with ``success``, ``failure`` or ``duplicate``."""

    def message_outcome(self, message: Message, outcome: DispatchOutcome, seconds: float) -> None:
        """A message was settled as ``outcome`` after ``seconds`` of dispatching."""


class DispatchOutcome(enum.Enum):
    """How the dispatcher settled one message."""

    ACKNOWLEDGED = "acknowledged"
    SKIPPED = "skipped"  # no consumer accepts the manifest; acknowledged undecoded
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class Verdict:
    """How to settle a message, decided by the dispatcher.

    Attributes:
        outcome: acknowledge (or skip), retry after ``delay`` seconds, or dead-letter with
            ``reason``.
        reason: why it is dead-lettered.
        delay: seconds before it is delivered again.
        outputs: records its handlers published: the verdict holds only once each is
            confirmed (until then the message stays in flight).
    """

    outcome: DispatchOutcome
    reason: DeadLetterReason | None = None
    delay: float = 0.0
    outputs: Outputs | None = None


ACK = Verdict(DispatchOutcome.ACKNOWLEDGED)
SKIP = Verdict(DispatchOutcome.SKIPPED)


def report(callback: ExceptionCallback | None, error: Exception) -> None:
    if callback is not None:
        callback(error)


def may_pass(error: Exception) -> bool:
    """Whether ``error`` may pass with time: then the message is never dead-lettered."""
    if isinstance(error, ConsumerError):
        return isinstance(error.__cause__, (TransientError, ConnectionError, TimeoutError))
    return isinstance(error, (BackendError, DeduplicationStoreError))


def consumer_error(
    name: str, message: Message, exc: Exception, fields: dict[str, object] | None = None
) -> ConsumerError:
    """The :class:`ConsumerError` for ``exc``, logged with ``fields`` (JSON log fields)."""
    error = ConsumerError(name, message, exc)
    error.__cause__ = exc
    logger.warning("%s", error, exc_info=exc, extra={**(fields or {}), "consumer": name})
    return error


def store_error(
    operation: str, key: str, message: Message, exc: BaseException
) -> DeduplicationStoreError:
    if isinstance(exc, DeduplicationStoreError):
        return exc
    error = DeduplicationStoreError(
        f"cannot {operation} dedup key {key!r} for {message.location}: {type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return error
