"""The dead-letter flood guard: a queue that dead-letters too much halts."""

from __future__ import annotations

import json

import pytest

from service import ConfigurationError, Consumer, InMemoryBackend, MessageDispatcher, RetryPolicy
from service.dispatch.flood import DeadLetterLimit
from tests.payments import DoPayment, json_registry, publisher

QUEUE = "flood"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_trips_on_the_ratio_only_after_enough_messages_and_forgets_old_ones() -> None:
    clock = Clock()
    limit = DeadLetterLimit(ratio=0.5, window=10, min_messages=10, clock=clock)
    assert not any(limit.record(True) for _ in range(9))  # 9 of 9, but fewer than 10 settled
    clock.now += 11  # the window moved on: those are forgotten
    assert not any(limit.record(False) for _ in range(6))
    assert not any(limit.record(True) for _ in range(6))  # 6 of 12: not over half
    assert limit.record(True)  # 7 of 13
    assert limit.tripped is not None and "7 of the last 13" in limit.tripped


@pytest.mark.parametrize("bad", [{"ratio": 0}, {"window": 0}, {"min_messages": 0}])
def test_bad_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        DeadLetterLimit(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_flood_of_dead_letters_halts_the_queue_and_a_restart_resumes(concurrency: int) -> None:
    backend = InMemoryBackend()
    backend.declare_topic(QUEUE, partitions=2)
    pub = publisher(backend)
    for i in range(300):
        pub.publish(QUEUE, DoPayment(f"o-{i}", i), key=f"k{i % 8}")

    def broken(message: DoPayment) -> None:
        raise RuntimeError("a bad deploy")

    limit = DeadLetterLimit(ratio=0.5, window=60, min_messages=20)
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=1),
        dead_letter_limit=limit,
        concurrency=concurrency,
    )
    dispatcher.attach_consumer(Consumer(on_message=broken))
    dispatcher.consume_loop(QUEUE)
    assert dispatcher.halted is not None and "dead-letter limit exceeded" in dispatcher.halted
    written = len(backend.dead_letters(QUEUE))
    assert 20 <= written < 40  # stopped soon after the limit, not at full speed

    fixed: list[int] = []
    restarted = MessageDispatcher(json_registry(), backend=backend)
    restarted.attach_consumer(Consumer(on_message=lambda m: fixed.append(m.amount)))
    restarted.consume_loop(QUEUE)
    # the rest was neither dead-lettered nor committed past: all of it comes again
    dead = {d.message.offset + 1000 * d.message.partition for d in backend.dead_letters(QUEUE)}
    ran = {m.offset + 1000 * m.partition for m in backend.records(QUEUE)}
    assert len(fixed) >= len(ran - dead) == 300 - written
    assert backend.pending(QUEUE) == []


@pytest.mark.parametrize("concurrency", [1, 4])
def test_with_early_ack_what_was_taken_after_the_limit_tripped_is_still_dead_lettered(
    concurrency: int,
) -> None:
    """early_ack acknowledges a message when it starts, so a halted queue cannot hand it
    back: its dead letter is written, and what was not taken comes again after a restart."""
    backend = InMemoryBackend()
    backend.declare_topic(QUEUE, partitions=2)
    pub = publisher(backend)
    for i in range(100):
        pub.publish(QUEUE, DoPayment(f"o-{i}", i), key=f"k{i % 8}")

    def broken(message: DoPayment) -> None:
        if message.amount % 2:
            raise RuntimeError("a bad deploy")

    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        early_ack=True,
        poll_batch=100,
        retry=RetryPolicy(max_attempts=1),
        dead_letter_limit=DeadLetterLimit(ratio=0.3, window=60, min_messages=6),
        concurrency=concurrency,
    )
    dispatcher.attach_consumer(Consumer(on_message=broken))
    dispatcher.consume_loop(QUEUE)
    assert dispatcher.halted is not None
    later: list[int] = []
    restarted = MessageDispatcher(json_registry(), backend=backend)
    restarted.attach_consumer(Consumer(on_message=lambda m: later.append(m.amount)))
    restarted.consume_loop(QUEUE)
    dead = [json.loads(d.message.value)["amount"] for d in backend.dead_letters(QUEUE)]
    failing = set(range(1, 100, 2))
    assert failing <= set(dead) | set(later), "failing messages neither dead-lettered nor run again"
    assert backend.pending(QUEUE) == []
