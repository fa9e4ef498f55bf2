"""``make bench``: raw confluent-kafka loop vs MessageDispatcher on the same data.

Publishes N JSON messages (~200 bytes, 6 partitions) to a fresh topic, then measures in the
same run, each on a fresh consumer group:

(a) raw: ``Consumer.consume(1000)``, read value and headers, ``json.loads``;
(b) ``MessageDispatcher`` on ``KafkaBackend`` with one no-op consumer;

and the same pair for Avro (``payments.DoPayment``, Confluent wire format): raw = fastavro
decode with a cached schema, ours = the dispatcher with the ``AvroSerializer``.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local JVM broker started here; the
registry ``SCHEMA_REGISTRY_URL``, else a local Apicurio. Results go to stdout and
``bench/results/dispatcher.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import tempfile
import uuid
from collections.abc import Iterator

from confluent_kafka import Producer

from bench import avro_case, concurrency_case, dedup_case, latency_case, plot
from bench.timing import dispatcher_rate, raw_rate
from service import JsonSerializer, SerializerRegistry
from service.backends.kafka import KafkaBackend

RESULTS = pathlib.Path(__file__).parent / "results"


@contextlib.contextmanager
def registry() -> Iterator[str]:
    external = os.environ.get("SCHEMA_REGISTRY_URL")
    if external:
        yield external
        return
    from tests.support.local_brokers import local_schema_registry

    with tempfile.TemporaryDirectory() as tmp, local_schema_registry(pathlib.Path(tmp)) as url:
        yield url


@contextlib.contextmanager
def broker() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from tests.support.local_brokers import local_kafka

    with tempfile.TemporaryDirectory() as tmp, local_kafka(pathlib.Path(tmp)) as bootstrap:
        yield bootstrap


def publish(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    body = {"order_id": "", "amount": 0, "currency": "EUR", "note": "x" * 120}
    for i in range(count):
        body["order_id"], body["amount"] = f"order-{i:08d}", i
        headers = [
            ("serializer_id", b"1"),
            ("manifest", b"dict"),
            ("message_id", uuid.uuid4().hex.encode()),
        ]
        while True:
            try:
                producer.produce(topic, json.dumps(body).encode(), f"k{i % 64}", headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise SystemExit("publishing did not complete")


def raw_loop(bootstrap: str, topic: str, count: int) -> float:
    """The raw baseline for JSON: ``json.loads`` of each value."""
    return raw_rate(bootstrap, topic, count, json.loads)


def dispatcher_loop(bootstrap: str, topic: str, count: int) -> float:
    """The dispatcher with the JsonSerializer and a no-op consumer."""
    return dispatcher_rate(
        bootstrap, topic, count, SerializerRegistry({"serializers": {"json": JsonSerializer}})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dedup-entries", type=int, default=1_000_000)
    args = parser.parse_args()
    rows: list[tuple[str, int, float, float]] = []
    with broker() as bootstrap, registry() as registry_url:
        json_topic, avro_topic = (f"bench-{k}-{uuid.uuid4().hex[:8]}" for k in ("json", "avro"))
        for topic in (json_topic, avro_topic):
            KafkaBackend(bootstrap, partitions=6).declare_topic(topic)
        publish(bootstrap, json_topic, args.messages)
        avro_case.publish(bootstrap, registry_url, avro_topic, args.messages)
        for round_ in range(1, args.rounds + 1):
            raw = raw_loop(bootstrap, json_topic, args.messages)
            ours = dispatcher_loop(bootstrap, json_topic, args.messages)
            rows.append(("json", round_, raw, ours))
            raw = avro_case.raw_loop(bootstrap, avro_topic, args.messages)
            ours = avro_case.dispatcher_loop(bootstrap, registry_url, avro_topic, args.messages)
            rows.append(("avro", round_, raw, ours))
            ours = dedup_case.dispatcher_loop(bootstrap, registry_url, avro_topic, args.messages)
            rows.append(("avro+dedup", round_, raw, ours))
            for case, r, a, b in rows[-3:]:
                print(
                    f"{case} round {r}: raw {a:,.0f} msg/s, dispatcher {b:,.0f} msg/s, "
                    f"ratio {b / a:.2f}",
                    flush=True,
                )
        slow_topic = f"bench-slow-{uuid.uuid4().hex[:8]}"
        KafkaBackend(bootstrap, partitions=6).declare_topic(slow_topic)
        concurrency_case.publish(bootstrap, slow_topic, 8000)
        sequential, _ = concurrency_case.rate(bootstrap, slow_topic, 800, 1)
        concurrent, in_order = concurrency_case.rate(bootstrap, slow_topic, 8000, 32)
        print(f"slow consumer: sequential {sequential:,.0f}/s, concurrency 32 {concurrent:,.0f}/s")
        top = latency_case.max_rate(bootstrap, 100_000)
        p50, p99, _ = latency_case.measure(bootstrap, top / 2, 5)
        raw_p50, raw_p99 = latency_case.raw_measure(bootstrap, top / 2, int(top / 2 * 5))
        low_p50, low_p99, _ = latency_case.measure(bootstrap, 5000, 5)
        print(f"latency at {top / 2:,.0f}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
        dedup_topic = f"bench-dedup-{uuid.uuid4().hex[:8]}"
        dedup_case.fill(bootstrap, dedup_topic, args.dedup_entries, 6)
        restore_rate, bytes_per_key = dedup_case.restore(bootstrap, dedup_topic, 6)
    RESULTS.mkdir(exist_ok=True)
    lines = [
        f"# Dispatcher vs raw confluent-kafka ({args.messages:,} messages, 6 partitions)",
        "",
        "| case | round | raw msg/s | dispatcher msg/s | ratio |",
        "|---|---|---|---|---|",
        *(f"| {c} | {r} | {a:,.0f} | {b:,.0f} | {b / a:.2f} |" for c, r, a, b in rows),
    ]
    targets = {"json": 0.6, "avro": 0.6, "avro+dedup": 0.45}
    medians: list[tuple[str, float, float]] = []
    for case, target in targets.items():
        ratios = sorted(b / a for c, _, a, b in rows if c == case)
        medians.append((case, ratios[len(ratios) // 2], target))
        lines.append(f"\n{case}: median ratio {ratios[len(ratios) // 2]:.2f} (target >= {target})")
    plot.ratios_png(RESULTS / "ratios.png", medians)
    lines += [
        f"\nslow consumer (5 ms/message, 64 keys, key order): sequential {sequential:,.0f}/s, "
        f"concurrency 32: {concurrent:,.0f}/s = {concurrent / sequential:.1f}x "
        f"(target >= 20x); per-key order kept: {in_order}",
        f"\nend-to-end latency (producer in its own process; max sustained {top:,.0f}/s): at "
        f"{top / 2:,.0f}/s dispatcher p50 {p50:.1f} ms / p99 {p99:.1f} ms, raw confluent-kafka "
        f"p50 {raw_p50:.1f} ms / p99 {raw_p99:.1f} ms (target p99 <= 25 ms); at 5,000/s "
        f"dispatcher p50 {low_p50:.1f} ms / p99 {low_p99:.1f} ms",
    ]
    lines.append(
        f"\ndedup restore of {args.dedup_entries:,} entries: {restore_rate:,.0f} keys/s "
        f"(target >= 200,000), {bytes_per_key:.0f} bytes/key (target <= 150)"
    )
    (RESULTS / "dispatcher.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
