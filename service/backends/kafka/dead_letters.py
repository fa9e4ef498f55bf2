"""Reading a dead-letter topic and re-publishing from it, with bounded memory.

:class:`DeadLetterReader` reads a topic from the beginning (or from a time) up to its end
as it was when the reader opened, with a throwaway consumer on ``assign()``: no group is
joined and no offset is committed, so the queue's consumers are never disturbed. The range
is fixed at open time from the partitions' watermarks, so :attr:`DeadLetterReader.span`
sizes a progress bar and every pass over :meth:`DeadLetterReader.records` sees the same
records. Records stream: at most one fetch batch is held, never the whole topic.

:class:`Republisher` publishes records with at most ``max_in_flight`` unconfirmed at a
time (``acks=all``, idempotent), reporting each outcome to a callback as the broker
answers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage

from service.backends.base import DLQ_HEADER_PREFIX
from service.backends.kafka.connection import ConnectionWatch, librdkafka_logger
from service.backends.kafka.errors import translate
from service.errors import BrokerUnavailableError, ProduceError
from service.messages import Message

__all__ = ["DeadLetterReader", "ProducerLike", "Republisher"]

logger = logging.getLogger(__name__)

FETCH_BATCH = 100  # records taken from the client per consume() call: what Python holds
PREFETCH_KBYTES = 8192  # librdkafka's read-ahead per client (its default is 64 MiB)
MAX_IN_FLIGHT = 1000  # records published and not yet confirmed


class DeadLetterReader:
    """The records of ``topic`` up to its end as of :meth:`open`, per partition in order.

    Args:
        client_config: librdkafka connection settings (``bootstrap.servers``, SASL, SSL).
        topic: the topic to read.
        since_ms: only records with a timestamp at or after this (epoch milliseconds);
            reading starts at each partition's first record of that time.
        timeout: seconds to wait for the brokers' answers.
        consumer_config: extra librdkafka consumer settings (the queue's).

    Use as a context manager; :meth:`records` may be iterated more than once.
    """

    def __init__(
        self,
        client_config: Mapping[str, Any],
        topic: str,
        since_ms: int | None,
        timeout: float,
        consumer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self._since_ms = since_ms
        self._timeout = timeout
        self._servers = str(client_config.get("bootstrap.servers", "?"))
        self._watch = ConnectionWatch(f"reading {topic!r}")
        self._config: dict[str, Any] = {
            **client_config,
            # dead letters of exactly-once queues count once their transaction commits
            "isolation.level": "read_committed",
            **(consumer_config or {}),
            "group.id": f"dlq-reader-{uuid.uuid4().hex}",  # required; never joined
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": PREFETCH_KBYTES,
            "error_cb": self._watch.on_error,
            "logger": librdkafka_logger(),
        }
        self._consumer: Consumer | None = None
        self._starts: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self.exists = False
        """Whether the topic existed at :meth:`open`."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def span(self) -> int:
        """How many records lie in the range (before ``since_ms`` filters by timestamp)."""
        return sum(self._ends[p] - self._starts[p] for p in self._ends)

    def open(self) -> None:
        """Fix the range from the watermarks (and ``since_ms``).

        Raises:
            BrokerUnavailableError: the brokers did not answer within ``timeout``.
            BackendError: the brokers refused.
        """
        self._consumer = Consumer(self._config)
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=self._timeout)
            found = metadata.topics.get(self.topic)
            if found is None or found.error is not None:
                return
            self.exists = True
            for partition in sorted(found.partitions):
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=self._timeout
                )
                self._starts[partition], self._ends[partition] = low, high
            if self._since_ms is not None and self._ends:
                wanted = [TopicPartition(self.topic, p, self._since_ms) for p in self._ends]
                for tp in self._consumer.offsets_for_times(wanted, timeout=self._timeout):
                    end = self._ends[tp.partition]
                    self._starts[tp.partition] = end if tp.offset < 0 else tp.offset
            self._ends = {p: end for p, end in self._ends.items() if self._starts[p] < end}
        except KafkaException as exc:
            raise translate(exc, f"reading {self.topic!r}") from exc

    def records(self) -> Iterator[Message]:
        """Each record of the range, streamed (one fetch batch at a time).

        Raises:
            BrokerUnavailableError: the brokers stopped answering for ``timeout`` seconds.
            BackendError: the brokers refused.
        """
        consumer = self._consumer
        if consumer is None or not self._ends:
            return
        left = dict(self._ends)
        try:
            consumer.assign([TopicPartition(self.topic, p, self._starts[p]) for p in left])
            deadline = time.monotonic() + self._timeout
            while left:
                batch = consumer.consume(FETCH_BATCH, 0.5)
                if batch:
                    deadline = time.monotonic() + self._timeout
                    self._watch.reachable()
                elif time.monotonic() > deadline:
                    raise BrokerUnavailableError(
                        f"reading {self.topic!r}: no answer from {self._servers} "
                        f"within {self._timeout}s"
                    )
                for record in batch:
                    message = self._take(record, left)
                    if message is not None:
                        yield message
                del batch  # before the next fetch: never two batches at once
        except KafkaException as exc:
            raise translate(exc, f"reading {self.topic!r}") from exc
        finally:
            if self._consumer is consumer:  # not closed meanwhile
                consumer.unassign()

    def _take(self, record: KafkaMessage, left: dict[int, int]) -> Message | None:
        """``record`` as a message if it is in range, updating what is ``left`` to read."""
        partition, offset = record.partition() or 0, record.offset() or 0
        error = record.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                raise translate(error, f"reading {self.topic!r}")
            left.pop(partition, None)
            return None
        if partition not in left or offset >= left[partition]:
            return None  # written after the range was fixed
        if offset + 1 >= left[partition]:
            left.pop(partition)
        kind, stamp = record.timestamp()
        message = Message(
            record.topic() or self.topic,
            record.value(),
            tuple(record.headers() or ()),  # type: ignore[arg-type]
            record.key(),
            partition,
            offset,
            stamp if kind else None,  # kind 0: TIMESTAMP_NOT_AVAILABLE
        )
        if self._since_ms is not None and (message.timestamp_ms or 0) < self._since_ms:
            return None
        return message

    def close(self) -> None:
        """Close the consumer (nothing was committed)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class ProducerLike(Protocol):
    """The part of confluent-kafka's ``Producer`` the republisher uses (tests fake it)."""

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Any = None,
        on_delivery: Any = None,
    ) -> None:
        """Queue one record; raises ``BufferError`` when the local queue is full."""

    def poll(self, timeout: float = -1) -> int:
        """Serve delivery reports."""

    def flush(self, timeout: float = -1) -> int:
        """Wait for every delivery report; returns how many records are still queued."""


Outcome = Callable[[str | None], None]
"""Told ``None`` once the broker confirmed a record, else why it was not written."""


class Republisher:
    """Publishes records idempotently (``acks=all``), at most ``max_in_flight`` unconfirmed.

    Each record's outcome goes to the callback given with it, from :meth:`send` or
    :meth:`finish` (delivery reports are served there). The ``dlq.*`` headers of a dead
    letter are dropped; key, value and the other headers are kept in order.

    Args:
        client_config: librdkafka connection settings.
        producer_config: extra producer settings (the service's ``kafka.producer``).
        timeout: seconds :meth:`finish` waits for the last confirmations.
        max_in_flight: records sent and not yet confirmed, at most.
        producer: a producer to use instead of creating one (tests).

    Raises:
        ProduceError: the producer cannot be created.
    """

    def __init__(
        self,
        client_config: Mapping[str, Any],
        producer_config: Mapping[str, Any],
        timeout: float,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        producer: ProducerLike | None = None,
    ) -> None:
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._pending: dict[int, Outcome] = {}
        self._sent = 0
        self.peak_in_flight = 0
        """The most records that were unconfirmed at once."""
        if producer is None:
            self._watch = ConnectionWatch("replay producer")
            config: dict[str, Any] = {
                **client_config,
                **producer_config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "error_cb": self._watch.on_error,
                "logger": librdkafka_logger(),
            }
            try:
                producer = Producer(config)
            except KafkaException as exc:
                raise ProduceError(str(translate(exc, "replaying"))) from exc
        self._producer: ProducerLike = producer

    def send(self, topic: str, message: Message, outcome: Outcome) -> None:
        """Queue ``message`` for ``topic``; waits while ``max_in_flight`` are unconfirmed.

        Raises:
            ProduceError: the producer failed fatally.
        """
        while len(self._pending) >= self._max_in_flight:
            self._producer.poll(0.05)
        number = self._sent
        self._sent += 1
        self._pending[number] = outcome
        self.peak_in_flight = max(self.peak_in_flight, len(self._pending))
        headers = [(k, v) for k, v in message.headers if not k.startswith(DLQ_HEADER_PREFIX)]
        while True:
            try:
                self._producer.produce(
                    topic,
                    message.value,
                    message.key,
                    headers=headers,
                    on_delivery=self._delivered(number),
                )
                break
            except BufferError:
                self._producer.poll(0.05)  # the local queue is full: let deliveries drain it
            except KafkaException as exc:
                del self._pending[number]
                raise ProduceError(str(translate(exc, "replaying"))) from exc
        self._producer.poll(0)

    def _delivered(self, number: int) -> Callable[[KafkaError | None, Any], None]:
        def delivered(error: KafkaError | None, _record: Any) -> None:
            outcome = self._pending.pop(number, None)
            if outcome is not None:
                outcome(None if error is None else f"{error.name()}: {error.str()}")

        return delivered

    def finish(self) -> None:
        """Wait up to ``timeout`` for the last confirmations; the rest are reported unsure."""
        self._producer.flush(self._timeout)
        unsure = f"not confirmed within {self._timeout}s (it may or may not have been written)"
        pending, self._pending = self._pending, {}
        for outcome in pending.values():
            outcome(unsure)
