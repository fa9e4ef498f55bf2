"""The dedup restore on the real broker: what it reads, in which order, and where it stops."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from service.backends.kafka import KafkaBackend
from service.backends.kafka.dedup import CompactedTopicCache, digest
from tests.kafka_helpers import kafka_backend, unique

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


@pytest.fixture
def backend(kafka_bootstrap: str) -> Iterator[KafkaBackend]:
    b = kafka_backend(kafka_bootstrap, partitions=2)
    yield b
    b.close()


def expiry(offset_ms: int) -> bytes:
    """The wire value of an entry expiring ``offset_ms`` from now."""
    return (int(time.time() * 1000) + offset_ms).to_bytes(8, "big")


def restored(backend: KafkaBackend, topic: str, partitions: list[int]) -> CompactedTopicCache:
    reader = CompactedTopicCache(backend, topic, partitions=2)
    started = time.monotonic()
    reader.on_assigned([("input", p) for p in partitions])
    assert time.monotonic() - started < 10, "the restore did not stop at the end"
    return reader


def test_records_are_applied_in_order_and_every_batch_is_read(backend: KafkaBackend) -> None:
    topic = unique("dedup")
    CompactedTopicCache(backend, topic, partitions=2)  # creates the topic
    producer = backend.new_producer({"linger.ms": 20})

    def send(value: bytes | None, name: str, partition: int) -> None:
        producer.produce(topic, value, digest(name), partition=partition)

    send(expiry(HOUR_MS), "removed", 0)
    send(None, "removed", 0)  # a tombstone after the entry: gone
    send(expiry(-HOUR_MS), "kept", 0)  # expired first, then live again: kept
    send(expiry(HOUR_MS), "kept", 0)
    send(expiry(HOUR_MS), "expired", 0)
    send(expiry(-1), "expired", 0)  # an expired entry after a live one: gone
    many = 5_123  # several consume() batches, the last one short
    for i in range(many):
        send(expiry(HOUR_MS), f"many.{i}", 1)
    assert producer.flush(30) == 0
    reader = restored(backend, topic, [0, 1])
    assert "kept" in reader and "removed" not in reader and "expired" not in reader
    assert len(reader) == 1 + many
    assert all(f"many.{i}" in reader for i in (0, many // 2, many - 1))


def test_only_the_assigned_partitions_are_read(backend: KafkaBackend) -> None:
    topic = unique("dedup")
    CompactedTopicCache(backend, topic, partitions=2)
    producer = backend.new_producer({})
    producer.produce(topic, expiry(HOUR_MS), digest("zero"), partition=0)
    producer.produce(topic, expiry(HOUR_MS), digest("one"), partition=1)
    assert producer.flush(10) == 0
    reader = restored(backend, topic, [1])
    assert "one" in reader and "zero" not in reader and len(reader) == 1


def test_a_restore_ends_at_transaction_markers_and_skips_aborted_entries(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    """The last offsets of a partition written in transactions are markers, never consumed
    as records: the restore still ends there."""
    topic = unique("dedup")
    CompactedTopicCache(backend, topic, partitions=2)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": unique("restore-tx")}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, expiry(HOUR_MS), digest("committed"), partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, expiry(HOUR_MS), digest("aborted"), partition=0)
    assert producer.flush(10) == 0  # on the broker before the abort (else it is purged)
    producer.abort_transaction(30)
    reader = restored(backend, topic, [0])
    assert "committed" in reader and "aborted" not in reader and len(reader) == 1


def test_a_restore_does_not_wait_for_an_open_transaction(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    """Entries of a transaction still open are not readable (read_committed) and may never
    be: the end taken at assignment is the last stable offset, so the restore does not wait
    for the transaction to end (up to ``transaction.timeout.ms``, here 30 s)."""
    topic = unique("dedup")
    CompactedTopicCache(backend, topic, partitions=2)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": unique("restore-tx"),
            "transaction.timeout.ms": 30_000,
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, expiry(HOUR_MS), digest("committed"), partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, expiry(HOUR_MS), digest("open"), partition=0)
    assert producer.flush(10) == 0  # on the broker, uncommitted
    try:
        reader = restored(backend, topic, [0])
        assert "committed" in reader and "open" not in reader and len(reader) == 1
    finally:
        producer.abort_transaction(30)
