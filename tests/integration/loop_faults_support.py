"""Helpers for the consume-loop fault tests (issue 12) on the real broker.

Everything here reads or writes the broker directly (raw confluent-kafka clients), so the
tests assert broker-side state (committed offsets, dead-letter records) and never the
service's internals. Every wait has a deadline: a fault that hangs the service makes a test
fail, never hang.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import Producer as RawProducer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from service import Consumer, MessageDispatcher
from tests.kafka_helpers import unique

LEDGER_CONSUMER_NAME = "tests.integration.loop_faults.IdLedger"
"""One consumer name in every process, so their dedup keys are the same."""


def payment(amount: int, message_id: str, order_id: str | None = None) -> tuple[bytes, list[Any]]:
    """The value and routing headers ``service.Publisher`` writes for ``DoPayment``."""
    value = json.dumps({"order_id": order_id or f"o{amount}", "amount": amount}).encode()
    headers = [
        ("serializer_id", b"1"),
        ("manifest", b"DoPayment"),
        ("message_id", message_id.encode()),
    ]
    return value, headers


@dataclass(frozen=True)
class Record:
    """One record to produce to an exact partition."""

    partition: int
    message_id: str
    amount: int = 0
    key: bytes | None = None
    value: bytes | None = None  # overrides the DoPayment payload
    order_id: str | None = None


def produce(bootstrap: str, topic: str, records: Iterable[Record], **config: Any) -> None:
    """Produce ``records`` in order, each to its partition, and wait for the broker."""
    producer = RawProducer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config})
    failures: list[str] = []

    def report(error: Any, record: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for record in records:
        value, headers = payment(record.amount, record.message_id, record.order_id)
        producer.produce(
            topic,
            record.value if record.value is not None else value,
            record.key if record.key is not None else record.message_id.encode(),
            partition=record.partition,
            headers=headers,
            on_delivery=report,
        )
        producer.poll(0)
    assert producer.flush(30) == 0, f"test records to {topic} not confirmed"
    assert not failures, f"test records to {topic} refused: {failures}"


def create_topic(
    bootstrap: str, topic: str, partitions: int, config: Mapping[str, str] | None = None
) -> None:
    """Create ``topic`` with ``partitions`` and topic ``config``; it must not exist yet."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, partitions, 1, config=dict(config or {}))])
    for future in futures.values():
        future.result(30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # metadata reaches every client shortly after
        meta = admin.list_topics(topic, timeout=5).topics.get(topic)
        if meta is not None and meta.error is None and len(meta.partitions) == partitions:
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {topic} not visible after creation")


def delete_topic(bootstrap: str, topic: str) -> None:
    """Delete ``topic`` and wait until the broker no longer lists it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics([topic]).values():
        future.result(30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if topic not in admin.list_topics(timeout=5).topics:
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {topic} still listed after deletion")


class Offsets:
    """Reads a group's committed offsets and a topic's end offsets, from outside the group."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self._consumer = RawConsumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )

    def committed(self) -> list[int]:
        """Committed offset per partition; -1001 when the group committed none."""
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        return [tp.offset for tp in self._consumer.committed(tps, timeout=10)]

    def ends(self) -> list[int]:
        """The high watermark of each partition."""
        return [
            self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
            for p in range(self.partitions)
        ]

    def close(self) -> None:
        """Release the client."""
        self._consumer.close()


@dataclass
class Letter:
    """One record of a dead-letter topic."""

    partition: int
    offset: int
    value: bytes | None
    headers: dict[str, bytes]

    def header(self, name: str) -> str | None:
        """Header ``name`` decoded, or ``None``."""
        value = self.headers.get(name)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def original(self) -> tuple[str | None, str | None, str | None]:
        """``(topic, partition, offset)`` of the message it is a dead letter of."""
        return (
            self.header("dlq.original_topic"),
            self.header("dlq.original_partition"),
            self.header("dlq.original_offset"),
        )


def read_all(bootstrap: str, topic: str, timeout: float = 15.0) -> list[Letter]:
    """Every record of ``topic``, each partition read up to its current end."""
    consumer = RawConsumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        got: list[Letter] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for record in consumer.consume(500, 0.5):
                if record.error() is not None:
                    continue
                partition, offset = record.partition() or 0, record.offset() or 0
                raw = record.headers() or ()
                pairs = raw.items() if isinstance(raw, dict) else raw
                headers = {
                    name: value.encode() if isinstance(value, str) else value or b""
                    for name, value in pairs
                }
                got.append(Letter(partition, offset, record.value(), headers))
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
        assert not ends, f"{topic}: could not read to the end of partitions {sorted(ends)}"
        return got
    finally:
        consumer.close()


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


@dataclass
class Loop:
    """``dispatcher.consume_loop(queue)`` on a daemon thread, its errors kept.

    A daemon thread, so a loop that never returns cannot keep pytest from ending.
    """

    dispatcher: MessageDispatcher
    queue: str
    error: BaseException | None = None
    reported: list[Exception] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> Loop:
        """Start consuming."""
        self.thread = threading.Thread(target=self._run, name=f"loop-{self.queue}", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.dispatcher.consume_loop(self.queue, on_exception=self.reported.append)
        except BaseException as exc:  # the test inspects it
            self.error = exc

    @property
    def ended(self) -> bool:
        """Whether consume_loop returned or raised."""
        return self.thread is not None and not self.thread.is_alive()

    def stop(self, timeout: float = 30.0) -> bool:
        """Ask the loop to stop; True when it ended within ``timeout``."""
        self.dispatcher.stop()
        assert self.thread is not None
        self.thread.join(timeout)
        return not self.thread.is_alive()


class IdLedger(Consumer):
    """Records the message id of every message it processed, in order (thread-safe).

    Its name is the same in every process (see :data:`LEDGER_CONSUMER_NAME`), so members of
    one group share dedup keys. ``hook(message, message_id)`` runs first; raising from it
    fails the message.
    """

    def __init__(
        self,
        member: str = "",
        path: str | None = None,
        hook: Callable[[Any, str], None] | None = None,
    ) -> None:
        super().__init__()
        self.member = member
        self.ids: list[str] = []
        self._hook = hook
        self._lock = threading.Lock()
        self._file = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    @property
    def name(self) -> str:
        """The same in every process."""
        return LEDGER_CONSUMER_NAME

    def process(self, message: Any, **kwargs: Any) -> None:
        """Run the hook, then record ``message_id``."""
        message_id = str(kwargs.get("message_id"))
        if self._hook is not None:
            self._hook(message, message_id)
        with self._lock:
            self.ids.append(message_id)
            if self._file is not None:
                self._file.write(f"{self.member} {message_id}\n")


def ledger_ids(path: Any) -> list[str]:
    """The message ids written to a ledger file by :class:`IdLedger`, in order."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split()[1] for line in text.splitlines() if line.count(" ") == 1]
