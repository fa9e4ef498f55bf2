"""Timing a dispatcher: a no-op consumer that stops the loop after N messages."""

from __future__ import annotations

import time
import uuid
from typing import Any

from service import Consumer, DeduplicationCache, MessageDispatcher, SerializerRegistry
from service.backends.kafka import KafkaBackend


class StopAfter(Consumer):
    """Counts messages, notes when the first came, stops the dispatcher at ``target``."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.seen, self.target, self.started = 0, target, 0.0
        self.dispatcher: MessageDispatcher | None = None

    def process(self, message: Any, **kwargs: Any) -> None:
        if not self.seen:
            self.started = time.perf_counter()
        self.seen += 1
        if self.seen == self.target and self.dispatcher is not None:
            self.dispatcher.stop()


def dispatcher_rate(
    bootstrap: str,
    topic: str,
    count: int,
    serializers: SerializerRegistry,
    cache: DeduplicationCache | None = None,
    backend: KafkaBackend | None = None,
) -> float:
    """Messages per second of a fresh consumer group reading ``count`` messages of ``topic``."""
    backend = backend or KafkaBackend(bootstrap)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    backend.declare_queue(queue, topic, create=False)
    counter = StopAfter(count)
    dispatcher = MessageDispatcher(serializers, cache=cache, backend=backend)
    counter.dispatcher = dispatcher
    dispatcher.attach_consumer(counter)
    dispatcher.consume_loop(queue)
    elapsed = time.perf_counter() - counter.started
    backend.close()
    return count / elapsed
