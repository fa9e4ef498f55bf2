"""Backends under the contract: every MessagingBackend must pass tests/contract/."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from service import InMemoryBackend, Message, MessagingBackend, Subscription
from tests.kafka_helpers import kafka_backend, read_topic


@dataclass
class Harness:
    """One backend plus what the contract tests need to drive it."""

    backend: MessagingBackend
    read_topic: Callable[[str, int], list[Message]]
    """All records of a topic (waiting up to the given count)."""
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


def _memory() -> Iterator[Harness]:
    backend = InMemoryBackend()
    yield Harness(backend, lambda topic, _count: backend.records(topic), deadline=0.5)


def _kafka(request: pytest.FixtureRequest) -> Iterator[Harness]:
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    backend = kafka_backend(bootstrap)
    try:
        yield Harness(
            backend,
            lambda topic, count: read_topic(bootstrap, topic, count, timeout=5.0),
            deadline=15.0,
            quiet=3.0,
        )
    finally:
        backend.close()


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Iterator[Harness]]] = {
    "memory": lambda _request: _memory(),
    "kafka": _kafka,
}


@pytest.fixture(params=sorted(BACKENDS))
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    yield from BACKENDS[request.param](request)
