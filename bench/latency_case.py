"""End-to-end latency (publish to processed) at a fixed rate: p50 and p99.

The producer runs in its own process (as in production: no GIL shared with the consumer)
and stamps each record with its send time. It first writes one warm-up record to each
partition and waits; the clock starts only once the consumer has received all of them, so
the group join and the first fetches are never counted as latency. The dispatcher runs with
the service's consumer defaults, the raw loop with :data:`bench.settings.RAW_CONSUMER`; both
parse the same JSON. The producer also reports the broker's acknowledgement p99
(:data:`ACKS`): on a busy machine the broker alone can take longer than a latency target.

Each run also measures **append->processed**: the topics use ``LogAppendTime``, so a
record's timestamp is when the broker appended it, and processed minus appended is the part
of the latency the consumer is responsible for (fetching, handing over, running), free of
the producer's queueing and the broker's own append time (same machine, same clock;
milliseconds).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import Producer

from bench.settings import RAW_BATCH, RAW_CONSUMER
from service import Consumer, JsonSerializer, MessageDispatcher, SerializerRegistry
from service.backends.kafka import KafkaBackend

PARTITIONS = 6
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}
"""Topic config: record timestamps are the broker's append time (append->processed)."""


class Latency(NamedTuple):
    """One run: publish->processed and append->processed percentiles (ms), and the rate."""

    p50: float
    p99: float
    append_p50: float
    append_p99: float
    done: int
    rate: float


_READY_TIMEOUT = 60.0  # seconds to wait for the consumer to receive the warm-up records


class _Clock(Consumer):
    def __init__(self, target: int) -> None:
        super().__init__()
        self.latencies: list[float] = []
        self.appended: list[float] = []  # processed - the broker's append time
        self.warm = 0
        self.last = 0.0
        self.target = target
        self.dispatcher: MessageDispatcher | None = None

    def process(self, message: Any, **kwargs: Any) -> None:
        if message.get("warmup"):
            self.warm += 1
            return
        self.last = time.time()
        self.latencies.append(self.last - message["sent"])
        self.appended.append(self.last - kwargs["record"].timestamp_ms / 1000)
        if len(self.latencies) == self.target and self.dispatcher is not None:
            self.dispatcher.stop()


ACKS: list[float] = []
"""The broker's acknowledgement p99 (ms) seen by each producer process, in order: the part
of publish->processed no consumer can do anything about."""


def _publish(
    bootstrap: str, topic: str, rate: float, count: int, ready: Callable[[], bool]
) -> float:
    """Run the producer process; tell it to start once ``ready()``; the time it started."""
    producer = subprocess.Popen(  # noqa: S603 - our own module, our own arguments
        [sys.executable, "-m", "bench.latency_case", bootstrap, topic, str(rate), str(count)],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert producer.stdin is not None and producer.stdout is not None
    deadline = time.monotonic() + _READY_TIMEOUT
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.time()
    producer.stdin.write(b"go\n")
    producer.stdin.close()
    answer = producer.stdout.read()
    if producer.wait(timeout=600):
        raise SystemExit(f"latency producer failed with exit code {producer.returncode}")
    ACKS.append(json.loads(answer.decode().strip().splitlines()[-1])["ack_p99_ms"])
    return started


def _settle_heap() -> None:
    """Freeze the heap before a run, as ``service run`` does after start-up (and
    :func:`bench.timing.timed` before every throughput run): a full collection walking what
    earlier runs left would land in one contender's tail."""
    gc.collect()
    gc.freeze()


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    if not latencies:
        return float("nan"), float("nan")
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return ordered[len(ordered) // 2] * 1000, p99 * 1000


def max_rate(bootstrap: str, count: int = 100_000) -> float:
    """Messages/s the whole pipeline sustains: a producer process publishing as fast as it
    can while the dispatcher consumes (first publish to last processed)."""
    return measure(bootstrap, 0, count=count).rate


def measure(bootstrap: str, rate: float, seconds: float = 0, count: int | None = None) -> Latency:
    """The dispatcher's latencies, publishing at ``rate`` messages/s (0: flat out) for
    ``seconds`` or ``count`` messages, and the rate it processed them at."""
    _settle_heap()
    topic = f"bench-latency-{uuid.uuid4().hex[:8]}"
    backend = KafkaBackend(bootstrap, partitions=PARTITIONS)
    backend.create_topics({topic: PARTITIONS}, APPEND_TIME)
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
    started = _publish(bootstrap, topic, rate, count, lambda: clock.warm >= PARTITIONS)
    loop.join(60)
    dispatcher.stop()
    loop.join(10)
    backend.close()
    p50, p99 = _percentiles(clock.latencies)
    done = len(clock.latencies)
    return Latency(
        p50, p99, *_percentiles(clock.appended), done, done / max(clock.last - started, 1e-9)
    )


def raw_measure(bootstrap: str, rate: float, count: int) -> Latency:
    """The latencies of a raw confluent-kafka loop, same set-up: ``consume(1000, 0)``, and
    ``poll(0.05)`` for the first record when nothing is there (its rate is not measured)."""
    _settle_heap()
    topic = f"bench-latency-raw-{uuid.uuid4().hex[:8]}"
    KafkaBackend(bootstrap).create_topics({topic: PARTITIONS}, APPEND_TIME)
    consumer = RawConsumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, **RAW_CONSUMER}
    )
    consumer.subscribe([topic])
    latencies: list[float] = []
    appended: list[float] = []
    warm = [0]

    def loop() -> None:
        deadline = time.monotonic() + 600
        while len(latencies) < count and time.monotonic() < deadline:
            # at its best for latency, as the service polls: take what is there at once,
            # else wait for the first record only (consume(1000, 0.05) waits up to 50 ms to
            # fill its batch: a p50 of ~30 ms at 5,000 msg/s)
            records = consumer.consume(RAW_BATCH, 0)
            if not records:
                first = consumer.poll(0.05)
                records = [first] if first is not None else []
            for record in records:
                if record.error() is None:
                    record.headers()
                    body = json.loads(record.value() or b"{}")
                    if body.get("warmup"):
                        warm[0] += 1
                    else:
                        now = time.time()
                        latencies.append(now - body["sent"])
                        appended.append(now - record.timestamp()[1] / 1000)

    thread = threading.Thread(target=loop)
    thread.start()
    _publish(bootstrap, topic, rate, count, lambda: warm[0] >= PARTITIONS)
    thread.join(120)
    consumer.close()
    return Latency(*_percentiles(latencies), *_percentiles(appended), len(latencies), 0.0)


def produce(bootstrap: str, topic: str, rate: float, count: int) -> None:
    """The producer process: warm-up records, wait for ``go`` on stdin, then ``count``
    stamped records at ``rate`` per second (0: as fast as it can)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for partition in range(PARTITIONS):  # connections, metadata and the group ready first
        producer.produce(
            topic,
            b'{"warmup": true}',
            partition=partition,
            headers=[("serializer_id", b"1"), ("manifest", b"dict"), ("message_id", b"warmup")],
        )
    producer.flush(10)
    sys.stdin.readline()
    acks: list[float] = []
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
        sent = time.time()
        body = json.dumps({"n": i, "sent": sent}).encode()

        def acked(error: Any, record: Any, sent: float = sent) -> None:
            acks.append(time.time() - sent)

        while True:
            try:
                producer.produce(topic, body, f"k{i % 64}", headers=headers, on_delivery=acked)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(30)
    print(json.dumps({"ack_p99_ms": _percentiles(acks)[1]}))


if __name__ == "__main__":
    produce(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
