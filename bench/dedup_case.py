"""The dedup cases: restore rate and bytes per key, and throughput with the store on."""

from __future__ import annotations

import gc
import time
import tracemalloc
import uuid

from bench import avro_case
from bench.timing import dispatcher_rate
from service import CompactedTopicCache
from service.backends.kafka import KafkaBackend
from service.dedup.kafka import digest


def fill(bootstrap: str, topic: str, entries: int, partitions: int) -> None:
    """Write ``entries`` dedup entries the way the store does, spread over ``partitions``."""
    backend = KafkaBackend(bootstrap)
    cache = CompactedTopicCache(backend, topic, partitions=partitions)
    producer = backend.new_producer({"linger.ms": 50, "batch.size": 1_000_000})
    expiry = int((time.time() + 3600) * 1000).to_bytes(8, "big")
    for i in range(entries):
        while True:
            try:
                producer.produce(
                    topic, expiry, digest(f"bench.Consumer.{i}"), partition=i % partitions
                )
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise SystemExit("filling the dedup topic did not complete")
    del cache


def restore(bootstrap: str, topic: str, partitions: int) -> tuple[float, float]:
    """(keys per second, bytes per key) of restoring every partition of ``topic``."""
    backend = KafkaBackend(bootstrap)
    timed = CompactedTopicCache(backend, topic, partitions=partitions)
    started = time.perf_counter()
    timed.on_assigned([("input", p) for p in range(partitions)])
    rate = len(timed) / (time.perf_counter() - started)
    keys = len(timed)
    del timed
    gc.collect()
    tracemalloc.start()
    measured = CompactedTopicCache(backend, topic, partitions=partitions)
    before = tracemalloc.get_traced_memory()[0]
    measured.on_assigned([("input", p) for p in range(partitions)])
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return rate, (after - before) / keys


def dispatcher_loop(bootstrap: str, registry_url: str, topic: str, count: int) -> float:
    """Avro dispatcher throughput with a fresh CompactedTopicCache."""
    backend = KafkaBackend(bootstrap)
    cache = CompactedTopicCache(backend, f"bench-{uuid.uuid4().hex[:8]}.dedup", partitions=6)
    return dispatcher_rate(
        bootstrap, topic, count, avro_case.serializers(registry_url), cache, backend
    )
