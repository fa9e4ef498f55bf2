"""Republisher: bounded in flight, each outcome reported, dlq.* headers dropped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError

from service.backends.kafka.dead_letters import Republisher
from service.messages import Message


class FakeProducer:
    """Confirms up to ``per_poll`` records per waiting poll(), none on poll(0) (the broker
    has not answered yet); refuses records whose key is b"bad"."""

    def __init__(self, per_poll: int = 7, queue_limit: int = 50) -> None:
        self.per_poll = per_poll
        self.queue_limit = queue_limit
        self.queued: list[tuple[Callable[[KafkaError | None, Any], None], bytes | None]] = []
        self.produced: list[tuple[str, bytes | None, bytes | None, list[Any]]] = []
        self.peak_queued = 0

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Any = None,
        on_delivery: Any = None,
    ) -> None:
        if len(self.queued) >= self.queue_limit:
            raise BufferError("local queue full")
        self.produced.append((topic, value, key, headers))
        self.queued.append((on_delivery, key))
        self.peak_queued = max(self.peak_queued, len(self.queued))

    def poll(self, timeout: float = -1) -> int:
        if timeout == 0:
            return 0
        done, self.queued = self.queued[: self.per_poll], self.queued[self.per_poll :]
        for callback, key in done:
            error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too big") if key == b"bad" else None
            callback(error, None)
        return len(done)

    def flush(self, timeout: float = -1) -> int:
        while self.queued:
            self.poll()
        return 0


def dead_letters(count: int, pulled: list[int]) -> Iterator[Message]:
    for number in range(count):
        pulled[0] += 1
        headers = (("message_id", f"m-{number}".encode()), ("dlq.error_class", b"ValueError"))
        key = b"bad" if number == 13 else f"k-{number}".encode()
        yield Message("q.dlq", b"x" * 100, headers, key, 0, number)


def test_records_are_sent_as_read_with_a_bounded_number_unconfirmed() -> None:
    producer = FakeProducer(queue_limit=10_000)
    publisher = Republisher({}, {}, 5.0, max_in_flight=20, producer=producer)
    pulled, outcomes = [0], []
    worst_backlog = 0

    def outcome(failure: str | None) -> None:
        outcomes.append(failure)

    for message in dead_letters(5000, pulled):
        publisher.send("orders", message, outcome)
        # a record read is either confirmed or among at most max_in_flight unconfirmed
        worst_backlog = max(worst_backlog, pulled[0] - len(outcomes))
    publisher.finish()

    assert len(outcomes) == 5000
    assert outcomes.count(None) == 4999
    assert [f for f in outcomes if f] == ["MSG_SIZE_TOO_LARGE: too big"]
    assert publisher.peak_in_flight <= 20
    assert worst_backlog <= 20
    topic, value, key, headers = producer.produced[0]
    assert (topic, value, key) == ("orders", b"x" * 100, b"k-0")
    assert headers == [("message_id", b"m-0")]  # dlq.* dropped


def test_unconfirmed_records_are_reported_unsure() -> None:
    class Silent(FakeProducer):
        def poll(self, timeout: float = -1) -> int:
            return 0

        def flush(self, timeout: float = -1) -> int:
            return len(self.queued)

    publisher = Republisher({}, {}, 1.5, producer=Silent())
    failures: list[str | None] = []
    for message in dead_letters(3, [0]):
        publisher.send("orders", message, failures.append)
    publisher.finish()
    assert failures == ["not confirmed within 1.5s (it may or may not have been written)"] * 3


@pytest.mark.parametrize("queue_limit", [1, 3])
def test_a_full_local_queue_waits_for_deliveries(queue_limit: int) -> None:
    producer = FakeProducer(per_poll=1, queue_limit=queue_limit)
    publisher = Republisher({}, {}, 5.0, max_in_flight=100, producer=producer)
    done: list[str | None] = []
    for message in dead_letters(30, [0]):
        publisher.send("orders", message, done.append)
    publisher.finish()
    assert len(done) == 30 and producer.peak_queued <= queue_limit
