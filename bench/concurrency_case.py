"""Slow consumers (5 ms of simulated I/O per message): sequential vs ordered concurrency."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Producer

from service import Consumer, JsonSerializer, MessageDispatcher, SerializerRegistry
from service.backends.kafka import KafkaBackend

SLEEP = 0.005
KEYS = 64


def publish(bootstrap: str, topic: str, count: int) -> None:
    """``count`` small JSON messages over ``KEYS`` keys, in order per key (idempotent: a
    retried batch is never written behind a later one)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    for i in range(count):
        headers = [
            ("serializer_id", b"1"),
            ("manifest", b"dict"),
            ("message_id", uuid.uuid4().hex.encode()),
        ]
        producer.produce(
            topic, json.dumps({"key": i % KEYS, "n": i}).encode(), f"k{i % KEYS}", headers=headers
        )
        producer.poll(0)
    producer.flush(60)


class _Slow(Consumer):
    def __init__(self, target: int) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.seen = 0
        self.target = target
        self.started = 0.0
        self.order_ok = True
        self.last: dict[int, int] = {}
        self.dispatcher: MessageDispatcher | None = None

    def process(self, message: Any, **kwargs: Any) -> None:
        time.sleep(SLEEP)
        with self.lock:
            if not self.seen:
                self.started = time.perf_counter()
            if message["n"] < self.last.get(message["key"], -1):
                self.order_ok = False
            self.last[message["key"]] = message["n"]
            self.seen += 1
            if self.seen == self.target and self.dispatcher is not None:
                self.dispatcher.stop()


def rate(bootstrap: str, topic: str, count: int, concurrency: int) -> tuple[float, bool]:
    """(messages per second, per-key order kept) with ``concurrency`` workers, key order."""
    backend = KafkaBackend(bootstrap)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    backend.declare_queue(queue, topic, create=False)
    slow = _Slow(count)
    dispatcher = MessageDispatcher(
        SerializerRegistry({"serializers": {"json": JsonSerializer}}),
        backend=backend,
        concurrency=concurrency,
        ordering="key",
    )
    slow.dispatcher = dispatcher
    dispatcher.attach_consumer(slow)
    dispatcher.consume_loop(queue)
    elapsed = time.perf_counter() - slow.started
    backend.close()
    return count / elapsed, slow.order_ok
