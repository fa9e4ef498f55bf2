"""Timing one contender: messages per second of a fresh group, CPU time, the machine's load.

Every rate is counted from the first message received to the ``count``-th one processed, so
the group join is not timed. :func:`timed` wraps a run into a :class:`Sample` that also
carries the process's CPU time per message (all its threads, librdkafka's included, for the
whole run) and the 1-minute load average before and after: on a shared machine a rate means
little without them.
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer as RawConsumer

from bench.settings import RAW_BATCH, RAW_CONSUMER
from service import Consumer, DeduplicationCache, MessageDispatcher, SerializerRegistry
from service.backends.kafka import KafkaBackend


@dataclass(frozen=True)
class Sample:
    """One timed run: its rate, CPU microseconds per message, the load around it."""

    rate: float
    cpu_us: float
    load_before: float
    load_after: float

    @property
    def load(self) -> str:
        return f"load {self.load_before:.1f}->{self.load_after:.1f}"


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def timed(run: Callable[[], float], count: int) -> Sample:
    """Run ``run`` (which returns a rate over ``count`` messages) and note the CPU time it
    took in this process and the load before and after.

    The heap is frozen first (``gc.collect(); gc.freeze()``), as ``service run`` does after
    start-up, for every contender alike: the collector's full passes then skip what earlier
    rounds and imports left, which otherwise costs each contender in proportion to how
    much it allocates."""
    gc.collect()
    gc.freeze()
    before, cpu = load(), time.process_time()
    rate = run()
    return Sample(rate, (time.process_time() - cpu) / count * 1e6, before, load())


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
    consumer_config: dict[str, Any] | None = None,
) -> float:
    """Messages per second of a dispatcher in a fresh consumer group reading ``count``
    messages of ``topic`` (the service's consumer defaults, overridden by ``consumer_config``).
    """
    kafka = backend or KafkaBackend(bootstrap, consumer_config=consumer_config)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    kafka.declare_queue(queue, topic, create=False)
    counter = StopAfter(count)
    dispatcher = MessageDispatcher(serializers, cache=cache, backend=kafka)
    counter.dispatcher = dispatcher
    dispatcher.attach_consumer(counter)
    dispatcher.consume_loop(queue)
    elapsed = time.perf_counter() - counter.started
    kafka.close()
    return count / elapsed


def raw_rate(
    bootstrap: str,
    topic: str,
    count: int,
    decode: Callable[[bytes], Any],
    config: dict[str, Any] | None = None,
) -> float:
    """Messages per second of a raw confluent-kafka ``consume(1000)`` loop that reads the
    headers and ``decode``s each value: the baseline every ratio is measured against
    (:data:`bench.settings.RAW_CONSUMER`, overridden by ``config``)."""
    consumer = RawConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex}",
            **RAW_CONSUMER,
            **(config or {}),
        }
    )
    consumer.subscribe([topic])
    seen, started = 0, 0.0
    while seen < count:
        for record in consumer.consume(RAW_BATCH, 1.0):
            if record.error() is not None:
                continue
            if not seen:
                started = time.perf_counter()
            record.headers()
            decode(record.value())  # type: ignore[arg-type]
            seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed
