"""The consume loop's promises under the faults reproduced in issue 12, on the real broker.

Each test drives one reproduced fault and asserts the promise, read from the broker:

* no committed offset passes a message that was neither processed nor dead-lettered;
* every message ends processed or dead-lettered;
* no partition stays paused;
* a dead letter that can never be written does not stop its partition for ever: it gets a
  fallback dead letter without the payload (the original's topic/partition/offset and the
  reason in headers), or the loop stops loudly (``consume_loop`` raises).

The dedup faults (4, 5 and the two smaller ones) are in ``test_loop_faults_dedup.py``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer as RawConsumer

from service import MessageDispatcher, RetryPolicy, ServiceError
from service.backends.kafka import KafkaBackend
from tests.integration.loop_faults_support import (
    IdLedger,
    Loop,
    Offsets,
    Record,
    create_topic,
    delete_topic,
    produce,
    read_all,
    wait_until,
)
from tests.kafka_helpers import FAST_GROUP, kafka_backend, unique
from tests.payments import json_registry

pytestmark = pytest.mark.integration


@pytest.fixture
def backends() -> Iterator[list[KafkaBackend]]:
    """Backends a test makes; closed (errors ignored: the faults leave refused records)."""
    made: list[KafkaBackend] = []
    yield made
    for backend in made:
        with contextlib.suppress(ServiceError):  # a refused record is what these tests cause
            backend.close()


# -- fault 1 -------------------------------------------------------------------------------
class FollowUps(IdLedger):
    """Publishes two follow-up events per message through the backend; fails on poison.

    Every error raised by its own ``publish`` calls is kept: a follow-up must be judged by
    its own delivery, never fail with another record's error.
    """

    def __init__(self, backend: KafkaBackend, topic: str) -> None:
        super().__init__(hook=self._follow_up)
        self._backend = backend
        self._topic = topic
        self.publish_errors: list[str] = []

    def _follow_up(self, message: Any, message_id: str) -> None:
        if message.order_id == "poison":
            raise RuntimeError(f"poison {message_id}")
        time.sleep(0.01)
        for n in range(2):
            try:
                self._backend.publish(self._topic, b"{}", key=f"{message_id}-{n}".encode())
            except Exception as exc:
                self.publish_errors.append(f"{message_id}: {type(exc).__name__}: {exc}")
                raise


def test_a_refused_dead_letter_is_never_acknowledged(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Fault 1: one failure list shared by every publishing thread.

    8 partitions, a poison message at offset 0 of each, a dead-letter topic that refuses
    every record (max.message.bytes=100), concurrency 8, a consumer that publishes two
    follow-up events per message.
    """
    queue, partitions, per_partition = unique("f1"), 8, 40
    create_topic(kafka_bootstrap, queue, partitions)
    create_topic(kafka_bootstrap, f"{queue}.dlq", 1, {"max.message.bytes": "100"})
    create_topic(kafka_bootstrap, f"{queue}.out", partitions)
    produce(
        kafka_bootstrap,
        queue,
        [Record(p, f"poison-{p}", order_id="poison") for p in range(partitions)]
        + [
            Record(p, f"m{p}-{i}", amount=i)
            for i in range(1, per_partition)
            for p in range(partitions)
        ],
    )
    backend = kafka_backend(kafka_bootstrap, partitions=partitions, dead_letter_timeout=5.0)
    backends.append(backend)
    backend.declare_queue(queue)
    consumer = FollowUps(backend, f"{queue}.out")
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=2, backoff_base=0.1, backoff_max=0.5),
        concurrency=8,
        ordering="key",
    )
    dispatcher.attach_consumer(consumer)
    offsets = Offsets(kafka_bootstrap, queue, queue, partitions)
    loop = Loop(dispatcher, queue).start()
    try:
        good = (per_partition - 1) * partitions
        wait_until(lambda: loop.ended or len(set(consumer.ids)) >= good, 15)
        time.sleep(3)  # commit intervals pass; the poison keeps being tried
    finally:
        stopped = loop.stop(20)
        committed = offsets.committed()
        offsets.close()
    letters = read_all(kafka_bootstrap, f"{queue}.dlq")
    dead = {
        (letter.header("dlq.original_partition"), letter.header("dlq.original_offset"))
        for letter in letters
    }
    passed = {p: c for p, c in enumerate(committed) if c > 0 and (str(p), "0") not in dead}
    assert not passed, (
        f"committed offsets {passed} (partition: offset) pass the poison message at offset "
        f"0, which was neither processed nor dead-lettered (the DLQ holds {len(letters)} "
        f"records; loop error: {loop.error!r})"
    )
    assert not consumer.publish_errors, (
        f"{len(consumer.publish_errors)} follow-up publishes of healthy messages failed with "
        f"another record's error; first: {consumer.publish_errors[0]}"
    )
    assert stopped, "consume_loop did not return within 20 s of stop()"


# -- fault 2 -------------------------------------------------------------------------------
def test_two_pending_retries_in_a_partition_never_commit_past_the_first(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Fault 2: a second pending retry in a partition overwrites the first one's seek.

    Poison messages at offsets 1 and 2 (different keys) of one partition, concurrency 4,
    ordering by key, and a dead-letter topic that refuses for a while: it is deleted after
    start-up (the producer may not auto-create it), so dead letters stay unconfirmed - a
    transient refusal - until it is created again.
    """
    queue = unique("f2")
    dlq = f"{queue}.dlq"
    create_topic(kafka_bootstrap, queue, 1)
    backend = kafka_backend(
        kafka_bootstrap,
        dead_letter_timeout=1.0,
        producer_config={"allow.auto.create.topics": False},
    )
    backends.append(backend)
    backend.declare_queue(queue)  # creates the DLQ

    def fail_poison(message: Any, message_id: str) -> None:
        if message.order_id == "poison":
            raise RuntimeError(f"poison {message_id}")

    consumer = IdLedger(hook=fail_poison)
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=1, backoff_base=0.3, backoff_max=1.0, jitter=0),
        concurrency=4,
        ordering="key",
    )
    dispatcher.attach_consumer(consumer)
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    loop = Loop(dispatcher, queue).start()
    samples: list[int] = []
    try:
        produce(kafka_bootstrap, queue, [Record(0, "warm-up")])
        assert wait_until(lambda: "warm-up" in consumer.ids, 20), "the loop did not start"
        delete_topic(kafka_bootstrap, dlq)
        produce(
            kafka_bootstrap,
            queue,
            [Record(0, "poison-a", order_id="poison"), Record(0, "poison-b", order_id="poison")]
            + [Record(0, f"good-{i}", amount=i) for i in range(3, 11)],
        )
        # while the DLQ refuses, neither poison message can be done: nothing may pass 1
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and not loop.ended:
            samples.append(offsets.committed()[0])
            time.sleep(0.3)
        assert max(samples) <= 1, (
            f"while the DLQ refused, the committed offset moved to {max(samples)}, past "
            f"offset 1 that was neither processed nor dead-lettered (samples {samples})"
        )
        if loop.ended:  # stopped loudly on the refusal: allowed, with nothing passed
            assert loop.error is not None, "consume_loop returned on its own"
            assert offsets.committed()[0] <= 1
            return
        create_topic(kafka_bootstrap, dlq, 1)
        ended = wait_until(lambda: offsets.committed() == [11], 25, step=0.5)
        dead = {letter.header("dlq.original_offset") for letter in read_all(kafka_bootstrap, dlq)}
        assert ended and {"1", "2"} <= dead, (
            f"after the DLQ accepted again: committed {offsets.committed()} (want [11]), "
            f"dead-lettered offsets {sorted(d or '' for d in dead)} (want 1 and 2)"
        )
    finally:
        loop.stop(20)
        offsets.close()


# -- fault 3 -------------------------------------------------------------------------------
def _take_and_give_back(bootstrap: str, group: str, topic: str, timeout: float) -> list[int]:
    """A second member joins ``group``, takes partitions, then leaves; the partitions taken."""
    member = RawConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            **FAST_GROUP,
        }
    )
    taken: list[int] = []
    try:
        member.subscribe([topic])
        deadline = time.monotonic() + timeout
        while not taken and time.monotonic() < deadline:
            member.poll(0.2)
            taken = sorted(tp.partition for tp in member.assignment())
        return taken
    finally:
        member.close()  # leaves the group: the partitions go back


def test_partitions_taken_while_waiting_out_a_backoff_move_again_when_given_back(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Fault 3: a paused partition stays paused for ever after revoke + re-assign.

    Every partition waits out a long backoff; a second member joins, takes some of them,
    then leaves. Every message must still be processed and committed.
    """
    queue, partitions = unique("f3"), 4
    create_topic(kafka_bootstrap, queue, partitions)
    produce(kafka_bootstrap, queue, [Record(p, f"first-{p}") for p in range(partitions)])
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue)
    failed: set[str] = set()
    lock = threading.Lock()

    def fail_first_delivery(message: Any, message_id: str) -> None:
        with lock:
            if message_id.startswith("first-") and message_id not in failed:
                failed.add(message_id)
                raise RuntimeError(f"{message_id}: fails once")

    consumer = IdLedger(hook=fail_first_delivery)
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=None, backoff_base=10.0, backoff_max=10.0, jitter=0),
    )
    dispatcher.attach_consumer(consumer)
    offsets = Offsets(kafka_bootstrap, queue, queue, partitions)
    loop = Loop(dispatcher, queue).start()
    try:
        assert wait_until(lambda: len(failed) == partitions, 20), f"failed once: {failed}"
        taken = _take_and_give_back(kafka_bootstrap, queue, queue, 8)
        assert taken, "the second member was given no partition"
        produce(kafka_bootstrap, queue, [Record(p, f"second-{p}") for p in range(partitions)])
        wanted = {f"{kind}-{p}" for kind in ("first", "second") for p in range(partitions)}
        wait_until(
            lambda: wanted <= set(consumer.ids) and offsets.committed() == [2] * partitions,
            25,
            step=0.5,
        )
        missing = sorted(wanted - set(consumer.ids))
        assert not missing and offsets.committed() == [2] * partitions, (
            f"partitions {taken} were taken by a second member while waiting out a backoff, "
            f"then given back; 25 s later messages {missing} are unprocessed and the "
            f"committed offsets are {offsets.committed()} (want {[2] * partitions}); "
            f"loop error: {loop.error!r}"
        )
    finally:
        loop.stop(20)
        offsets.close()


def test_partitions_taken_while_paused_by_back_pressure_move_again_when_given_back(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Fault 3, back-pressure: partitions paused because they are full are given back.

    A consumer that is slow until the second member has left, concurrency 2 and at most 2
    messages in flight per partition keep the 8 partitions paused; a second member joins,
    takes about half of them (at most two with a message in hand), then leaves.
    """
    queue, partitions, per_partition = unique("f3bp"), 8, 20
    create_topic(kafka_bootstrap, queue, partitions)
    produce(
        kafka_bootstrap,
        queue,
        [Record(p, f"m{p}-{i}") for i in range(per_partition) for p in range(partitions)],
    )
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue)
    slow = threading.Event()
    slow.set()

    def pace(message: Any, message_id: str) -> None:
        if slow.is_set():
            time.sleep(0.3)

    consumer = IdLedger(hook=pace)
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        concurrency=2,
        ordering="partition",
        max_in_flight_per_partition=2,
    )
    dispatcher.attach_consumer(consumer)
    offsets = Offsets(kafka_bootstrap, queue, queue, partitions)
    loop = Loop(dispatcher, queue).start()
    try:
        assert wait_until(lambda: len(consumer.ids) >= 2, 20), "the loop did not start"
        taken = _take_and_give_back(kafka_bootstrap, queue, queue, 8)
        slow.clear()
        assert taken, "the second member was given no partition"
        want = [per_partition] * partitions
        wait_until(lambda: offsets.committed() == want, 30, step=0.5)
        committed = offsets.committed()
        left = {
            p: per_partition - len({i for i in consumer.ids if i.startswith(f"m{p}-")})
            for p in range(partitions)
        }
        assert committed == want, (
            f"partitions {taken} were taken by a second member while paused by "
            f"back-pressure, then given back; 30 s later the committed offsets are "
            f"{committed} (want {want}), messages never processed per partition: {left}; "
            f"loop error: {loop.error!r}"
        )
    finally:
        slow.clear()
        loop.stop(20)
        offsets.close()


# -- fault 6 -------------------------------------------------------------------------------
def test_a_dead_letter_that_can_never_be_written_does_not_stop_the_partition(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Fault 6: a dead letter that can never be written is retried for ever.

    A 999,799-byte record that does not decode: its DLQ copy exceeds the size limit once
    the ``dlq.*`` headers are added. Either a fallback dead letter without the payload
    (headers keep the original's topic/partition/offset and the reason) lets the partition
    go on, or the loop stops loudly; it must not retry for ever.
    """
    queue = unique("f6")
    create_topic(kafka_bootstrap, queue, 1)
    huge = b"\xff" * 999_799
    produce(
        kafka_bootstrap,
        queue,
        [Record(0, "huge", value=huge)] + [Record(0, f"good-{i}", amount=i) for i in range(1, 6)],
        **{"message.max.bytes": 1_048_576},
    )
    backend = kafka_backend(kafka_bootstrap, dead_letter_timeout=5.0)
    backends.append(backend)
    backend.declare_queue(queue)
    consumer = IdLedger()
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=1, backoff_base=0.2, backoff_max=1.0),
    )
    dispatcher.attach_consumer(consumer)
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    loop = Loop(dispatcher, queue).start()
    try:
        wait_until(lambda: loop.ended or offsets.committed() == [6], 25, step=0.5)
        committed = offsets.committed()
    finally:
        loop.stop(20)
        offsets.close()
    letters = read_all(kafka_bootstrap, f"{queue}.dlq")
    if loop.error is not None:  # stopped loudly: then nothing may pass the undone record
        assert committed[0] <= 0, f"stopped ({loop.error!r}) but committed {committed}"
        return
    fallback = [letter for letter in letters if letter.original == (queue, "0", "0")]
    assert fallback and committed == [6], (
        f"after 25 s the 999,799-byte record at offset 0 has no dead letter (the DLQ holds "
        f"{len(letters)} records), the loop has not stopped, and the committed offset is "
        f"{committed} (want [6]): the partition is stuck retrying a dead letter that can "
        f"never be written; processed: {consumer.ids}; last error reported: "
        f"{loop.reported[-1:]}"
    )
    letter = fallback[0]
    assert len(letter.value or b"") < len(huge), "the fallback dead letter carries the payload"
    assert any(name.startswith("dlq.error") for name in letter.headers), letter.headers
    assert consumer.ids == [f"good-{i}" for i in range(1, 6)]
