"""Failed attempts survive a restart and a rebalance (commit notes), on the real broker."""

from __future__ import annotations

from typing import Any

import pytest

from service import Consumer, MessageDispatcher, Publisher, RetryPolicy
from tests.kafka_helpers import committed, kafka_backend, read_topic, unique
from tests.payments import DoPayment, json_registry

pytestmark = pytest.mark.integration


class AlwaysFails(Consumer):
    def __init__(self, stop_after: int | None, dispatcher: list[MessageDispatcher]) -> None:
        super().__init__()
        self.runs = 0
        self._stop_after = stop_after
        self._dispatcher = dispatcher

    def process(self, message: Any, **kwargs: Any) -> None:
        self.runs += 1
        if self._stop_after is not None and self.runs >= self._stop_after:
            self._dispatcher[0].stop()
        raise RuntimeError("always fails")


def member(bootstrap: str, queue: str, stop_after: int | None) -> tuple[int, int]:
    """Run one member until it stops (or drains); returns (consumer runs, committed offset)."""
    backend = kafka_backend(bootstrap)
    try:
        backend.declare_queue(queue)
        holder: list[MessageDispatcher] = []
        consumer = AlwaysFails(stop_after, holder)
        dispatcher = MessageDispatcher(
            json_registry(),
            backend=backend,
            retry=RetryPolicy(max_attempts=4, backoff_base=0.2, backoff_max=0.2, jitter=0),
        )
        holder.append(dispatcher)
        dispatcher.attach_consumer(consumer)
        dispatcher.consume_loop(queue)
        return consumer.runs, committed(bootstrap, queue, queue)[0]
    finally:
        backend.close()


def test_attempts_counted_before_a_restart_are_not_forgotten(kafka_bootstrap: str) -> None:
    queue = unique("attempts")
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_queue(queue)
    Publisher(json_registry(), backend=backend).publish(queue, DoPayment("poison", 1))
    backend.flush(10)
    backend.close()

    runs, position = member(kafka_bootstrap, queue, stop_after=2)  # attempts 1 and 2 fail
    assert runs == 2 and position == 0  # not done: nothing committed past it

    runs, _ = member(kafka_bootstrap, queue, stop_after=2)  # attempts 3 and 4: dead letter
    [letter] = read_topic(kafka_bootstrap, f"{queue}.dlq", 1)
    headers = dict(letter.headers)
    assert headers["dlq.attempts"] == b"4", headers["dlq.attempts"]
    assert runs == 2  # not 4: the count went on where the first member left it
    assert committed(kafka_bootstrap, queue, queue) == [1]
