"""The dedup restore: keys/s and peak memory against a raw confluent-kafka loop at its best.

``python -m bench.restore_case`` fills a dedup topic with ``--entries`` entries (6
partitions, written the way the store writes them), then runs ``--rounds`` interleaved
rounds of two contenders, each in a fresh child process (so its resident size is its own):

* ``raw``: a bare confluent-kafka consumer assigned every partition from the beginning,
  ``consume(10_000)`` until each partition's end (its high watermark when assigned),
  doing the same work as the store: each record's key into a dict with the expiry decoded
  (``int.from_bytes``) as its value. Settings at its best (:data:`RAW_CONFIG`): librdkafka's
  prefetch (100,000 records per partition, 64 MiB) and a 10 ms fetch back-off;
* ``service``: ``CompactedTopicCache.on_assigned()`` of every partition, i.e. the store's
  own restore (``service/backends/kafka/dedup_restore.py``), metadata check included.

Each child reports the keys it holds, the seconds from assignment to the last key, and its
resident size (VmRSS) before and after and its peak (VmHWM). The parent prints every run,
the median and spread of each contender's rate, the median ratio of rates within a round,
and the 1-minute load before and after every run. ``--config JSON`` overrides the service's
restore consumer settings (e.g. to try prefetch bounds); ``--topic`` reuses a filled topic;
a topic filled here is deleted at the end unless ``--keep-topic``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.report import median, spread
from bench.timing import load

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = 500
"""Records per ``consume()`` call of the raw loop: as the store's (the garbage collector
stays idle; 10,000 costs ~15%)."""
WAIT = 0.1
RAW_CONFIG: dict[str, Any] = {
    "enable.auto.commit": False,
    "fetch.queue.backoff.ms": 10,
    "enable.partition.eof": True,
}
"""The raw loop's librdkafka settings: its prefetch left at librdkafka's (100,000 records or
64 MiB per partition: the most it could want), the back-off lowered, an end-of-partition
event. Like the store, it asks the last ``consume()`` for no more than is left, so neither
waits out a timeout at the end."""


def _status() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MiB."""
    fields: dict[str, float] = {}
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def raw(bootstrap: str, topic: str, partitions: int) -> dict[str, Any]:
    """The child's side of ``raw`` (see the module docstring)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex}", **RAW_CONFIG}
    )
    before, cpu = _status()["VmRSS"], time.process_time()
    started = time.perf_counter()
    ends, starts = {}, {}
    for p in range(partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            ends[p], starts[p] = high, low
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    maps: dict[int, dict[bytes, int]] = {p: {} for p in ends}
    expiries: dict[bytes, int] = {}
    eof = KafkaError._PARTITION_EOF
    left = sum(ends[p] - starts[p] for p in ends)
    while ends:
        for record in consumer.consume(min(BATCH, left), WAIT):
            error = record.error()
            if error is not None:
                if error.code() == eof:
                    ends.pop(record.partition(), None)  # type: ignore[arg-type]
                continue
            key, value = record.key(), record.value()
            if value is None:
                maps[record.partition()].pop(key, None)  # type: ignore[index,arg-type]
                continue
            expiry = expiries.get(value)
            if expiry is None:
                expiry = expiries[value] = int.from_bytes(value, "big")
            maps[record.partition()][key] = expiry  # type: ignore[index]
        left = 0
        for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
            if tp.offset >= ends[tp.partition]:
                del ends[tp.partition]
            else:
                left += ends[tp.partition] - max(tp.offset, starts[tp.partition])
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    consumer.close()
    keys = sum(len(m) for m in maps.values())
    return {"keys": keys, "seconds": elapsed, "cpu": cpu, "before_mb": before, **_end()}


def service(bootstrap: str, topic: str, partitions: int, config: str = "") -> dict[str, Any]:
    """The child's side of ``service`` (see the module docstring)."""
    from service import CompactedTopicCache
    from service.backends.kafka import KafkaBackend, dedup_restore

    if config:
        dedup_restore.RESTORE_CONSUMER_CONFIG.update(json.loads(config))
    cache = CompactedTopicCache(KafkaBackend(bootstrap), topic, partitions=partitions)
    before, cpu = _status()["VmRSS"], time.process_time()
    started = time.perf_counter()
    cache.on_assigned([("input", p) for p in range(partitions)])
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {"keys": len(cache), "seconds": elapsed, "cpu": cpu, "before_mb": before, **_end()}


def _end() -> dict[str, float]:
    status = _status()
    return {"rss_mb": status["VmRSS"], "peak_mb": status["VmHWM"]}


def child(*args: str) -> dict[str, Any]:
    """Run this module with ``args`` in a fresh interpreter; its JSON answer."""
    done = subprocess.run(  # noqa: S603 - our own module and arguments
        [sys.executable, "-m", "bench.restore_case", *args],
        cwd=ROOT,
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def rounds(
    bootstrap: str, topic: str, partitions: int, count: int, config: str = ""
) -> dict[str, list[dict[str, Any]]]:
    """``count`` interleaved rounds of both contenders; every run, by contender."""
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "service": []}
    for round_ in range(1, count + 1):
        for name in ("raw", "service"):
            before = load()
            extra = [config] if name == "service" and config else []
            run = child(name, bootstrap, topic, str(partitions), *extra)
            run["rate"] = run["keys"] / run["seconds"]
            run["load"] = f"{before:.1f}->{load():.1f}"
            runs[name].append(run)
            print(
                f"round {round_} {name:<8} {run['rate']:>10,.0f} keys/s  {run['keys']:,} keys "
                f"in {run['seconds']:.2f}s, {run['cpu']:.2f}s CPU  RSS {run['before_mb']:.0f}->"
                f"{run['rss_mb']:.0f} MiB, peak {run['peak_mb']:.0f} MiB  load {run['load']}",
                flush=True,
            )
    return runs


def summary(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Medians, spreads and the within-round ratio, one line each."""
    ratios = [s["rate"] / r["rate"] for r, s in zip(runs["raw"], runs["service"], strict=True)]
    lines = []
    for name, samples in runs.items():
        rates = [s["rate"] for s in samples]
        peaks = [s["peak_mb"] - s["before_mb"] for s in samples]
        peak, after, cpu = (median([s[k] for s in samples]) for k in ("peak_mb", "rss_mb", "cpu"))
        lines.append(
            f"{name}: {median(rates):,.0f} keys/s ({spread(rates, '{:,.0f}')}), {cpu:.2f}s CPU; "
            f"peak RSS {peak:.0f} MiB, +{median(peaks):.0f} MiB over the start "
            f"({spread(peaks, '{:.0f}')}); {after:.0f} MiB after"
        )
    lines.append(f"service / raw: {median(ratios):.2f} ({spread(ratios)})")
    return "\n".join(lines)


def main() -> None:
    """``python -m bench.restore_case``: the restore figures, on the broker of the env."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--topic", help="a dedup topic filled before (skip the fill)")
    parser.add_argument("--config", default="", help="JSON overrides of the restore consumer")
    parser.add_argument("--keep-topic", action="store_true", help="leave the filled topic")
    args = parser.parse_args()
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    topic = args.topic
    if topic is None:
        from bench.dedup_case import fill

        topic = f"bench-dedup-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        fill(bootstrap, topic, args.entries, 6)
        print(f"filled {topic} with {args.entries:,} entries in {time.monotonic() - started:.0f}s")
    try:
        la = os.getloadavg()
        print(f"load (1/5/15 min) at the start {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f}", flush=True)
        runs = rounds(bootstrap, topic, 6, args.rounds, args.config)
        la = os.getloadavg()
        print(summary(runs))
        print(f"load (1/5/15 min) at the end {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f}")
    finally:
        if args.topic is None and not args.keep_topic:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": bootstrap})
            admin.delete_topics([topic], operation_timeout=30)[topic].result(60)
            print(f"deleted {topic} (--keep-topic keeps it)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("raw", "service"):
        mode, rest = sys.argv[1], sys.argv[2:]
        if mode == "raw":
            print(json.dumps(raw(rest[0], rest[1], int(rest[2]))))
        else:
            print(json.dumps(service(rest[0], rest[1], int(rest[2]), *rest[3:])))
    else:
        main()
