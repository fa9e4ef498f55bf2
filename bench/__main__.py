"""``make bench``: the dispatcher against honest baselines, on one broker, in one run.

Publishes ``--messages`` records (6 partitions) per case to fresh topics, then measures in
``--rounds`` interleaved rounds (every contender once per round, in turn, each in a fresh
consumer group; a ratio compares two contenders of the same round):

* JSON (~200 B into the ``bench.records.Order`` dataclass): the raw confluent-kafka loop at
  its best (:mod:`bench.settings`; headers read; msgspec's typed decoder) and with
  librdkafka's 1000 ms fetch back-off, the dispatcher (``JsonSerializer``, no-op consumer,
  the service's consumer defaults) and with librdkafka's defaults instead, and Quix Streams
  3.28 stateless (:mod:`bench.quix_case`);
* Avro (``payments.DoPayment`` into the dataclass): the raw loop with fastavro, the
  dispatcher with the ``AvroSerializer``, and with a compacted-topic dedup store;

then slow consumers (5 ms each: concurrency 32 vs sequential), end-to-end latency (p99 at
half the max sustained rate vs the raw loop's, and at 5,000 msg/s), exactly-once forwarding
vs at-least-once (throughput ratio, added latency: :mod:`bench.eos_case`), the dedup restore
(keys/s, bytes/key) and the resident memory of one member (steady; 1,000,000 dedup keys).

Each run prints its rate, the process's CPU microseconds per message and the 1-minute load
average before and after it. The table of issue 16 (median, spread, target, met) goes to
stdout, ``bench/results/dispatcher.md`` and ``results.json``; the chart to ``ratios.png``.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local JVM broker started here; the
registry ``SCHEMA_REGISTRY_URL``, else a local Apicurio.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import pathlib
import platform
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient

from bench import (
    avro_case,
    concurrency_case,
    dedup_case,
    eos_case,
    json_case,
    latency_case,
    memory_case,
    plot,
    quix_case,
    restore_case,
)
from bench.report import Row, Table, median, spread
from bench.settings import LIBRDKAFKA_DEFAULTS
from bench.timing import Sample, load, timed
from service.backends.kafka import KafkaBackend

RESULTS = pathlib.Path(__file__).parent / "results"
RESTORE_KEEP = (943_000, 80)  # issue 16's dedup restore figures: keys/s, bytes/key


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


def say(text: str) -> None:
    print(text, flush=True)


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, confluent-kafka {confluent_kafka.version()} "
        f"(librdkafka {confluent_kafka.libversion()[0]})"
    )


class Runs:
    """Every timed run, by contender, in the order of the rounds."""

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = defaultdict(list)

    def run(self, name: str, count: int, run: Callable[[], float]) -> Sample:
        sample = timed(run, count)
        self.samples[name].append(sample)
        say(
            f"  {name:<32} {sample.rate:>10,.0f} msg/s  {sample.cpu_us:6.1f} us CPU/msg  "
            f"{sample.load}"
        )
        return sample

    def add(self, name: str, sample: Sample) -> None:
        self.samples[name].append(sample)
        say(
            f"  {name:<32} {sample.rate:>10,.0f} msg/s  {sample.cpu_us:6.1f} us CPU/msg  "
            f"{sample.load}"
        )

    def ratios(self, ours: str, theirs: str) -> list[float]:
        pairs = zip(self.samples.get(ours, []), self.samples.get(theirs, []), strict=False)
        return [a.rate / b.rate for a, b in pairs]


def throughput(args: argparse.Namespace, bootstrap: str, registry_url: str, runs: Runs) -> None:
    n = args.messages
    json_topic, avro_topic = (f"bench-{k}-{uuid.uuid4().hex[:8]}" for k in ("json", "avro"))
    for topic in (json_topic, avro_topic):
        KafkaBackend(bootstrap, partitions=6).declare_topic(topic)
    started = time.monotonic()
    json_case.publish(bootstrap, json_topic, n)
    avro_case.publish(bootstrap, registry_url, avro_topic, n)
    say(f"published {n:,} JSON and {n:,} Avro records in {time.monotonic() - started:.0f}s")
    for round_ in range(1, args.rounds + 1):
        say(f"round {round_}/{args.rounds}")
        runs.run("json raw", n, lambda: json_case.raw_loop(bootstrap, json_topic, n))
        runs.run(
            "json raw, librdkafka dflt",
            n,
            lambda: json_case.raw_loop(bootstrap, json_topic, n, LIBRDKAFKA_DEFAULTS),
        )
        runs.run("json dispatcher", n, lambda: json_case.dispatcher_loop(bootstrap, json_topic, n))
        runs.run(
            "json dispatcher, librdkafka dflt",
            n,
            lambda: json_case.dispatcher_loop(bootstrap, json_topic, n, LIBRDKAFKA_DEFAULTS),
        )
        if "quix" not in args.skip:
            before, quix = load(), quix_case.rate(bootstrap, json_topic, n)
            if quix is not None:
                runs.add("json quix streams", Sample(quix[0], quix[1], before, load()))
            else:
                say(f"  quix streams: not run ({quix_case.PYTHON} missing: make bench makes it)")
        runs.run("avro raw", n, lambda: avro_case.raw_loop(bootstrap, avro_topic, n))
        runs.run(
            "avro dispatcher",
            n,
            lambda: avro_case.dispatcher_loop(bootstrap, registry_url, avro_topic, n),
        )
        runs.run(
            "avro dispatcher + dedup",
            n,
            lambda: dedup_case.dispatcher_loop(bootstrap, registry_url, avro_topic, n),
        )


def concurrency(args: argparse.Namespace, bootstrap: str, table: Table) -> None:
    topic = f"bench-slow-{uuid.uuid4().hex[:8]}"
    KafkaBackend(bootstrap, partitions=6).declare_topic(topic)
    concurrency_case.publish(bootstrap, topic, 8000)
    gains, in_order = [], True
    for round_ in range(1, args.rounds + 1):
        before = load()
        sequential, _ = concurrency_case.rate(bootstrap, topic, 800, 1)
        concurrent, ordered = concurrency_case.rate(bootstrap, topic, 8000, 32)
        in_order = in_order and ordered
        gains.append(concurrent / sequential)
        say(
            f"  slow consumer round {round_}: sequential {sequential:,.0f}/s, concurrency 32 "
            f"{concurrent:,.0f}/s = {concurrent / sequential:.1f}x, load {before:.1f}->{load():.1f}"
        )
    table.ratio(
        "concurrency 32, 5 ms consumer, vs sequential",
        gains,
        20,
        unit="x",
        detail=f"64 keys, key order; per-key order kept: {in_order}",
    )


def latency(args: argparse.Namespace, bootstrap: str, table: Table) -> None:
    before = load()
    top = latency_case.max_rate(bootstrap, 100_000)
    say(f"  max sustained rate (producer process + dispatcher): {top:,.0f}/s, load {before:.1f}")
    half: list[tuple[latency_case.Latency, latency_case.Latency]] = []
    low: list[tuple[latency_case.Latency, latency_case.Latency]] = []
    for round_ in range(1, args.rounds + 1):
        before = load()
        runs = []
        for rate in (top / 2, 5000):
            ours = latency_case.measure(bootstrap, rate, 5)
            ours_ack = latency_case.ACKS[-1]
            raw = latency_case.raw_measure(bootstrap, rate, int(rate * 5))
            runs.append((ours, raw))
            say(
                f"  latency round {round_} at {rate:,.0f}/s: dispatcher p50 {ours.p50:.1f} / "
                f"p99 {ours.p99:.1f} ms (append->processed p99 {ours.append_p99:.0f}; broker "
                f"ack p99 {ours_ack:.1f}), raw p50 {raw.p50:.1f} / p99 {raw.p99:.1f} ms "
                f"(append->processed p99 {raw.append_p99:.0f}; broker ack p99 "
                f"{latency_case.ACKS[-1]:.1f})"
            )
        half.append(runs[0])
        low.append(runs[1])
        say(f"  latency round {round_}: load {before:.1f}->{load():.1f}")
    acks = latency_case.ACKS[1:]  # after max_rate's

    def row(case: str, pairs: list[Any], field: str, detail: str) -> None:
        ours = [getattr(o, field) for o, _ in pairs]
        raw = [getattr(r, field) for _, r in pairs]
        table.ratio(
            case,
            [o / max(r, 1.0) for o, r in zip(ours, raw, strict=True)],  # ms resolution
            2,
            at_most=True,
            unit="x",
            detail=(
                f"dispatcher p99 {median(ours):.1f} ms ({spread(ours, '{:.1f}')}), raw "
                f"{median(raw):.1f} ms ({spread(raw, '{:.1f}')}){detail}"
            ),
        )

    row(
        "p99 publish->processed at half the max sustained rate, vs raw p99",
        half,
        "p99",
        f"; max {top:,.0f}/s",
    )
    row(
        "p99 append->processed (the consumer's part) at half the max rate, vs raw",
        half,
        "append_p99",
        "; from the broker's append time (LogAppendTime), ms resolution",
    )

    def at_5000(case: str, field: str, detail: str) -> None:
        ours = [getattr(o, field) for o, _ in low]
        raw = median([getattr(r, field) for _, r in low])
        table.ratio(
            case, ours, 10, at_most=True, unit=" ms", detail=f"raw loop {raw:.1f} ms{detail}"
        )

    at_5000(
        "p99 at 5,000 msg/s",
        "p99",
        f"; the broker's own ack p99 (produce->acknowledged) in these runs: "
        f"{spread(acks, '{:.0f}')} ms",
    )
    at_5000(
        "p99 append->processed (the consumer's part) at 5,000 msg/s",
        "append_p99",
        "; ms resolution",
    )


def dedup_and_memory(
    args: argparse.Namespace, bootstrap: str, table: Table, memory: dict[str, Any]
) -> None:
    """The restore (:mod:`bench.restore_case`: the store and a same-work raw loop, each in
    a fresh process, interleaved rounds) and the bytes per key (tracemalloc)."""
    dedup_topic = f"bench-dedup-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    dedup_case.fill(bootstrap, dedup_topic, args.dedup_entries, 6)
    say(f"  filled {args.dedup_entries:,} dedup entries in {time.monotonic() - started:.0f}s")
    runs = restore_case.rounds(bootstrap, dedup_topic, 6, args.rounds)
    ours, raw = runs["service"], runs["raw"]
    rates = [r["rate"] for r in ours]
    ratios = [s["rate"] / r["rate"] for r, s in zip(raw, ours, strict=True)]
    _, per_key = dedup_case.restore(bootstrap, dedup_topic, 6)
    rate = median(rates)
    say(f"  restore: {rate:,.0f} keys/s, {per_key:.0f} bytes/key; vs raw {median(ratios):.2f}")
    keep_rate, keep_bytes = RESTORE_KEEP
    table.add(
        Row(
            "dedup restore: keys/s, bytes/key",
            f"{rate:,.0f} keys/s ({spread(rates, '{:,.0f}')}), {per_key:.0f} B/key",
            f"keep: >= {keep_rate:,} keys/s, <= {keep_bytes} B/key",
            rate >= keep_rate and per_key <= keep_bytes,
            f"{args.dedup_entries:,} keys over 6 partitions; the same-work raw loop "
            f"{median([r['rate'] for r in raw]):,.0f} keys/s, ratio {median(ratios):.2f} "
            f"({spread(ratios)}); bytes/key by tracemalloc",
        )
    )
    memory["dedup"] = {
        "keys": ours[0]["keys"],
        "before_mb": median([r["before_mb"] for r in ours]),
        "rss_mb": median([r["rss_mb"] for r in ours]),
        "peak_mb": max(r["peak_mb"] for r in ours),
    }
    say(f"  memory, dedup keys restored: {memory['dedup']}")


def steady_memory(bootstrap: str, topic: str, count: int, memory: dict[str, Any]) -> None:
    memory["steady"] = memory_case.child("steady", bootstrap, topic, str(count))
    say(f"  memory, steady: {memory['steady']}")


_OURS = ("bench-json-", "bench-avro-", "bench-slow-", "bench-latency-", "bench-memory-",
         "bench-dedup-", "bench-eos-")  # fmt: skip


def _ours(topic: str) -> bool:
    """A topic this bench makes (dedup stores are ``bench-<hex8>.dedup``)."""
    return topic.startswith(_OURS) or (topic.startswith("bench-") and topic.endswith(".dedup"))


def _topics(admin: AdminClient) -> set[str]:
    return set(admin.list_topics(timeout=30).topics)


def clean_up(admin: AdminClient, before: set[str]) -> None:
    """Delete the topics this run made (1,000,000 dedup entries and more per run)."""
    made = sorted(t for t in _topics(admin) - before if _ours(t))
    if not made:
        return
    for topic, future in admin.delete_topics(made, operation_timeout=30).items():
        try:
            future.result(timeout=60)
        except Exception as exc:  # noqa: BLE001 - best effort: say which and go on
            say(f"  could not delete topic {topic}: {exc}")
    say(f"deleted the {len(made)} topics of this run")


def throughput_rows(runs: Runs, table: Table) -> list[tuple[str, list[float], float]]:
    def cpu(name: str) -> str:
        samples = runs.samples.get(name, [])
        return f"{median([s.cpu_us for s in samples]):.1f}" if samples else "-"

    def cpu_ratio(ours: str, theirs: str) -> str:
        """Their CPU per message over ours: the throughput ratio a saturated CPU would give,
        far less sensitive to the machine's load than the rates."""
        a, b = runs.samples.get(ours, []), runs.samples.get(theirs, [])
        if not a or not b:
            return "-"
        return f"{median([s.cpu_us for s in b]) / median([s.cpu_us for s in a]):.2f}"

    def rate(name: str) -> str:
        samples = runs.samples.get(name, [])
        return f"{median([s.rate for s in samples]):,.0f}" if samples else "-"

    cases = [
        ("JSON, no-op consumer, vs same-work raw loop", "JSON vs raw", "json dispatcher",
         "json raw", 0.8),
        ("Avro into dataclasses, vs same-work raw loop", "Avro vs raw", "avro dispatcher",
         "avro raw", 0.8),
        ("Avro + compacted-topic dedup, vs the same raw loop", "Avro+dedup vs raw",
         "avro dispatcher + dedup", "avro raw", 0.6),
        ("vs Quix Streams on the same records, stateless", "JSON vs Quix Streams",
         "json dispatcher", "json quix streams", 2.0),
    ]  # fmt: skip
    chart = []
    for case, label, ours, theirs, target in cases:
        ratios = runs.ratios(ours, theirs)
        table.ratio(
            case,
            ratios,
            target,
            unit="x" if "Quix" in case else "",
            detail=(
                f"msg/s {rate(ours)} vs {rate(theirs)}; CPU us/msg {cpu(ours)} vs {cpu(theirs)}"
                f" (CPU ratio {cpu_ratio(ours, theirs)})"
            ),
        )
        chart.append((label, ratios, target))
    for who in ("dispatcher", "raw"):
        ratios = runs.ratios(f"json {who}", f"json {who}, librdkafka dflt")
        table.add(
            Row(
                f"service consumer defaults vs librdkafka's ({who} loop, JSON)",
                f"{median(ratios):.2f}x ({spread(ratios)}x)" if ratios else "not run",
                "> 1 (informative)",
                None,
                f"msg/s {rate(f'json {who}')} vs {rate(f'json {who}, librdkafka dflt')}"
                + ("; raw: fetch.queue.backoff.ms 10 vs 1000" if who == "raw" else ""),
            )
        )
    return chart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dedup-entries", type=int, default=1_000_000)
    parser.add_argument("--keep-topics", action="store_true", help="leave the topics this run made")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to leave out: "
        "throughput,quix,concurrency,latency,eos,dedup,memory",
    )
    args = parser.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    # the latency topics' dead-letter size warning is about topics made for one run
    logging.getLogger("service.backends.kafka.backend").setLevel(logging.ERROR)
    started, first_load = time.monotonic(), os.getloadavg()
    say(f"machine: {machine()}; load (1/5/15 min) {first_load[0]:.1f}/{first_load[1]:.1f}/"
        f"{first_load[2]:.1f}")  # fmt: skip
    runs, table, memory = Runs(), Table(), {}
    with broker() as bootstrap, registry() as registry_url:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        existing = _topics(admin)
        chart: list[tuple[str, list[float], float]] = []
        if "throughput" not in args.skip:
            throughput(args, bootstrap, registry_url, runs)
            chart = throughput_rows(runs, table)
        if "concurrency" not in args.skip:
            say("slow consumers")
            concurrency(args, bootstrap, table)
        if "latency" not in args.skip:
            say("latency")
            latency(args, bootstrap, table)
        if "eos" not in args.skip:
            say("exactly-once")
            eos_case.run(bootstrap, args.messages, args.rounds, table, say)
        if "memory" not in args.skip:
            say("memory")
            topic = f"bench-memory-{uuid.uuid4().hex[:8]}"
            KafkaBackend(bootstrap, partitions=6).declare_topic(topic)
            json_case.publish(bootstrap, topic, args.messages)
            steady_memory(bootstrap, topic, args.messages, memory)
        if "dedup" not in args.skip:
            say("dedup")
            dedup_and_memory(args, bootstrap, table, memory)
        if not args.keep_topics:
            clean_up(admin, existing)
    if "steady" in memory:
        m = memory["steady"]
        table.add(Row(
            "memory: one member at steady state (RSS)",
            f"{m['rss_mb']:.0f} MiB", "reported", None,
            f"JSON case after {args.messages:,} records, prefetch full; peak {m['peak_mb']:.0f} "
            f"MiB; {m['start_mb']:.0f} MiB before subscribing",
        ))  # fmt: skip
    if "dedup" in memory:
        m = memory["dedup"]
        table.add(Row(
            f"memory: one member with {m['keys']:,} dedup keys restored (RSS)",
            f"{m['rss_mb']:.0f} MiB", "reported", None,
            f"{m['before_mb']:.0f} MiB before the restore; peak {m['peak_mb']:.0f} MiB "
            "(the highest of the rounds)",
        ))  # fmt: skip
    last_load = os.getloadavg()
    header = [
        f"# Dispatcher benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine()}. Load (1/5/15 min) at the start {first_load[0]:.1f}/"
        f"{first_load[1]:.1f}/{first_load[2]:.1f}, at the end {last_load[0]:.1f}/"
        f"{last_load[1]:.1f}/{last_load[2]:.1f}; {time.monotonic() - started:.0f} s.",
        f"Command: `{' '.join(['python -m bench', *sys.argv[1:]])}`; {args.messages:,} records "
        f"per case over 6 partitions, {args.rounds} interleaved rounds.",
        "",
    ]
    runs_table = [
        "",
        "## Every run (rate; CPU of the whole process per message; 1-minute load before->after)",
        "",
        "| contender | msg/s per round | CPU us/msg per round | load per round |",
        "|---|---|---|---|",
    ]
    for name, samples in runs.samples.items():
        runs_table.append(
            f"| {name} | {', '.join(f'{s.rate:,.0f}' for s in samples)} | "
            f"{', '.join(f'{s.cpu_us:.1f}' for s in samples)} | "
            f"{', '.join(f'{s.load_before:.1f}->{s.load_after:.1f}' for s in samples)} |"
        )
    lines = [*header, *table.markdown(), *runs_table]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dispatcher.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "results.json").write_text(
        json.dumps(
            {
                "when": datetime.datetime.now(datetime.UTC).isoformat(),
                "machine": machine(),
                "load_start": first_load,
                "load_end": last_load,
                "args": {
                    k: v if not isinstance(v, set) else sorted(v) for k, v in vars(args).items()
                },
                "table": [vars(r) for r in table.rows],
                "runs": {k: [vars(s) for s in v] for k, v in runs.samples.items()},
                "memory": memory,
            },
            indent=2,
        )
    )
    if chart:
        plot.ratios_png(RESULTS / "ratios.png", chart)
    say("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
