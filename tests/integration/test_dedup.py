"""The compacted-topic deduplication store on the real broker (issue 5)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from service import Consumer, DeduplicationStoreError, MessageDispatcher, Publisher
from service.backends.kafka import KafkaBackend
from service.backends.kafka.dedup import CompactedTopicCache
from tests.integration.test_kafka_dispatch import (
    ledger_amounts,
    publish,
    run_until,
    start_worker,
    wait_for,
)
from tests.kafka_helpers import committed, kafka_backend, unique
from tests.payments import DoPayment, json_registry

pytestmark = pytest.mark.integration


class Named(Consumer):
    """Records amounts; fails while ``failing``; named so two can share a dispatcher."""

    def __init__(self, name: str, failing: bool = False) -> None:
        super().__init__()
        self._name = name
        self.failing = failing
        self.seen: list[int] = []

    @property
    def name(self) -> str:
        return f"tests.{self._name}"

    def process(self, message: Any, **kwargs: Any) -> None:
        if self.failing:
            raise RuntimeError(f"{self._name} fails")
        self.seen.append(message.amount)


@pytest.fixture
def backend(kafka_bootstrap: str) -> Iterator[KafkaBackend]:
    b = kafka_backend(kafka_bootstrap, partitions=3)
    yield b
    b.close()


def dispatcher(
    backend: KafkaBackend, queue: str, *consumers: Consumer, window: float = 3600.0
) -> MessageDispatcher:
    cache = CompactedTopicCache(backend, f"{queue}.dedup", window=window, partitions=3)
    d = MessageDispatcher(json_registry(), cache=cache, backend=backend)
    for c in consumers:
        d.attach_consumer(c)
    return d


def dedup_records(bootstrap: str, topic: str) -> int:
    consumer = RawConsumer({"bootstrap.servers": bootstrap, "group.id": unique("w")})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(3)
        )
    finally:
        consumer.close()


def test_same_message_id_twice_is_processed_once_and_both_are_committed(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    queue = unique("dd")
    backend.declare_queue(queue)
    a, b = Named("A"), Named("B")
    publisher = Publisher(json_registry(), backend)
    for _ in range(2):
        publisher.publish(queue, DoPayment("o", 1), key="k", message_id="same-id")
    backend.flush()
    d = dispatcher(backend, queue, a, b)
    run_until(d, queue, lambda: max(committed(kafka_bootstrap, queue, queue, 3)) == 2, 20)
    assert (a.seen, b.seen) == ([1], [1])
    assert max(committed(kafka_bootstrap, queue, queue, 3)) == 2
    assert dedup_records(kafka_bootstrap, f"{queue}.dedup") == 2  # one entry per consumer


def test_after_restart_only_the_consumer_that_failed_runs_again(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    queue = unique("dd")
    backend.declare_queue(queue)
    publish(backend, queue, range(1), key="k")
    a, b = Named("A"), Named("B", failing=True)
    first = dispatcher(backend, queue, a, b)
    run_until(first, queue, lambda: a.seen == [0], 20)
    assert a.seen == [0] and b.seen == []
    # a new process: fresh dispatcher, fresh cache (restored from the topic), B healthy now
    a2, b2 = Named("A"), Named("B")
    second = dispatcher(backend, queue, a2, b2)
    run_until(second, queue, lambda: b2.seen == [0], 20)
    assert (a2.seen, b2.seen) == ([], [0])


def test_sigkill_after_confirmed_entries_before_commit_repeats_nothing(
    backend: KafkaBackend, kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger, total = unique("dd"), tmp_path / "ledger", 300
    backend.declare_queue(queue)
    publish(backend, queue, range(total))
    worker = start_worker(
        kafka_bootstrap,
        queue,
        ledger,
        "--dedup",
        "--commit-every",
        "1000000",
        "--commit-interval",
        "3600",
    )
    wait_for(lambda: len(ledger_amounts(ledger)) == total, 30)
    wait_for(lambda: dedup_records(kafka_bootstrap, f"{queue}.dedup") == total, 10)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    assert max(committed(kafka_bootstrap, queue, queue, 3)) < 0  # nothing was committed
    worker = start_worker(kafka_bootstrap, queue, ledger, "--dedup")
    try:
        wait_for(lambda: sum(committed(kafka_bootstrap, queue, queue, 3)) == total, 30)
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
    assert sorted(ledger_amounts(ledger)) == list(range(total))  # each processed once


def test_a_moved_partition_is_restored_by_its_new_owner(
    backend: KafkaBackend, kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger, total = unique("dd"), tmp_path / "ledger", 300
    backend.declare_queue(queue)
    no_commit = ("--dedup", "--commit-every", "1000000", "--commit-interval", "3600")
    first = start_worker(kafka_bootstrap, queue, ledger, *no_commit)
    publish(backend, queue, range(total))
    wait_for(lambda: len(ledger_amounts(ledger)) == total, 30)
    wait_for(lambda: dedup_records(kafka_bootstrap, f"{queue}.dedup") == total, 10)
    second = start_worker(kafka_bootstrap, queue, ledger, "--dedup")  # joins the group
    time.sleep(1)
    first.send_signal(signal.SIGKILL)  # its partitions move to the second after the session
    first.wait(10)
    try:
        wait_for(lambda: sum(committed(kafka_bootstrap, queue, queue, 3)) == total, 40)
    finally:
        second.terminate()
        assert second.wait(30) == 0
    assert sorted(ledger_amounts(ledger)) == list(range(total))


def test_entries_older_than_the_window_no_longer_suppress(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    queue = unique("dd")
    backend.declare_queue(queue)
    publisher = Publisher(json_registry(), backend)
    a = Named("A")
    d = dispatcher(backend, queue, a, window=1.5)
    publisher.publish(queue, DoPayment("o", 1), key="k", message_id="again")
    backend.flush()
    run_until(d, queue, lambda: a.seen == [1], 20)
    time.sleep(1.6)
    publisher.publish(queue, DoPayment("o", 2), key="k", message_id="again")
    backend.flush()
    d2 = dispatcher(backend, queue, a, window=1.5)
    run_until(d2, queue, lambda: a.seen == [1, 2], 20)
    assert a.seen == [1, 2]


def test_bad_records_in_the_dedup_topic_are_skipped_with_a_warning(
    backend: KafkaBackend, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("dedup")
    writer = CompactedTopicCache(backend, topic, partitions=1)
    writer.store("tests.A.good", "tests.A.good", partition=0)
    writer.flush(10)
    producer = backend.new_producer({})
    producer.produce(topic, b"\x00" * 8, b"short-key", partition=0)
    producer.produce(topic, b"not-8-bytes!", b"k" * 16, partition=0)
    assert producer.flush(10) == 0
    reader = CompactedTopicCache(backend, topic, partitions=1)
    with caplog.at_level("WARNING", logger="service.dedup"):
        reader.on_assigned([("input", 0)])
    assert "tests.A.good" in reader and len(reader) == 1
    assert "bad key" in caplog.text and "bad value" in caplog.text


def test_a_missing_dedup_topic_is_a_clear_error(backend: KafkaBackend) -> None:
    topic = unique("dedup")
    cache = CompactedTopicCache(backend, topic, partitions=1)
    admin = AdminClient({"bootstrap.servers": backend.bootstrap_servers})
    for future in admin.delete_topics([topic]).values():
        future.result(10)
    time.sleep(1)
    with pytest.raises(DeduplicationStoreError, match=topic):
        cache.on_assigned([("input", 0)])
