"""InMemoryBackend: the backend contract inside one process, behaving like a small Kafka.

It is the users' test double, so it behaves as the Kafka backend does:

* topics have partitions and offsets; a record goes to the partition of its key (CRC32),
  or round robin without a key;
* a queue is a consumer group with a committed position per partition. Each
  :meth:`~InMemoryBackend.subscribe` adds a member, which fetches from its own positions,
  starting at the committed ones, and commits through the same
  :class:`~service.backends.checkpoint.Checkpoint` as Kafka (at its next poll once something
  is done, and on revocation and close): a commit never passes a message that is not done;
* the partitions are shared among the live members, balanced and sticky; joining or leaving
  moves partitions, and each member hears ``on_revoked`` / ``on_assigned`` inside its next
  poll (see :mod:`service.backends.memory_group`). Test hooks: :meth:`~InMemoryBackend.rebalance`
  (eager: every member revokes everything and gets a fresh share) and
  :meth:`~InMemoryBackend.lose` (``on_lost`` at the member's next poll, nothing committed);
* ``pause`` / ``resume`` are honoured and reset on every assignment;
* ``redeliver`` works like a Kafka seek once the delay has passed. Time is a
  :class:`VirtualClock` unless a real clock is passed: a poll that finds nothing else to
  fetch jumps it to the next redelivery due, so tests never sleep;
* ``dead_letter`` publishes to the queue's dead-letter topic (and keeps a
  :class:`DeadLetter` for :meth:`~InMemoryBackend.dead_letters`);
  :meth:`~InMemoryBackend.refuse_publishes` makes a topic refuse records, so tests can
  drive refusals.

It is finite: a poll returns ``None`` once nothing can be fetched now and no redelivery is
awaited, so a dispatcher's ``consume_loop`` returns when the queue is drained. A message
left undone when its member closes stays :meth:`~InMemoryBackend.pending` and is delivered
again by the next member that reads its partition.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from service.backends.base import (
    MessagingBackend,
    TopicPartition,
    check_topics,
    default_dead_letter_topic,
)
from service.backends.memory_group import ConsumerGroup, DeadLetter
from service.backends.memory_subscription import InMemorySubscription
from service.backends.outputs import StagedRecord, current_outputs
from service.errors import ConfigurationError, ProduceError
from service.messages import Headers, Message

__all__ = ["DeadLetter", "InMemoryBackend", "InMemorySubscription", "VirtualClock"]


class VirtualClock:
    """Monotonic seconds that move only when told to: test time without sleeping."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The current virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move ``seconds`` forward (a negative value does nothing)."""
        with self._lock:
            self._now += max(seconds, 0.0)

    def advance_to(self, when: float) -> None:
        """Move forward to ``when``, unless already past it."""
        with self._lock:
            self._now = max(self._now, when)


@dataclass
class _Refusal:
    remaining: int | None
    error: Callable[[], ProduceError]
    larger_than: int | None

    def refuses(self, value: bytes | None, headers: Headers) -> bool:
        if self.larger_than is None:
            return True
        size = len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)
        return size > self.larger_than


class InMemoryBackend(MessagingBackend):
    """Topics, queues and consumer groups held in memory. Thread-safe.

    Args:
        clock: monotonic seconds for redelivery delays; by default a :class:`VirtualClock`
            (see :attr:`clock`) that a poll jumps forward when it has nothing else to do.
            Pass ``time.monotonic`` to wait for delays in real time.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.cond = threading.Condition(threading.RLock())
        """Guards every topic and group; notified when records arrive or partitions move."""
        self._virtual = VirtualClock() if clock is None else None
        self.clock: Callable[[], float] = self._virtual or clock or time.monotonic
        """The clock of redelivery delays (e.g. for an ``InMemoryCache`` in step with it)."""
        self._topics: dict[str, list[list[Message]]] = {}
        self._groups: dict[str, ConsumerGroup] = {}
        self._refusals: dict[str, _Refusal] = {}
        self._round_robin = itertools.count()
        self._publish_hooks: list[Callable[[str], None]] = []

    # -- topics and queues ------------------------------------------------------------
    def declare_topic(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` partitions unless it exists."""
        if partitions < 1:
            raise ConfigurationError(f"topic {topic!r}: partitions must be >= 1")
        with self.cond:
            if topic not in self._topics:
                self._topics[topic] = [[] for _ in range(partitions)]
                self._regroup_all()

    def declare_queue(
        self,
        queue_name: str,
        *topics: str,
        dead_letter_topic: str | None = None,
        exactly_once: bool = False,
    ) -> None:
        """Bind ``queue_name`` to ``topics`` (default: its own name); keeps its offsets.

        ``exactly_once``: members commit handlers' outputs and dead letters with the
        offsets (see :mod:`service.backends.memory_subscription`).
        """
        check_topics(queue_name, topics)
        with self.cond:
            group = self._group(queue_name)
            group.topics = topics or (queue_name,)
            group.dead_letter_topic = dead_letter_topic or default_dead_letter_topic(queue_name)
            group.exactly_once = exactly_once
            self.regroup(group)

    def bind(self, queue_name: str, *topics: str) -> None:
        """Bind ``queue_name`` to ``topics``; the same as :meth:`declare_queue`."""
        self.declare_queue(queue_name, *topics)

    def topics_of(self, queue_name: str) -> list[str]:
        """The existing topics ``queue_name`` reads now (patterns resolved)."""
        with self.cond:
            return self._topic_names(self._group(queue_name))

    def _group(self, queue_name: str) -> ConsumerGroup:
        group = self._groups.get(queue_name)
        if group is None:
            group = ConsumerGroup((queue_name,), default_dead_letter_topic(queue_name))
            self._groups[queue_name] = group
        return group

    def _topic_names(self, group: ConsumerGroup) -> list[str]:
        names: list[str] = []
        for spec in group.topics:
            if spec.startswith("^"):
                names.extend(sorted(t for t in self._topics if re.fullmatch(spec, t)))
            elif spec in self._topics:
                names.append(spec)
        return names

    def regroup(self, group: ConsumerGroup, *, eager: bool = False) -> None:
        """Recompute the targets of ``group``'s members (see :meth:`ConsumerGroup.assign`)."""
        with self.cond:
            partitions = sorted(
                (topic, index)
                for topic in dict.fromkeys(self._topic_names(group))
                for index in range(len(self._topics[topic]))
            )
            group.assign(partitions, eager=eager)
            self.cond.notify_all()

    def _regroup_all(self) -> None:
        for group in self._groups.values():
            if group.members:
                self.regroup(group)

    # -- publishing -------------------------------------------------------------------
    def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> None:
        """Append a record to ``topic`` (created with one partition if missing).

        Published by a handler of an exactly-once queue, the record is staged instead and
        appended by the commit of its message's offset.

        Raises:
            ProduceError: the topic refuses records (:meth:`refuse_publishes`).
        """
        outputs = current_outputs()
        if outputs is not None and outputs.staged is not None:
            outputs.stage(StagedRecord(topic, value, key, tuple(headers)))
            return
        with self.cond:
            refusal = self._refusals.get(topic)
            if refusal is not None and refusal.refuses(value, headers):
                if refusal.remaining is not None:
                    refusal.remaining -= 1
                    if refusal.remaining <= 0:
                        del self._refusals[topic]
                raise refusal.error()
            self.append(StagedRecord(topic, value, key, tuple(headers)))
        self.published([topic])

    def append(self, record: StagedRecord) -> None:
        """Append ``record`` as it is, never refused (caller holds the lock)."""
        topic, key = record.topic, record.key
        partitions = self._topics.get(topic)
        if partitions is None:
            partitions = self._topics[topic] = [[]]
            self._regroup_all()
        if record.partition is not None:
            index = record.partition % len(partitions)
        elif key is None:
            index = next(self._round_robin) % len(partitions)
        else:
            index = zlib.crc32(key) % len(partitions)
        log = partitions[index]
        log.append(
            Message(
                topic,
                record.value,
                record.headers,
                key,
                index,
                len(log),
                int(time.time() * 1000),
            )
        )
        self.cond.notify_all()

    def published(self, topics: list[str]) -> None:
        """Run the publish hooks for ``topics`` (lock not held)."""
        for topic in topics:
            for hook in list(self._publish_hooks):
                hook(topic)

    def publish_raw(
        self, topic: str, payload: bytes | None, headers: Headers = (), key: bytes | None = None
    ) -> None:
        """Publish bytes as they are, e.g. a malformed record in a test."""
        self.publish(topic, payload, key=key, headers=headers)

    def on_publish(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(topic)`` after every publish (``service.testing.link_synchronously``)."""
        self._publish_hooks.append(hook)

    def read(self, tp: TopicPartition, start: int, limit: int) -> list[Message]:
        """Up to ``limit`` records of partition ``tp`` from offset ``start``."""
        with self.cond:
            return self._topics[tp[0]][tp[1]][start : start + max(limit, 0)]

    def records(self, topic: str) -> list[Message]:
        """Every record of ``topic``, partition by partition."""
        with self.cond:
            return [m for log in self._topics.get(topic, []) for m in log]

    # -- test hooks -----------------------------------------------------------------------
    def refuse_publishes(
        self,
        topic: str,
        times: int | None = None,
        error: Callable[[], ProduceError] | None = None,
        *,
        larger_than: int | None = None,
    ) -> None:
        """Make ``topic`` refuse the next ``times`` records (all, if None) with ``error()``.

        Args:
            topic: the topic, e.g. a queue's dead-letter topic.
            times: how many records to refuse; then the topic accepts again.
            error: builds the :class:`~service.errors.ProduceError` to raise. By default a
                refusal that may pass (``permanent=False``), or, with ``larger_than``, a
                permanent one (the record is too large).
            larger_than: refuse only records whose value and headers exceed these many
                bytes, like Kafka's ``max.message.bytes``.

        :meth:`accept_publishes` ends the refusal.
        """
        if times is not None and times < 1:
            raise ConfigurationError(f"refuse_publishes: times must be >= 1, got {times}")

        def refused() -> ProduceError:
            if larger_than is None:
                return ProduceError(f"topic {topic!r} refused the record (refuse_publishes)")
            return ProduceError(
                f"topic {topic!r}: MSG_SIZE_TOO_LARGE: the record is larger than "
                f"{larger_than} bytes (refuse_publishes)",
                permanent=True,
            )

        with self.cond:
            self._refusals[topic] = _Refusal(times, error or refused, larger_than)

    def accept_publishes(self, topic: str) -> None:
        """Stop refusing records of ``topic``."""
        with self.cond:
            self._refusals.pop(topic, None)

    def rebalance(self, queue_name: str) -> None:
        """An eager rebalance: every member revokes all it holds and gets a fresh share.

        Each member hears it at its next poll (``on_revoked``, then ``on_assigned``).
        """
        with self.cond:
            self.regroup(self._group(queue_name), eager=True)

    def lose(self, queue_name: str, lost: InMemorySubscription | Iterable[TopicPartition]) -> None:
        """Take partitions away from their members without a revocation, as Kafka does.

        ``lost`` is a member (it leaves the group: its partitions go to the others, and it
        rejoins at its next poll) or partitions (their owners get them back after the loss
        unless a rebalance moves them). Each owner hears ``on_lost`` at its next poll and
        commits nothing of them; until then its commits of them are refused.
        """
        with self.cond:
            group = self._group(queue_name)
            if isinstance(lost, InMemorySubscription):
                partitions = set(lost.owned)
                if lost in group.members:
                    group.members.remove(lost)
                    lost.expelled = True
                    lost.target = set()
            else:
                partitions = set(lost)
            for tp in partitions:
                owner = group.owners.pop(tp, None)
                if owner is not None:
                    owner.lost.add(tp)
            self.regroup(group)

    # -- inspection -------------------------------------------------------------------
    def pending(self, queue_name: str) -> list[Message]:
        """Messages delivered to ``queue_name`` and not done, in position order.

        Each as last delivered (its ``attempt``); they are delivered again until done.
        """
        with self.cond:
            pending = self._group(queue_name).pending
            return [pending[p] for p in sorted(pending)]

    def dead_letters(self, queue_name: str) -> list[DeadLetter]:
        """The messages ``queue_name`` dead-lettered, oldest first."""
        with self.cond:
            return list(self._group(queue_name).dead_letters)

    def committed(self, queue_name: str) -> dict[TopicPartition, int]:
        """The committed position (next offset to read) of every partition that has one."""
        with self.cond:
            return dict(self._group(queue_name).committed)

    def members(self, queue_name: str) -> list[InMemorySubscription]:
        """The live members of ``queue_name``'s group, in join order."""
        with self.cond:
            return list(self._group(queue_name).members)

    # -- consuming --------------------------------------------------------------------
    def subscribe(self, queue_name: str) -> InMemorySubscription:
        """Join ``queue_name``'s group; the new member takes its share at its first poll."""
        with self.cond:
            group = self._group(queue_name)
            member = InMemorySubscription(
                self,
                group,
                clock=self.clock,
                jump=None if self._virtual is None else self._virtual.advance_to,
            )
            group.members.append(member)
            self.regroup(group)
            return member

    def close(self) -> None:
        """Nothing to release; the data stays readable."""
