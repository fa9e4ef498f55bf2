"""InMemoryBackend: the backend contract inside one process, for unit-testing consumers.

It behaves like a small Kafka: topics have partitions and offsets, a queue is a consumer
group with its own positions, and settling works as the contract says. It is finite: a
subscription's :meth:`~InMemorySubscription.poll` returns ``None`` once nothing is left, so
``consume_loop`` returns. A message left undone (:meth:`~InMemorySubscription.redeliver`, or
undecided when the subscription closed) stays :meth:`~InMemoryBackend.pending` and is
delivered again by the next subscription to the queue.
"""

from __future__ import annotations

import itertools
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.backends.base import (
    DeadLetterReason,
    MessagingBackend,
    Subscription,
    check_topics,
    default_dead_letter_topic,
)
from service.errors import ConfigurationError
from service.messages import Headers, Message

if TYPE_CHECKING:
    from service.consumers import Consumer
    from service.dedup.base import DeduplicationCache
    from service.dispatcher import MessageDispatcher
    from service.serializers.registry import SerializerRegistry

__all__ = ["DeadLetter", "InMemoryBackend", "InMemorySubscription", "link_synchronously"]

_Position = tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message and why."""

    message: Message
    reason_detail: DeadLetterReason

    @property
    def reason(self) -> str:
        """``ErrorClass: text``."""
        return self.reason_detail.text


@dataclass
class _Queue:
    topics: tuple[str, ...]
    dead_letter_topic: str
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    pending: dict[_Position, Message] = field(default_factory=dict)
    holders: dict[_Position, int] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)


class InMemoryBackend(MessagingBackend):
    """Topics, queues and consumer groups held in memory. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._topics: dict[str, list[list[Message]]] = {}
        self._queues: dict[str, _Queue] = {}
        self._round_robin = itertools.count()
        self._subscription_ids = itertools.count(1)
        self._publish_hooks: list[Callable[[str], None]] = []

    # -- topics and queues ------------------------------------------------------------
    def declare_topic(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` partitions unless it exists."""
        if partitions < 1:
            raise ConfigurationError(f"topic {topic!r}: partitions must be >= 1")
        with self._lock:
            self._topics.setdefault(topic, [[] for _ in range(partitions)])

    def declare_queue(
        self, queue_name: str, *topics: str, dead_letter_topic: str | None = None
    ) -> None:
        """Bind ``queue_name`` to ``topics`` (default: its own name)."""
        check_topics(queue_name, topics)
        with self._lock:
            self._queues[queue_name] = _Queue(
                topics or (queue_name,),
                dead_letter_topic or default_dead_letter_topic(queue_name),
            )

    def bind(self, queue_name: str, *topics: str) -> None:
        """Bind ``queue_name`` to ``topics``; the same as :meth:`declare_queue`."""
        self.declare_queue(queue_name, *topics)

    def _queue(self, queue_name: str) -> _Queue:
        queue = self._queues.get(queue_name)
        if queue is None:
            queue = _Queue((queue_name,), default_dead_letter_topic(queue_name))
            self._queues[queue_name] = queue
        return queue

    def _topics_of(self, queue: _Queue) -> list[str]:
        names: list[str] = []
        for spec in queue.topics:
            if spec.startswith("^"):
                names.extend(sorted(t for t in self._topics if re.fullmatch(spec, t)))
            elif spec in self._topics:
                names.append(spec)
        return names

    # -- publishing -------------------------------------------------------------------
    def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> None:
        """Append a record to ``topic`` (created with one partition if missing)."""
        with self._lock:
            partitions = self._topics.setdefault(topic, [[]])
            if key is None:
                index = next(self._round_robin) % len(partitions)
            else:
                index = zlib.crc32(key) % len(partitions)
            log = partitions[index]
            log.append(Message(topic, value, tuple(headers), key, index, len(log)))
        for hook in list(self._publish_hooks):
            hook(topic)

    def publish_raw(
        self, topic: str, payload: bytes | None, headers: Headers = (), key: bytes | None = None
    ) -> None:
        """Publish bytes as they are, e.g. a malformed record in a test."""
        self.publish(topic, payload, key=key, headers=headers)

    def on_publish(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(topic)`` after every publish (used by :func:`link_synchronously`)."""
        self._publish_hooks.append(hook)

    def records(self, topic: str) -> list[Message]:
        """Every record of ``topic``, partition by partition."""
        with self._lock:
            return [m for log in self._topics.get(topic, []) for m in log]

    # -- inspection -------------------------------------------------------------------
    def pending(self, queue_name: str) -> list[Message]:
        """Messages delivered to ``queue_name`` and not yet done, in offset order."""
        with self._lock:
            queue = self._queue(queue_name)
            return [queue.pending[p] for p in sorted(queue.pending)]

    def dead_letters(self, queue_name: str) -> list[DeadLetter]:
        """The messages ``queue_name`` dead-lettered, oldest first."""
        with self._lock:
            return list(self._queue(queue_name).dead_letters)

    # -- consuming --------------------------------------------------------------------
    def subscribe(self, queue_name: str) -> InMemorySubscription:
        """A new member of ``queue_name``'s group; undone messages come first."""
        with self._lock:
            queue = self._queue(queue_name)
            member = next(self._subscription_ids)
            redo = [p for p in sorted(queue.pending) if p not in queue.holders]
            for position in redo:
                queue.holders[position] = member
                message = queue.pending[position]
                queue.pending[position] = message._replace(attempt=message.attempt + 1)
            return InMemorySubscription(self, queue_name, member, redo)

    def _take(self, queue_name: str, member: int, limit: int) -> list[Message]:
        taken: list[Message] = []
        with self._lock:
            queue = self._queue(queue_name)
            for topic in self._topics_of(queue):
                for index, log in enumerate(self._topics[topic]):
                    start = queue.positions.get((topic, index), 0)
                    chunk = log[start : start + limit - len(taken)]
                    queue.positions[(topic, index)] = start + len(chunk)
                    for message in chunk:
                        position = (topic, index, message.offset)
                        queue.pending[position] = message
                        queue.holders[position] = member
                    taken.extend(chunk)
                    if len(taken) >= limit:
                        return taken
        return taken

    def _settle(
        self, queue_name: str, message: Message, done: bool, reason: DeadLetterReason | None
    ) -> None:
        position = (message.topic, message.partition, message.offset)
        with self._lock:
            queue = self._queue(queue_name)
            queue.holders.pop(position, None)
            if reason is not None:  # even if already acknowledged (early_ack)
                queue.dead_letters.append(DeadLetter(message, reason))
            if done:
                queue.pending.pop(position, None)
            dead_letter_topic = queue.dead_letter_topic
        if reason is not None:
            self.publish(
                dead_letter_topic,
                message.value,
                key=message.key,
                headers=reason.headers_for(message),
            )

    def _release(self, queue_name: str, member: int) -> None:
        with self._lock:
            queue = self._queue(queue_name)
            for position in [p for p, m in queue.holders.items() if m == member]:
                del queue.holders[position]

    def close(self) -> None:
        """Nothing to release; the data stays readable."""


class InMemorySubscription(Subscription):
    """One member of an in-memory consumer group."""

    def __init__(
        self,
        backend: InMemoryBackend,
        queue_name: str,
        member: int,
        redeliveries: Iterable[_Position],
    ) -> None:
        self._backend = backend
        self._queue_name = queue_name
        self._member = member
        self._redeliveries = list(redeliveries)
        self._closed = False

    def poll(self, max_messages: int, timeout: float) -> Sequence[Message] | None:
        """The next messages, undone ones first; ``None`` once the queue is drained."""
        if self._closed:
            return None
        batch: list[Message] = []
        if self._redeliveries:
            chosen, self._redeliveries = (
                self._redeliveries[:max_messages],
                self._redeliveries[max_messages:],
            )
            with self._backend._lock:
                pending = self._backend._queue(self._queue_name).pending
                batch = [pending[p] for p in chosen if p in pending]
        if len(batch) < max_messages:
            batch += self._backend._take(self._queue_name, self._member, max_messages - len(batch))
        return batch or None

    def acknowledge(self, message: Message) -> None:
        """Mark ``message`` done."""
        self._backend._settle(self._queue_name, message, done=True, reason=None)

    def redeliver(self, message: Message, delay: float = 0.0) -> None:
        """Leave ``message`` pending; the next subscription delivers it again."""
        self._backend._settle(self._queue_name, message, done=False, reason=None)

    def dead_letter(self, message: Message, reason: DeadLetterReason) -> None:
        """Record ``message`` as a dead letter and publish it to the dead-letter topic."""
        self._backend._settle(self._queue_name, message, done=True, reason=reason)

    def close(self) -> None:
        """Release undecided messages; they stay pending for the next subscription."""
        if not self._closed:
            self._closed = True
            self._backend._release(self._queue_name, self._member)


def link_synchronously(
    queue_name: str,
    consumers: Sequence[Consumer],
    serializer_registry: SerializerRegistry,
    backend: InMemoryBackend,
    cache: DeduplicationCache | None = None,
) -> MessageDispatcher:
    """Dispatch every message published to ``queue_name``'s topics as soon as it is published.

    For unit tests: after ``Publisher.publish`` returns, the consumers have run. A consumer
    that publishes to the same queue sees its message processed after it returns (no
    recursion). Returns the dispatcher, e.g. to inspect or stop it.
    """
    from service.dispatcher import MessageDispatcher

    dispatcher = MessageDispatcher(serializer_registry, cache=cache, backend=backend)
    for consumer in consumers:
        dispatcher.attach_consumer(consumer)
    running = threading.local()

    def drain(topic: str) -> None:
        if getattr(running, "active", False):
            return
        with backend._lock:
            bound = topic in backend._topics_of(backend._queue(queue_name))
        if not bound:
            return
        running.active = True
        try:
            dispatcher.consume_loop(queue_name)
        finally:
            running.active = False

    backend.on_publish(drain)
    return dispatcher
