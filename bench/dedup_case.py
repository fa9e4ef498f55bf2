"""The dedup cases: restore rate and bytes per key, and throughput with the store on."""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
import uuid

from bench import avro_case
from bench.timing import dispatcher_rate
from service import CompactedTopicCache
from service.backends.kafka import KafkaBackend
from service.backends.kafka.dedup import digest


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


def store_rate(bootstrap: str, count: int, cache_type: type[CompactedTopicCache]) -> float:
    """store() + get() calls per second on owned partitions, as the dispatcher makes them."""
    backend = KafkaBackend(bootstrap)
    cache = cache_type(backend, f"bench-{uuid.uuid4().hex[:8]}.dedup", partitions=6)
    cache.on_assigned([("input", p) for p in range(6)])
    names = [f"bench.Consumer.{uuid.uuid4().hex}" for _ in range(count)]
    started = time.perf_counter()
    for i, name in enumerate(names):
        partition = i % 6
        cache.get(name, partition=partition)
        cache.store(name, name, partition=partition)
        if i % 500 == 0:
            cache.poll()
    elapsed = time.perf_counter() - started
    cache.flush(60)
    backend.close()
    return count / elapsed


def main() -> None:
    """``python -m bench.dedup_case``: only the dedup figures, on the broker of the env."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dedup-entries", type=int, default=1_000_000)
    args = parser.parse_args()
    bootstrap, registry_url = (
        os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        os.environ["SCHEMA_REGISTRY_URL"],
    )
    topic = f"bench-avro-{uuid.uuid4().hex[:8]}"
    KafkaBackend(bootstrap, partitions=6).declare_topic(topic)
    avro_case.publish(bootstrap, registry_url, topic, args.messages)
    for round_ in range(1, args.rounds + 1):
        raw = avro_case.raw_loop(bootstrap, topic, args.messages)
        ours = dispatcher_loop(bootstrap, registry_url, topic, args.messages)
        stores = store_rate(bootstrap, args.messages, CompactedTopicCache)
        print(
            f"round {round_}: raw {raw:,.0f} msg/s, dispatcher+dedup {ours:,.0f} msg/s, "
            f"ratio {ours / raw:.2f}; store+get {stores:,.0f}/s",
            flush=True,
        )
    dedup_topic = f"bench-dedup-{uuid.uuid4().hex[:8]}"
    fill(bootstrap, dedup_topic, args.dedup_entries, 6)
    rate, per_key = restore(bootstrap, dedup_topic, 6)
    print(f"restore of {args.dedup_entries:,} entries: {rate:,.0f} keys/s, {per_key:.0f} bytes/key")


if __name__ == "__main__":
    main()
