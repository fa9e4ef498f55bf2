"""Backends under the contract: every MessagingBackend must pass tests/contract/.

The Kafka parameters carry the ``integration`` marker (they need the real broker).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from service import InMemoryBackend, Message, MessagingBackend, Subscription
from service.backends.base import TopicPartition
from service.backends.memory import InMemorySubscription
from tests.kafka_helpers import FAST_GROUP, committed, kafka_backend, read_topic

# A Kafka member that does not poll for this long loses its partitions (>= session timeout).
MAX_POLL_INTERVAL_MS = 7000


@dataclass
class Harness:
    """One backend plus what the contract tests need to drive it."""

    backend: MessagingBackend
    read_topic: Callable[[str, int], list[Message]]
    """All records of a topic (waiting up to the given count)."""
    committed: Callable[[str, str, int], list[int]]
    """The committed positions of a queue's group on a topic, per partition (< 0: none)."""
    lose: Callable[[str, Subscription], None]
    """Make ``subscription`` lose its partitions (it hears ``on_lost`` at its next poll)."""
    clock: Callable[[], float] = time.monotonic
    """The clock redelivery delays are measured on."""
    deadline: float = 2.0
    """Seconds a test waits for something to arrive."""
    quiet: float = 0.5
    """Seconds a test waits to be sure that nothing more arrives."""

    def name(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def poll_until(self, sub: Subscription, count: int, wait: float | None = None) -> list[Message]:
        """Poll ``sub`` until ``count`` messages arrived or ``wait`` (the deadline) passed."""
        got: list[Message] = []
        deadline = time.monotonic() + (self.deadline if wait is None else wait)
        while len(got) < count and time.monotonic() < deadline:
            batch = sub.poll(count - len(got), 0.2)
            if batch is None:
                break
            got.extend(batch)
        return got

    def poll_while(
        self, subs: list[Subscription], done: Callable[[], bool], wait: float | None = None
    ) -> list[Message]:
        """Poll every member in turn until ``done()`` or the deadline; what they delivered."""
        got: list[Message] = []
        deadline = time.monotonic() + (self.deadline if wait is None else wait)
        while not done() and time.monotonic() < deadline:
            for sub in subs:
                got.extend(sub.poll(10, 0.1) or [])
        return got


def _memory() -> Iterator[Harness]:
    backend = InMemoryBackend()

    def memory_committed(queue: str, topic: str, partitions: int) -> list[int]:
        positions = backend.committed(queue)
        return [positions.get((topic, p), -1) for p in range(partitions)]

    def memory_lose(queue: str, subscription: Subscription) -> None:
        assert isinstance(subscription, InMemorySubscription)
        backend.lose(queue, subscription)

    yield Harness(
        backend,
        lambda topic, _count: backend.records(topic),
        memory_committed,
        memory_lose,
        clock=backend.clock,
        deadline=0.5,
    )


def _kafka(request: pytest.FixtureRequest) -> Iterator[Harness]:
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    backend = kafka_backend(
        bootstrap,
        consumer_config={**FAST_GROUP, "max.poll.interval.ms": MAX_POLL_INTERVAL_MS},
    )

    def kafka_lose(queue: str, subscription: Subscription) -> None:
        del queue, subscription
        time.sleep(MAX_POLL_INTERVAL_MS / 1000 + 1.5)  # not polling: the group moves on

    try:
        yield Harness(
            backend,
            lambda topic, count: read_topic(bootstrap, topic, count, timeout=5.0),
            lambda queue, topic, partitions: committed(bootstrap, queue, topic, partitions),
            kafka_lose,
            deadline=15.0,
            quiet=3.0,
        )
    finally:
        backend.close()


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Iterator[Harness]]] = {
    "memory": lambda _request: _memory(),
    "kafka": _kafka,
}


@pytest.fixture(
    params=[
        pytest.param("kafka", marks=pytest.mark.integration),
        pytest.param("memory"),
    ]
)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    yield from BACKENDS[request.param](request)


def partitions_of(topic: str, count: int) -> list[TopicPartition]:
    return [(topic, p) for p in range(count)]
