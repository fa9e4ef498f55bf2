"""The MessagingBackend contract (service/backends/base.py), run on every backend."""

from __future__ import annotations

from service import DeadLetterReason
from tests.contract.conftest import Harness

HEADERS = (("serializer_id", b"1"), ("manifest", b"T"), ("message_id", b"id"))


def publish(harness: Harness, topic: str, count: int, key: bytes | None = b"k") -> None:
    for i in range(count):
        harness.backend.publish(topic, f"v{i}".encode(), key=key, headers=HEADERS)


def test_messages_arrive_in_order_with_their_record_fields(harness: Harness) -> None:
    queue, topic = harness.name("q"), harness.name("t")
    harness.backend.declare_topic(topic, partitions=1)
    harness.backend.declare_queue(queue, topic)
    publish(harness, topic, 3)
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 3)
        for m in got:
            sub.acknowledge(m)
    assert [m.value for m in got] == [b"v0", b"v1", b"v2"]
    assert [m.offset for m in got] == [0, 1, 2]
    assert {(m.topic, m.partition, m.key, m.attempt) for m in got} == {(topic, 0, b"k", 1)}
    assert all(m.headers[-3:] == HEADERS for m in got)


def test_acknowledged_messages_are_not_delivered_again(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 2)
    with harness.backend.subscribe(queue) as sub:
        for m in harness.poll_until(sub, 2):
            sub.acknowledge(m)
    publish(harness, queue, 1)
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 1)
        got += harness.poll_until(sub, 1, wait=harness.quiet)
    assert [m.offset for m in got] == [2]


def test_undone_messages_are_delivered_again_after_reopening(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 3)
    with harness.backend.subscribe(queue) as sub:
        first = harness.poll_until(sub, 3)
        sub.acknowledge(first[1])  # out of order: 0 and 2 stay undone
    with harness.backend.subscribe(queue) as sub:
        again = harness.poll_until(sub, 3)
        for m in again:
            sub.acknowledge(m)
    offsets = [m.offset for m in again]
    assert 0 in offsets and 2 in offsets  # 1 may come again too (Kafka commits below 0)
    assert offsets == sorted(offsets)


def test_redelivered_message_comes_again(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 1)
    with harness.backend.subscribe(queue) as sub:
        [m] = harness.poll_until(sub, 1)
        sub.redeliver(m, delay=0.0)
        again = harness.poll_until(sub, 1)
        if again:
            sub.acknowledge(again[0])
    if not again:  # a finite backend redelivers to the next member
        with harness.backend.subscribe(queue) as sub:
            again = harness.poll_until(sub, 1)
            sub.acknowledge(again[0])
    assert [(x.offset, x.value) for x in again] == [(0, b"v0")]
    assert again[0].attempt == 2


def test_dead_letter_publishes_with_reason_headers_and_counts_as_done(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_topic(f"{queue}.dlq")
    harness.backend.declare_queue(queue)
    publish(harness, queue, 1)
    reason = DeadLetterReason("DeserializationError", "bad bytes", 3, ("a.B", "c.D"))
    with harness.backend.subscribe(queue) as sub:
        [m] = harness.poll_until(sub, 1)
        sub.dead_letter(m, reason)
    [dead] = harness.read_topic(f"{queue}.dlq", 1)
    assert dead.value == b"v0" and dead.key == b"k"
    assert dead.header("message_id") == b"id"
    assert dead.header("dlq.original_topic") == queue.encode()
    assert dead.header("dlq.original_offset") == b"0"
    assert dead.header("dlq.error_class") == b"DeserializationError"
    assert dead.header("dlq.error_text") == b"bad bytes"
    assert dead.header("dlq.attempts") == b"3"
    assert dead.header("dlq.failing_consumers") == b"a.B,c.D"
    with harness.backend.subscribe(queue) as sub:
        assert harness.poll_until(sub, 1, wait=harness.quiet * 2) == []


def test_pattern_binding_reads_every_matching_topic(harness: Harness) -> None:
    queue, base = harness.name("q"), harness.name("orders")
    for suffix in ("eu", "us"):
        harness.backend.declare_topic(f"{base}-{suffix}")
        publish(harness, f"{base}-{suffix}", 1)
    harness.backend.declare_topic(f"other-{base}")
    publish(harness, f"other-{base}", 1)
    harness.backend.declare_queue(queue, f"^{base}-.*")
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 2)
        got += harness.poll_until(sub, 1, wait=harness.quiet)
        for m in got:
            sub.acknowledge(m)
    assert sorted(m.topic for m in got) == [f"{base}-eu", f"{base}-us"]


def test_keys_keep_partition_order_across_partitions(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue, partitions=3)
    harness.backend.declare_queue(queue)
    for i in range(30):
        harness.backend.publish(queue, str(i).encode(), key=f"key{i % 5}".encode(), headers=HEADERS)
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 30)
        for m in got:
            sub.acknowledge(m)
    by_key: dict[bytes | None, list[int]] = {}
    partitions: dict[bytes | None, set[int]] = {}
    for m in got:
        assert m.value is not None
        by_key.setdefault(m.key, []).append(int(m.value))
        partitions.setdefault(m.key, set()).add(m.partition)
    assert len(got) == 30
    assert all(v == sorted(v) for v in by_key.values())
    assert all(len(p) == 1 for p in partitions.values())


def test_declare_topic_never_alters_an_existing_topic(harness: Harness) -> None:
    topic = harness.name("t")
    harness.backend.declare_topic(topic, partitions=2)
    harness.backend.declare_topic(topic, partitions=5)
    for i in range(20):
        harness.backend.publish(topic, b"x", key=str(i).encode(), headers=HEADERS)
    records = harness.read_topic(topic, 20)
    assert {m.partition for m in records} <= {0, 1}
