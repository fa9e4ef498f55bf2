"""KafkaSubscription: one consumer-group member that commits only what is done.

Contract:

* auto-commit and auto offset store are off; per partition the committed offset is the
  lowest offset delivered and not yet done (:class:`PartitionTracker`), so completions may
  arrive out of order and a commit never passes an undone message;
* commits are asynchronous, every ``commit_every`` done messages or ``commit_interval``
  seconds, and synchronous when partitions are revoked and on :meth:`close`; listeners
  (the dedup store) can hold a commit back until their side data is durable, or veto it;
* :meth:`redeliver` pauses the message's partition and, after the delay, seeks back to the
  message and resumes it; the other partitions keep flowing. Messages of that partition
  already fetched behind it are dropped (they come again after the seek);
* on revocation the partitions' done work is committed and their undelivered remainder
  dropped; a lost assignment drops everything of those partitions without committing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from service.backends.base import DeadLetterReason, Subscription, SubscriptionListener
from service.backends.kafka.errors import translate
from service.backends.kafka.offsets import PartitionTracker
from service.errors import BrokerUnavailableError
from service.messages import Message

if TYPE_CHECKING:
    from service.backends.kafka.backend import KafkaBackend, QueueBinding

__all__ = ["KafkaSubscription"]

logger = logging.getLogger(__name__)

_Partition = tuple[str, int]
LAG_INTERVAL = 5.0  # seconds between lag measurements
_IGNORED_CODES = frozenset({KafkaError._PARTITION_EOF})


class KafkaSubscription(Subscription):
    """A confluent-kafka ``Consumer`` in the queue's group, settled message by message."""

    def __init__(
        self,
        backend: KafkaBackend,
        queue_name: str,
        binding: QueueBinding,
        config: dict[str, Any],
    ) -> None:
        from service.backends.kafka.backend import ConnectionWatch

        self._backend = backend
        self.queue_name = queue_name
        self.binding = binding
        self._watch = ConnectionWatch(f"queue {queue_name!r}")
        self._consumer = Consumer(
            {**config, "error_cb": self._watch.on_error, "on_commit": self._on_commit}
        )
        self._trackers: dict[_Partition, PartitionTracker] = {}
        self._retries: dict[_Partition, tuple[float, int]] = {}
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._listeners: list[SubscriptionListener] = []
        self._lag: dict[_Partition, int] = {}
        self._held: set[_Partition] = set()  # paused for back-pressure
        self._missing_reported: set[str] = set()  # topic errors already logged once
        self._lag_checked = 0.0
        self.assigned_once = False
        """Whether the group gave this member an assignment (possibly empty) yet."""
        self._deferred: tuple[list[TopicPartition], list[Callable[[], bool]]] | None = None
        self._done_since_commit = 0
        self._last_commit = time.monotonic()
        self._closed = False
        try:
            self._wait_for_brokers(backend.startup_timeout)
            self._consumer.subscribe(
                list(binding.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except BaseException:
            self._consumer.close()
            raise

    def _wait_for_brokers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._consumer.list_topics(timeout=min(1.0, timeout))
                return
            except KafkaException as exc:
                self._consumer.poll(0)  # serve error_cb: an authentication failure is final
                if self._watch.fatal is not None:
                    raise translate(
                        self._watch.fatal, f"joining queue {self.queue_name!r}"
                    ) from exc
                if time.monotonic() >= deadline:
                    raise BrokerUnavailableError(
                        f"queue {self.queue_name!r}: no broker of "
                        f"{self._backend.bootstrap_servers} answered within {timeout}s; "
                        "check bootstrap_servers and that Kafka is up"
                    ) from exc

    # -- rebalance callbacks (run inside consume()) --------------------------------------
    def add_listener(self, listener: SubscriptionListener) -> None:
        """Call ``listener`` on every assignment and revocation from now on."""
        self._listeners.append(listener)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned_once = True
        for tp in partitions:
            self._trackers[(tp.topic, tp.partition)] = PartitionTracker()
        logger.info("queue %r assigned %s", self.queue_name, _names(partitions))
        keys = [(tp.topic, tp.partition) for tp in partitions]
        for listener in self._listeners:
            listener.on_assigned(keys)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        for listener in self._listeners:
            listener.on_revoked(sorted(keys))
        self._commit(keys, asynchronous=False)
        self._forget(keys)
        logger.info("queue %r revoked %s", self.queue_name, _names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget({(tp.topic, tp.partition) for tp in partitions})
        logger.warning("queue %r lost %s without commit", self.queue_name, _names(partitions))

    def _forget(self, keys: set[_Partition]) -> None:
        for key in keys:
            self._trackers.pop(key, None)
            self._retries.pop(key, None)
            self._held.discard(key)
        self._attempts = {k: v for k, v in self._attempts.items() if k[:2] not in keys}

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is None:
            return
        logger.warning("queue %r: commit failed, will retry: %s", self.queue_name, error.str())
        for listener in self._listeners:
            listener.commit_failed()
        for tp in partitions:
            tracker = self._trackers.get((tp.topic, tp.partition))
            if tracker is not None:
                tracker.committed = None

    # -- polling ------------------------------------------------------------------------
    def poll(self, max_messages: int, timeout: float) -> Iterator[Message]:
        """Fetch up to ``max_messages``; never ``None`` (a Kafka queue does not end).

        Raises:
            AuthenticationError, AuthorizationError, BackendError: a fatal client error.
        """
        if self._watch.fatal is not None:
            raise translate(self._watch.fatal, f"consuming queue {self.queue_name!r}")
        if self._retries:
            self._resume_due()
        self._maybe_commit()
        if time.monotonic() - self._lag_checked >= LAG_INTERVAL:
            self._measure_lag()
        # consume() waits for a full batch until the timeout: take what is there at once,
        # else wait for the first message only, so a quiet topic adds no latency
        records = self._consumer.consume(max_messages, 0)
        if not records:
            first = self._consumer.poll(timeout)
            if first is not None:
                records = [first, *self._consumer.consume(max_messages - 1, 0)]
        return self._accept(records)

    def _accept(self, records: Sequence[KafkaMessage]) -> Iterator[Message]:
        delivered: list[Message] = []
        append = delivered.append
        trackers, retries, attempts = self._trackers, self._retries, self._attempts
        for record in records:
            error = record.error()
            if error is not None:
                self._on_record_error(error)
                continue
            # consumed records always carry topic, partition, offset and list headers
            topic: str = record.topic()  # type: ignore[assignment]
            partition: int = record.partition()  # type: ignore[assignment]
            key = (topic, partition)
            tracker = trackers.get(key)
            if tracker is None or key in retries:
                continue  # revoked, or paused for a retry: it comes again after the seek
            offset: int = record.offset()  # type: ignore[assignment]
            tracker.delivered(offset)
            timestamp = record.timestamp()[1]
            headers = record.headers()
            append(
                Message(
                    topic,
                    record.value(),
                    tuple(headers) if headers else (),  # type: ignore[arg-type]
                    record.key(),
                    partition,
                    offset,
                    timestamp if timestamp > 0 else None,
                    attempts.get((topic, partition, offset), 0) + 1 if attempts else 1,
                )
            )
        if delivered:
            self._watch.reachable()
        return self._still_wanted(delivered)

    def _still_wanted(self, delivered: list[Message]) -> Iterator[Message]:
        """Yield each message unless its partition was rewound meanwhile.

        (Revocation happens only inside ``consume()``, never while a batch is iterated.)
        """
        retries = self._retries
        for message in delivered:
            if retries and (message.topic, message.partition) in retries:
                continue
            yield message

    def _on_record_error(self, error: KafkaError) -> None:
        code = error.code()
        if code in _IGNORED_CODES:
            logger.debug("queue %r: %s", self.queue_name, error.str())
            return
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART:  # not created yet, or deleted meanwhile
            if error.str() not in self._missing_reported:
                self._missing_reported.add(error.str())
                logger.warning(
                    "queue %r: %s (topics %s); waiting for it to exist",
                    self.queue_name,
                    error.str(),
                    ", ".join(self.binding.topics),
                )
            return
        if error.fatal() or code in (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        ):
            raise translate(error, f"consuming queue {self.queue_name!r}")
        self._watch.on_error(error)

    def _resume_due(self) -> None:
        now = time.monotonic()
        due = [(key, offset) for key, (at, offset) in self._retries.items() if at <= now]
        for key, offset in due:
            del self._retries[key]
            tp = TopicPartition(key[0], key[1], offset)
            try:
                self._consumer.seek(tp)
            except KafkaException as exc:
                logger.warning("queue %r: seek %s failed: %s", self.queue_name, key, exc)
            if key not in self._held:
                self._consumer.resume([TopicPartition(key[0], key[1])])

    # -- back-pressure ----------------------------------------------------------------------
    def pause(self, partitions: list[_Partition]) -> None:
        """Stop fetching ``partitions`` until :meth:`resume` (retries keep their own pause)."""
        fresh = [p for p in partitions if p not in self._held]
        self._held.update(fresh)
        if fresh:
            self._consumer.pause([TopicPartition(t, p) for t, p in fresh])

    def resume(self, partitions: list[_Partition]) -> None:
        """Fetch ``partitions`` again, unless one waits for a retry."""
        back = [p for p in partitions if p in self._held]
        self._held.difference_update(back)
        ready = [TopicPartition(t, p) for t, p in back if (t, p) not in self._retries]
        if ready:
            self._consumer.resume(ready)

    # -- observing ------------------------------------------------------------------------
    @property
    def broker_reachable(self) -> bool:
        """False from a transport error until a message or a commit gets through again."""
        return not self._watch.is_down

    def lag(self) -> dict[_Partition, int]:
        """Messages behind the end, per assigned partition (refreshed every few seconds)."""
        return dict(self._lag)

    def _measure_lag(self) -> None:
        self._lag_checked = time.monotonic()
        if self._watch.is_down:  # idle and once unreachable: ask, so readiness comes back
            try:
                self._consumer.list_topics(timeout=0.5)
            except KafkaException:
                return
            self._watch.reachable()
        lag: dict[_Partition, int] = {}
        try:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in self._trackers])
            for tp in positions:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    lag[(tp.topic, tp.partition)] = max(high - max(tp.offset, 0), 0)
        except KafkaException as exc:
            logger.debug("queue %r: lag not measured: %s", self.queue_name, exc)
            return
        self._lag = lag

    # -- settling -------------------------------------------------------------------------
    def acknowledge(self, message: Message) -> None:
        """Mark ``message`` done; its offset is committed with the next batch."""
        tracker = self._trackers.get((message.topic, message.partition))
        if tracker is None:
            return  # revoked meanwhile: the new owner delivers it again
        tracker.done(message.offset)
        if message.attempt > 1:
            self._attempts.pop((message.topic, message.partition, message.offset), None)
        self._done_since_commit += 1
        if self._done_since_commit >= self._backend.commit_every:
            self._maybe_commit(force=True)

    def redeliver(self, message: Message, delay: float = 0.0) -> None:
        """Pause the partition; after ``delay`` seek back to ``message`` and resume."""
        key = (message.topic, message.partition)
        tracker = self._trackers.get(key)
        if tracker is None:
            return
        tracker.rewind(message.offset)
        self._attempts[(message.topic, message.partition, message.offset)] = message.attempt
        self._retries[key] = (time.monotonic() + delay, message.offset)
        self._consumer.pause([TopicPartition(message.topic, message.partition)])

    def dead_letter(self, message: Message, reason: DeadLetterReason) -> None:
        """Publish to the dead-letter topic, wait for the broker's confirmation, then ack."""
        self._backend.publish_confirmed(
            self.binding.dead_letter_topic,
            message.value,
            key=message.key,
            headers=reason.headers_for(message),
            timeout=self._backend.dead_letter_timeout,
        )
        self.acknowledge(message)

    # -- committing -------------------------------------------------------------------
    def _maybe_commit(self, force: bool = False) -> None:
        if self._deferred is not None:
            self._commit_deferred(*self._deferred)
            return
        now = time.monotonic()
        if force or (
            self._done_since_commit and now - self._last_commit >= self._backend.commit_interval
        ):
            self._commit(set(self._trackers), asynchronous=True)

    def _commit(self, keys: set[_Partition], asynchronous: bool) -> None:
        """Commit the positions of ``keys`` that moved, once the listeners allow it.

        A synchronous commit first runs every listener's blocking ``before_commit`` (the
        dedup store waits for its entries there). An asynchronous one takes each listener's
        ``commit_ticket`` and, when one is not yet satisfied, defers these positions until it
        is (checked on every poll); the offsets committed never pass work whose side data is
        not durable. A listener that raises prevents the commit; its error propagates.
        """
        offsets = self._moved(keys)
        self._done_since_commit = 0
        self._last_commit = time.monotonic()
        if not offsets:
            return
        if not asynchronous:
            self._deferred = None
            for listener in self._listeners:
                listener.before_commit()
        elif self._listeners:
            tickets = [listener.commit_ticket() for listener in self._listeners]
            if not all(ticket() for ticket in tickets):
                self._deferred = (offsets, tickets)
                return
        self._send(offsets, asynchronous)

    def _commit_deferred(
        self, offsets: list[TopicPartition], tickets: list[Callable[[], bool]]
    ) -> None:
        if all(ticket() for ticket in tickets):
            self._deferred = None
            live = [tp for tp in offsets if (tp.topic, tp.partition) in self._trackers]
            if live:
                self._send(live, asynchronous=True)

    def _moved(self, keys: set[_Partition]) -> list[TopicPartition]:
        offsets = []
        for key in keys:
            tracker = self._trackers.get(key)
            if tracker is not None:
                position = tracker.pending_commit()
                if position is not None:
                    offsets.append(TopicPartition(key[0], key[1], position))
        return offsets

    def _send(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        for tp in offsets:
            self._trackers[(tp.topic, tp.partition)].committed = tp.offset
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            for tp in offsets:
                tracker = self._trackers.get((tp.topic, tp.partition))
                if tracker is not None:
                    tracker.committed = None
            for listener in self._listeners:
                listener.commit_failed()
            logger.warning(
                "queue %r: commit failed (the messages will be delivered again): %s",
                self.queue_name,
                translate(exc, "commit"),
            )

    def close(self) -> None:
        """Tell listeners the partitions go, commit what is done, and leave the group."""
        if self._closed:
            return
        self._closed = True
        try:
            for listener in self._listeners:
                listener.on_revoked(sorted(self._trackers))
            self._commit(set(self._trackers), asynchronous=False)
        finally:
            self._consumer.close()


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
