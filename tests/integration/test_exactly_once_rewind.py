"""Exactly-once: a rewind whose committed offsets stay unreadable, on the real broker."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from service.backends.kafka.backend import ExactlyOnce
from service.backends.outputs import StagedRecord
from tests.kafka_helpers import committed, kafka_backend, read_topic, unique

pytestmark = pytest.mark.integration


class Unreadable:
    """A consumer whose ``committed()`` times out (after its timeout) while ``failing``."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def committed(self, partitions: Any, timeout: float = -1) -> Any:
        if self.failing:
            time.sleep(timeout)
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "Failed to get committed offsets")
            )
        return self._consumer.committed(partitions, timeout=timeout)


def test_readiness_stays_down_for_as_long_as_a_rewind_waits(kafka_bootstrap: str) -> None:
    """The committed offsets stay unreadable after an abort for longer than a lag interval
    (5 s): nothing is delivered, readiness says the broker is down for as long as the
    partitions wait to rewind (the idle lag probe must not mark it reachable), and each
    retry blocks a poll about a second, not the startup timeout."""
    queue = unique("eos-rewind-ready")
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap, startup_timeout=4.0)
    backend.declare_queue(queue, exactly_once=ExactlyOnce(f"{queue}.tx"))
    backend.create_topics({output: 1}, config={"max.message.bytes": "100000"})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(queue, str(i).encode())
    producer.flush(10)
    subscription = backend.subscribe(queue)
    proxy = Unreadable(subscription._consumer)
    subscription._consumer = proxy
    try:
        deadline = time.monotonic() + 30
        while not subscription._rewind_keys and time.monotonic() < deadline:
            for message in subscription.poll(20, 0.2):
                proxy.failing = True  # from the abort this batch causes on
                value = b"x" * 200_000 if message.offset == 0 else message.value
                subscription.acknowledge(message, [StagedRecord(output, value)])
        assert subscription._rewind_keys, "no rewind was postponed"
        seen: list[bool] = []
        blocked: list[float] = []
        waited = time.monotonic() + 7
        while time.monotonic() < waited:
            started = time.monotonic()
            assert not list(subscription.poll(20, 0.2))  # a dropped partition delivers nothing
            blocked.append(time.monotonic() - started)
            seen.append(subscription.broker_reachable)
        assert subscription._rewind_keys  # still waiting
        assert not any(seen), f"readiness said reachable on {seen.count(True)} of {len(seen)}"
        assert max(blocked) < 2.0, blocked  # a retry: 1 s of committed() and the poll's 0.2
        assert sum(b > 0.9 for b in blocked) >= 2, blocked  # and it was retried meanwhile
        proxy.failing = False
        deadline = time.monotonic() + 30
        while subscription._rewind_keys and time.monotonic() < deadline:
            list(subscription.poll(20, 0.2))
        assert not subscription._rewind_keys
        assert subscription.broker_reachable
    finally:
        subscription.close()
        backend.close()


def test_a_pending_partition_revoked_and_assigned_back_is_redone_once(
    kafka_bootstrap: str,
) -> None:
    """While a rewind waits (offsets unreadable), a second member joins and takes a pending
    partition, then leaves and gives it back; then the offsets become readable. Nothing of a
    dropped or pending partition is delivered or committed meanwhile; every output once
    (the refused one: never)."""
    queue, total = unique("eos-rewind-moved"), 200
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap, partitions=2, startup_timeout=2.0)
    backend.declare_queue(queue, exactly_once=ExactlyOnce(f"{queue}.tx"))
    backend.create_topics({output: 1}, config={"max.message.bytes": "100000"})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(total):
        producer.produce(queue, str(i).encode(), partition=i % 2)
    producer.flush(10)
    subscription = backend.subscribe(queue)
    proxy = Unreadable(subscription._consumer)
    subscription._consumer = proxy
    commit_offsets = subscription.commit_offsets

    def checked_commit(offsets: Any, wait: bool) -> bool:
        pending = subscription._rewind_keys or []
        assert all(key in subscription._checkpoint.partitions for key in offsets), offsets
        assert not any(key in pending for key in offsets), offsets
        return commit_offsets(offsets, wait)

    subscription.commit_offsets = checked_commit  # type: ignore[method-assign]
    joiner_assigned: list[int] = []
    aborted: list[bool] = []
    leave = threading.Event()

    def second_member() -> None:
        member = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": subscription.binding.group_id,
                "partition.assignment.strategy": "cooperative-sticky",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        member.subscribe(
            [queue], on_assign=lambda _, tps: joiner_assigned.extend(tp.partition for tp in tps)
        )
        while not leave.is_set():
            member.poll(0.1)  # records it fetches are not processed (nor committed)
        member.close()

    def drive(until: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "timed out"
            for message in subscription.poll(20, 0.1):
                key = (message.topic, message.partition)
                assert key in subscription._checkpoint.partitions, message
                assert key not in (subscription._rewind_keys or []), message
                value = message.value or b""
                if value == b"20":
                    if subscription.refusal(message) is not None:
                        subscription.acknowledge(message, [])  # (a dispatcher: dead letter)
                        continue
                    value = b"x" * 200_000  # refused: the transaction aborts and rewinds
                    if not aborted:
                        aborted.append(True)
                        proxy.failing = True  # ... into offsets that cannot be read
                subscription.acknowledge(message, [StagedRecord(output, value)])

    joiner = threading.Thread(target=second_member, daemon=True)
    try:
        drive(lambda: bool(subscription._rewind_keys), 60)
        joiner.start()
        drive(lambda: bool(joiner_assigned), 60)  # a pending partition moved to the joiner
        leave.set()
        joiner.join(30)
        drive(lambda: len(subscription._checkpoint.partitions) == 0, 5)  # still waiting
        proxy.failing = False
        drive(lambda: committed(kafka_bootstrap, queue, queue, 2) == [100, 100], 90)
        assert subscription.broker_reachable
    finally:
        leave.set()
        subscription.close()
    outputs = read_topic(kafka_bootstrap, output, total + 20, timeout=10)
    got = Counter(record.value for record in outputs)
    assert got == Counter(str(i).encode() for i in range(total) if i != 20)
    backend.close()
