"""The messaging backend contract, shaped after Kafka's partitions and offsets.

A queue name is bound to topics (names or a ``^regex`` pattern), a consumer group and a
dead-letter topic. :meth:`MessagingBackend.subscribe` joins the queue's group and returns a
:class:`Subscription`, one group member. Every message a subscription delivers ends in exactly
one of three ways, in any order (completions may arrive out of order):

* :meth:`Subscription.acknowledge`: done; its offset may be committed;
* :meth:`Subscription.dead_letter`: copied to the dead-letter topic with a reason, then done;
* :meth:`Subscription.redeliver`: not done; it will be delivered again (``attempt`` + 1).

A backend commits, per partition, only offsets below which every message is done, so a
message that is not done is delivered again after a restart. A message delivered but left
without any of the three calls when the subscription closes is delivered again, too.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from service.errors import ConfigurationError
from service.messages import Headers, Message

__all__ = [
    "DeadLetterReason",
    "MessagingBackend",
    "Subscription",
    "SubscriptionListener",
    "TopicPartition",
    "default_dead_letter_topic",
]

TopicPartition = tuple[str, int]

DLQ_HEADER_PREFIX = "dlq."


def check_topics(queue_name: str, topics: tuple[str, ...]) -> None:
    """Refuse a ``^pattern`` that is not a valid regular expression.

    Raises:
        ConfigurationError: naming the queue and the pattern.
    """
    for topic in topics:
        if topic.startswith("^"):
            try:
                re.compile(topic)
            except re.error as exc:
                raise ConfigurationError(
                    f"queue {queue_name!r}: bad topic pattern {topic!r}: {exc}"
                ) from exc


def default_dead_letter_topic(queue_name: str) -> str:
    """``<queue>.dlq``, the dead-letter topic of a queue unless configured otherwise."""
    return f"{queue_name}.dlq"


@dataclass(frozen=True, slots=True)
class DeadLetterReason:
    """Why a message was dead-lettered; travels as ``dlq.*`` headers on the dead letter.

    Attributes:
        error_class: the class name of the error that decided it.
        error_text: that error's text.
        attempts: how many times the message was delivered.
        failing_consumers: the names of the consumers that had not succeeded.
    """

    error_class: str
    error_text: str
    attempts: int = 1
    failing_consumers: tuple[str, ...] = ()

    @classmethod
    def from_error(
        cls, error: BaseException, attempts: int = 1, failing_consumers: tuple[str, ...] = ()
    ) -> DeadLetterReason:
        """The reason for ``error``."""
        return cls(type(error).__name__, str(error), attempts, failing_consumers)

    @property
    def text(self) -> str:
        """``ErrorClass: text``."""
        return f"{self.error_class}: {self.error_text}"

    def headers_for(self, message: Message) -> Headers:
        """The original headers of ``message`` followed by the ``dlq.*`` headers."""
        extra = (
            ("original_topic", message.topic),
            ("original_partition", str(message.partition)),
            ("original_offset", str(message.offset)),
            ("error_class", self.error_class),
            ("error_text", self.error_text),
            ("attempts", str(self.attempts)),
            ("failing_consumers", ",".join(self.failing_consumers)),
        )
        return message.headers + tuple(
            (DLQ_HEADER_PREFIX + name, value.encode("utf-8", "replace")) for name, value in extra
        )


class SubscriptionListener(Protocol):
    """Told when a subscription gains or loses partitions, and before it commits."""

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """``partitions`` were assigned; no message of them is delivered before this returns."""

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """``partitions`` are being revoked; their done work is committed after this returns."""

    def before_commit(self) -> None:
        """Offsets are about to be committed synchronously: block until that is safe.

        Raising prevents the commit.
        """

    def commit_failed(self) -> None:
        """A commit failed; its offsets are committed again with the next one."""

    def commit_ticket(self) -> Callable[[], bool]:
        """A check, taken when an asynchronous commit is prepared: true once it is safe.

        The offsets prepared are committed when it returns true; raising prevents it.
        """


class Subscription(ABC):
    """One member of a queue's consumer group: polls messages and settles each one."""

    def add_listener(self, listener: SubscriptionListener) -> None:
        """Tell ``listener`` about assignments and commits from now on.

        A backend without rebalances or commits (in memory) never calls it.
        """
        del listener

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop fetching ``partitions`` (back-pressure) until :meth:`resume`; memory: no-op."""
        del partitions

    def resume(self, partitions: list[TopicPartition]) -> None:
        """Fetch ``partitions`` again after :meth:`pause`."""
        del partitions

    @abstractmethod
    def poll(self, max_messages: int, timeout: float) -> Iterable[Message] | None:
        """Up to ``max_messages`` messages, waiting at most ``timeout`` seconds for the first.

        Returns:
            The messages, possibly none, to be iterated once, in order, before the next
            poll; ``None`` when the queue has ended, which only a finite backend
            (:class:`service.InMemoryBackend` once drained) ever says. The iterable may
            skip messages that became stale meanwhile (their partition was rewound by
            :meth:`redeliver` or revoked): they are delivered again later.
        """

    @abstractmethod
    def acknowledge(self, message: Message) -> None:
        """Mark ``message`` done."""

    @abstractmethod
    def redeliver(self, message: Message, delay: float = 0.0) -> None:
        """Mark ``message`` not done: deliver it again, not before ``delay`` seconds."""

    @abstractmethod
    def dead_letter(self, message: Message, reason: DeadLetterReason) -> None:
        """Publish ``message`` to the queue's dead-letter topic with ``reason``; then done.

        Raises:
            ProduceError: the dead letter could not be written; the message is not done.
        """

    @abstractmethod
    def close(self) -> None:
        """Commit what is done, leave the group; undone messages will be delivered again."""

    def __enter__(self) -> Self:
        """Use as a context manager that closes on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the subscription."""
        self.close()


class MessagingBackend(ABC):
    """Topics, queues and publishing for one broker (or the in-memory stand-in)."""

    @abstractmethod
    def declare_topic(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` if missing; never alter an existing topic."""

    @abstractmethod
    def declare_queue(
        self, queue_name: str, *topics: str, dead_letter_topic: str | None = None
    ) -> None:
        """Bind ``queue_name`` to ``topics`` (default: the topic named like the queue).

        A topic starting with ``^`` is a regular expression matched against topic names.
        The dead-letter topic defaults to :func:`default_dead_letter_topic`.
        """

    @abstractmethod
    def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> None:
        """Publish one record.

        Raises:
            ProduceError: the broker did not accept the record.
        """

    @abstractmethod
    def subscribe(self, queue_name: str) -> Subscription:
        """Join the consumer group of ``queue_name`` and return the new member."""

    @abstractmethod
    def close(self) -> None:
        """Flush pending publishes and release the backend's resources."""
