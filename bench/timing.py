"""Timing a dispatcher: a no-op consumer that stops the loop after N messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer as RawConsumer

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


def raw_rate(bootstrap: str, topic: str, count: int, decode: Callable[[bytes], Any]) -> float:
    """Messages per second of a raw confluent-kafka ``consume(1000)`` loop that reads the
    headers and ``decode``s each value: the baseline every ratio is measured against."""
    consumer = RawConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen, started = 0, 0.0
    while seen < count:
        for record in consumer.consume(1000, 1.0):
            if record.error() is not None:
                continue
            if not seen:
                started = time.perf_counter()
            record.headers()
            decode(record.value())  # type: ignore[arg-type]
            seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return count / elapsed
