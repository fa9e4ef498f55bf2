"""End-to-end latency (publish to processed) at a fixed rate: p50 and p99."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import Producer

from service import Consumer, JsonSerializer, MessageDispatcher, SerializerRegistry
from service.backends.kafka import KafkaBackend

LOW_LATENCY = {"fetch.wait.max.ms": 5, "fetch.min.bytes": 1}


class _Clock(Consumer):
    def __init__(self, target: int) -> None:
        super().__init__()
        self.latencies: list[float] = []
        self.target = target
        self.dispatcher: MessageDispatcher | None = None

    def process(self, message: Any, **kwargs: Any) -> None:
        if message.get("warmup"):
            return
        self.latencies.append(time.time() - message["sent"])
        if len(self.latencies) == self.target and self.dispatcher is not None:
            self.dispatcher.stop()


def max_rate(bootstrap: str, count: int = 100_000) -> float:
    """Messages/s the whole pipeline sustains: a producer process publishing as fast as it
    can while the dispatcher consumes (first publish to last processed)."""
    started = time.time()
    measure(bootstrap, 0, count=count)
    return count / (time.time() - started - _SETTLE)


_SETTLE = 3.0  # seconds measure() waits for the group before publishing


def measure(
    bootstrap: str, rate: float, seconds: float = 0, count: int | None = None
) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, messages) publishing at ``rate`` messages/s (0: flat out)."""
    topic = f"bench-latency-{uuid.uuid4().hex[:8]}"
    backend = KafkaBackend(bootstrap, partitions=6, consumer_config=LOW_LATENCY)
    backend.declare_queue(topic)
    count = count if count is not None else int(rate * seconds)
    clock = _Clock(count)
    dispatcher = MessageDispatcher(
        SerializerRegistry({"serializers": {"json": JsonSerializer}}),
        backend=backend,
        poll_timeout=0.05,
    )
    clock.dispatcher = dispatcher
    dispatcher.attach_consumer(clock)
    loop = threading.Thread(target=dispatcher.consume_loop, args=(topic,))
    loop.start()
    time.sleep(_SETTLE)  # the group is joined and partitions assigned
    # the producer runs in its own process, as in production: no GIL shared with the consumer
    subprocess.run(  # noqa: S603 - our own module, our own arguments
        [sys.executable, "-m", "bench.latency_case", bootstrap, topic, str(rate), str(count)],
        cwd=Path(__file__).resolve().parents[1],
        check=True,
        timeout=600,
    )
    loop.join(60)
    dispatcher.stop()
    loop.join(10)
    backend.close()
    latencies = sorted(clock.latencies)
    if not latencies:
        return float("nan"), float("nan"), 0
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return p50, p99, len(latencies)


def raw_measure(bootstrap: str, rate: float, count: int) -> tuple[float, float]:
    """(p50 ms, p99 ms) of a raw confluent-kafka ``consume(1000)`` loop, same set-up."""
    topic = f"bench-latency-raw-{uuid.uuid4().hex[:8]}"
    KafkaBackend(bootstrap, partitions=6).declare_topic(topic)
    consumer = RawConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            **LOW_LATENCY,
        }
    )
    consumer.subscribe([topic])
    latencies: list[float] = []

    def loop() -> None:
        deadline = time.monotonic() + 600
        while len(latencies) < count and time.monotonic() < deadline:
            for record in consumer.consume(1000, 0.05):
                if record.error() is None:
                    body = json.loads(record.value() or b"{}")
                    if not body.get("warmup"):
                        latencies.append(time.time() - body["sent"])

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(_SETTLE)
    subprocess.run(  # noqa: S603 - our own module, our own arguments
        [sys.executable, "-m", "bench.latency_case", bootstrap, topic, str(rate), str(count)],
        cwd=Path(__file__).resolve().parents[1],
        check=True,
        timeout=600,
    )
    thread.join(120)
    consumer.close()
    latencies.sort()
    return latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000


def produce(bootstrap: str, topic: str, rate: float, count: int) -> None:
    """Publish ``count`` stamped messages at ``rate`` per second (the producer process)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for partition in range(6):  # connections and metadata ready before the clock starts
        producer.produce(
            topic,
            b'{"warmup": true}',
            partition=partition,
            headers=[("serializer_id", b"1"), ("manifest", b"dict"), ("message_id", b"warmup")],
        )
    producer.flush(10)
    started = time.perf_counter()
    for i in range(count):
        pause = started + i / rate - time.perf_counter() if rate else 0
        if pause > 0:
            time.sleep(pause)
        headers = [
            ("serializer_id", b"1"),
            ("manifest", b"dict"),
            ("message_id", uuid.uuid4().hex.encode()),
        ]
        body = json.dumps({"n": i, "sent": time.time()}).encode()
        producer.produce(topic, body, f"k{i % 64}", headers=headers)
        producer.poll(0)
    producer.flush(30)


if __name__ == "__main__":
    produce(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
