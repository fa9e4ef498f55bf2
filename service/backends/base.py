"""The messaging backend contract, shaped after Kafka's partitions and offsets.

A queue name is bound to topics (names or a ``^regex`` pattern), a consumer group and a
dead-letter topic. :meth:`MessagingBackend.subscribe` joins the queue's group and returns a
:class:`Subscription`, one group member. Every message a subscription delivers ends in exactly
one of these ways, in any order (completions may arrive out of order):

* :meth:`Subscription.acknowledge`: done; its offset may be committed;
* :meth:`Subscription.dead_letter`: copied to the dead-letter topic with a reason, then done;
* :meth:`Subscription.redeliver`: failed; delivered again after a delay, ``attempt`` + 1;
* :meth:`Subscription.release`: handed back unprocessed; delivered again, same ``attempt``.

What may be committed is decided in one place, the subscription's
:class:`~service.backends.checkpoint.Checkpoint`: per partition, only offsets below which
every message is done, and only once every commit gate (:class:`CommitGate`) says the side
data below them is durable. A message not done is delivered again after a restart, and so is
a message left unsettled when the subscription closes. A partition waiting for a redelivery
is read again from the lowest offset that awaits one, so a redelivered message comes back in
offset order and nothing done or still running is delivered twice.

Settling a message of a partition this member no longer owns (revoked or lost meanwhile)
does nothing: the partition's next owner delivers it again.

An exactly-once subscription (:attr:`Subscription.transactional`) commits in Kafka
transactions: the records handlers published for a message (staged, see
:mod:`service.backends.outputs`), its dead letter and its dedup entries are written in the
transaction that commits its offset, or not at all. A transaction that fails is aborted and
every assigned partition is rewound to its committed offset (listeners see it as a loss
followed by an assignment), so what was not committed is processed again.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from service.backends.outputs import StagedRecord
from service.errors import ConfigurationError
from service.messages import Headers, Message

__all__ = [
    "CommitGate",
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

    def headers_for(self, message: Message, *, payload_dropped: str = "") -> Headers:
        """The original headers of ``message`` followed by the ``dlq.*`` headers.

        With ``payload_dropped`` (why the full record was refused) the original headers are
        left out too, and ``dlq.payload_dropped`` / ``dlq.payload_size`` are added: the dead
        letter of a record the topic cannot take.
        """
        extra = [
            ("original_topic", message.topic),
            ("original_partition", str(message.partition)),
            ("original_offset", str(message.offset)),
            ("error_class", self.error_class),
            ("error_text", self.error_text[:2000] if payload_dropped else self.error_text),
            ("attempts", str(self.attempts)),
            ("failing_consumers", ",".join(self.failing_consumers)),
        ]
        if payload_dropped:
            size = 0 if message.value is None else len(message.value)
            extra += [("payload_dropped", payload_dropped[:500]), ("payload_size", str(size))]
        dlq = tuple(
            (DLQ_HEADER_PREFIX + name, value.encode("utf-8", "replace")) for name, value in extra
        )
        return dlq if payload_dropped else message.headers + dlq


class SubscriptionListener(Protocol):
    """Told when a subscription gains or loses partitions.

    Called on the polling thread, inside :meth:`Subscription.poll`, in the order the
    listeners were added. For one rebalance every listener hears the same event.
    """

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """``partitions`` were assigned; no message of them is delivered before this returns.

        A partition assigned again after a revocation or a loss starts afresh: whatever
        a listener kept about it from before must not be trusted.
        """

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """``partitions`` are being revoked in an orderly way.

        When every listener has returned, the done work of ``partitions`` is committed
        (through the commit gates), then the partitions are gone.
        """

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """``partitions`` were lost (the group moved on without us): nothing is committed.

        Drop every piece of state about them; results of work still running on them must
        not be settled or stored as if the partitions were still ours.
        """


class CommitGate(Protocol):
    """Side data that must be durable before an offset that depends on it is committed.

    The dedup store is one (its entries); produced outputs and transactions are others.
    """

    def ticket(self) -> Callable[[], bool]:
        """A check taken when a commit is prepared; true once earlier side data is durable.

        "Earlier" means everything the gate was given before this call. The check raises a
        :class:`~service.errors.ServiceError` (e.g. ``DeduplicationStoreError``) when something
        it covers failed: the prepared offsets must then not be committed (the checkpoint
        raises :class:`~service.errors.CommitError` from it).
        """

    def wait(self, timeout: float) -> None:
        """Block until everything given so far is durable (revocation, close).

        Raises:
            ServiceError: something failed, or is still not durable after ``timeout``.
        """


class Subscription(ABC):
    """One member of a queue's consumer group: polls messages and settles each one."""

    transactional = False
    """Whether it commits in transactions (exactly-once): handlers' outputs are staged."""

    def add_listener(self, listener: SubscriptionListener) -> None:
        """Tell ``listener`` about assignments, revocations and losses from now on."""
        del listener

    def add_gate(self, gate: CommitGate) -> None:
        """Commit no offset before ``gate`` says the side data below it is durable."""
        del gate

    def maintain(self) -> None:  # noqa: B027 - optional: a backend without timers has none
        """Carry out what is due without fetching: redeliveries (seeks), commits.

        The loop calls it while it takes no messages (its executor is full), so a retry
        that is due, or a commit, does not wait for room.
        """

    def serve_outputs(self) -> None:  # noqa: B027 - optional: backends that publish at once
        """Serve delivery reports of records handlers published (outputs) without waiting."""

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop fetching ``partitions`` (back-pressure) until :meth:`resume`.

        The pause is reset when a partition is assigned again.
        """
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
    def acknowledge(self, message: Message, staged: Sequence[StagedRecord] = ()) -> None:
        """Mark ``message`` done.

        ``staged``: the records its handlers published, written in the transaction that
        commits its offset (transactional subscriptions only; others are never given any).
        """

    def refusal(self, message: Message) -> str | None:
        """Why an aborted transaction refused the outputs of ``message`` (at this offset).

        The loop fails the message with it (retried, then dead-lettered) instead of staging
        the same refused outputs again. None: nothing was refused (always, when not
        transactional).
        """
        del message
        return None

    @abstractmethod
    def redeliver(self, message: Message, delay: float = 0.0) -> None:
        """``message`` failed: deliver it again as the next attempt after ``delay`` seconds.

        Its partition is held (nothing after it is delivered) until then.
        """

    @abstractmethod
    def release(self, message: Message) -> None:
        """``message`` was handed back unprocessed: deliver it again as the same attempt."""

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
