"""InMemoryBackend's own promises and test hooks (the contract suite covers the rest)."""

from __future__ import annotations

import time

import pytest

from service import (
    Consumer,
    DeadLetterRefusedError,
    InMemoryBackend,
    MessageDispatcher,
    ProduceError,
    RetryPolicy,
    link_synchronously,
)
from service.backends.memory import VirtualClock
from tests.payments import DoPayment, PaymentConsumer, PaymentService, json_registry, publisher

QUEUE = "mem"


def failing_then_ok(failures: int) -> tuple[Consumer, list[int]]:
    seen: list[int] = []

    def on_message(message: DoPayment) -> None:
        seen.append(message.amount)
        if len(seen) <= failures:
            raise RuntimeError("not yet")

    return Consumer(on_message=on_message), seen


def test_backoff_passes_on_the_virtual_clock_without_sleeping() -> None:
    backend = InMemoryBackend()
    consumer, seen = failing_then_ok(2)
    dispatcher = MessageDispatcher(
        json_registry(), backend=backend, retry=RetryPolicy(backoff_base=10.0, jitter=0)
    )
    dispatcher.attach_consumer(consumer)
    publisher(backend).publish(QUEUE, DoPayment("o", 1))
    started = time.monotonic()
    dispatcher.consume_loop(QUEUE)
    assert time.monotonic() - started < 2.0
    assert seen == [1, 1, 1]
    assert backend.clock() >= 10.0 + 20.0  # both backoffs passed, on the backend's clock
    assert backend.pending(QUEUE) == [] and backend.committed(QUEUE) == {(QUEUE, 0): 1}


def test_a_real_clock_waits_for_the_delay() -> None:
    backend = InMemoryBackend(clock=time.monotonic)
    backend.publish(QUEUE, b"x")
    with backend.subscribe(QUEUE) as sub:
        [m] = list(sub.poll(1, 0) or [])
        asked = time.monotonic()
        sub.redeliver(m, delay=0.3)
        assert list(sub.poll(1, 0) or []) == []  # not due: not None, it is awaited
        again: list[object] = []
        while not again and time.monotonic() - asked < 2.0:
            again = list(sub.poll(1, 0.5) or [])
        sub.acknowledge(again[0])  # type: ignore[arg-type]
    assert time.monotonic() - asked >= 0.3


def test_virtual_clock_only_moves_forward() -> None:
    clock = VirtualClock(5.0)
    clock.advance(-1)
    clock.advance_to(3.0)
    assert clock() == 5.0
    clock.advance(1.5)
    clock.advance_to(7.0)
    assert clock() == 7.0


def test_a_refused_dead_letter_is_retried_until_the_topic_accepts() -> None:
    backend = InMemoryBackend()
    backend.refuse_publishes(f"{QUEUE}.dlq", times=2)
    errors: list[Exception] = []
    dispatcher = MessageDispatcher(json_registry(), backend=backend)
    dispatcher.attach_consumer(PaymentConsumer(PaymentService()))
    backend.publish_raw(QUEUE, b"junk")  # no routing headers: dead-lettered at once
    dispatcher.consume_loop(QUEUE, on_exception=errors.append)
    assert [type(e) for e in errors].count(ProduceError) == 2  # reported, then retried
    [dead] = backend.dead_letters(QUEUE)
    assert dead.reason.startswith("MissingHeaderError")
    assert len(backend.records(f"{QUEUE}.dlq")) == 1
    assert backend.pending(QUEUE) == []


def test_a_record_too_large_for_the_dead_letter_topic_goes_without_its_payload() -> None:
    backend = InMemoryBackend()
    backend.refuse_publishes(f"{QUEUE}.dlq", larger_than=1000)
    dispatcher = MessageDispatcher(json_registry(), backend=backend)
    dispatcher.attach_consumer(PaymentConsumer(PaymentService()))
    backend.publish_raw(QUEUE, b"x" * 5000)
    dispatcher.consume_loop(QUEUE)
    [record] = backend.records(f"{QUEUE}.dlq")
    assert record.value is None
    assert record.header("dlq.payload_size") == b"5000"
    assert record.header("dlq.original_offset") == b"0"
    assert b"MSG_SIZE_TOO_LARGE" in (record.header("dlq.payload_dropped") or b"")
    assert backend.pending(QUEUE) == []


def test_a_dead_letter_refused_even_without_payload_stops_the_loop_loudly() -> None:
    backend = InMemoryBackend()
    backend.refuse_publishes(
        f"{QUEUE}.dlq", error=lambda: ProduceError("invalid record", permanent=True)
    )
    dispatcher = MessageDispatcher(json_registry(), backend=backend)
    dispatcher.attach_consumer(PaymentConsumer(PaymentService()))
    backend.publish_raw(QUEUE, b"junk")
    with pytest.raises(DeadLetterRefusedError):
        dispatcher.consume_loop(QUEUE)
    assert backend.committed(QUEUE).get((QUEUE, 0), 0) == 0  # never committed past it
    backend.accept_publishes(f"{QUEUE}.dlq")
    dispatcher.consume_loop(QUEUE)  # a restart after the fix dead-letters it
    assert len(backend.dead_letters(QUEUE)) == 1 and backend.pending(QUEUE) == []


def test_members_share_partitions_and_leaving_hands_them_over() -> None:
    backend = InMemoryBackend()
    backend.declare_topic(QUEUE, partitions=4)
    a, b = backend.subscribe(QUEUE), backend.subscribe(QUEUE)
    for sub in (a, b, a):
        sub.poll(1, 0)
    assert len(a.assignment) == 2 and len(b.assignment) == 2
    assert set(a.assignment) | set(b.assignment) == {(QUEUE, p) for p in range(4)}
    b.close()
    a.poll(1, 0)
    assert a.assignment == [(QUEUE, p) for p in range(4)]
    a.close()
    assert backend.members(QUEUE) == []


def test_a_lost_member_commits_nothing_and_others_take_over() -> None:
    backend = InMemoryBackend()
    backend.publish(QUEUE, b"x")
    a = backend.subscribe(QUEUE)
    [m] = list(a.poll(1, 0) or [])
    backend.lose(QUEUE, a)
    b = backend.subscribe(QUEUE)
    [again] = list(b.poll(1, 0) or [])  # the group moved on: b reads from the committed 0
    a.acknowledge(m)
    a.poll(1, 0)  # a zombie until here: its commit of the partition is refused
    assert backend.committed(QUEUE) == {}
    b.acknowledge(again)
    b.close()
    a.close()
    assert backend.committed(QUEUE) == {(QUEUE, 0): 1}


def test_a_rebalance_revokes_and_assigns_again_at_the_next_poll() -> None:
    backend = InMemoryBackend()
    events: list[str] = []

    class Listener:
        def on_assigned(self, partitions: list[tuple[str, int]]) -> None:
            events.append(f"assigned {partitions}")

        def on_revoked(self, partitions: list[tuple[str, int]]) -> None:
            events.append(f"revoked {partitions}")

        def on_lost(self, partitions: list[tuple[str, int]]) -> None:
            events.append(f"lost {partitions}")

    backend.declare_topic(QUEUE)
    with backend.subscribe(QUEUE) as sub:
        sub.add_listener(Listener())
        sub.poll(1, 0)
        backend.rebalance(QUEUE)
        assert events == [f"assigned {[(QUEUE, 0)]}"]  # nothing outside poll
        sub.poll(1, 0)
        backend.lose(QUEUE, [(QUEUE, 0)])
        sub.poll(1, 0)
    tp = [(QUEUE, 0)]
    kinds = ["assigned", "revoked", "assigned", "lost", "assigned", "revoked"]
    assert events == [f"{kind} {tp}" for kind in kinds]


def test_link_synchronously_runs_retries_and_messages_published_by_consumers() -> None:
    backend = InMemoryBackend()
    seen: list[int] = []
    failures = [1]

    def on_message(message: DoPayment) -> None:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("once")
        seen.append(message.amount)
        if message.amount < 3:
            publisher(backend).publish(QUEUE, DoPayment("o", message.amount + 1))

    link_synchronously(QUEUE, [Consumer(on_message=on_message)], json_registry(), backend)
    publisher(backend).publish(QUEUE, DoPayment("o", 1))
    assert seen == [1, 2, 3]
    assert backend.pending(QUEUE) == []
