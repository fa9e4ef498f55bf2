"""Every core of a host: ``kafka-dispatch run --processes N`` with a CPU-bound consumer.

Runs the service as users run it (``python -m service run -c <config> --processes N``, a
fresh consumer group each time) for N = 1 (the single-process path, no supervisor) and
N = 2, in ``--rounds`` interleaved rounds. Each run gets a fresh, empty topic of 6
partitions; once every member holds partitions (the group's description), ``--messages``
JSON ``Order`` records are published round-robin over the partitions, so every member
starts with the same backlog. (Publishing before the start let the first member work
alone until the second joined; the second then worked alone at the end: ~1.25 cores of 2
on a quiet machine.) The consumer burns :data:`BURN_SECONDS` of CPU per message in pure
Python, measured on its thread's CPU clock (not the wall clock: on a loaded machine a
wall-clock busy wait would finish while the process is not even running, and flatter the
parallel case).

Each run reads the service's ``/metrics`` every :data:`POLL_SECONDS` and reports:

* the rate from the end of publishing (and at least 10% processed) to 90% processed: the
  group join, the publishing (the producer shares the cores) and the last partitions' tail
  are not timed;
* the CPU the service's processes used in that window (supervisor and children, librdkafka's
  threads included, from /proc) per message and per second (how many cores it actually had:
  on a shared machine the scheduler decides);
* the 1-minute load average before and after: on a shared machine a rate means little
  without it.

Run: ``python -m bench.processes_case [--messages 40000] [--rounds 3]`` (the broker is
``KAFKA_BOOTSTRAP_SERVERS``). Prints one line per run, then the median ratio and the spread;
``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from bench.records import MANIFEST
from service import Consumer

ROOT = pathlib.Path(__file__).resolve().parents[1]
BURN_SECONDS = 200e-6
PARTITIONS = 6
TARGET = 1.7
POLL_SECONDS = 1.0  # a scrape costs the service CPU too: poll no more than needed


class BurnConsumer(Consumer):
    """Burns :data:`BURN_SECONDS` of its thread's CPU per message in pure Python."""

    def process(self, message: Any, **kwargs: Any) -> None:
        """Spin on integer arithmetic until the thread's CPU clock moved by the budget."""
        end = time.thread_time() + BURN_SECONDS
        x = 0
        while time.thread_time() < end:
            for i in range(40):
                x += i * i


@dataclass(frozen=True)
class Run:
    """One run of the service: N processes over the whole topic."""

    processes: int
    rate: float
    cpu_us_per_message: float
    cores_used: float
    load_before: float
    load_after: float


def _config(path: pathlib.Path, bootstrap: str, topic: str, port: int, group: str) -> pathlib.Path:
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "partitions": PARTITIONS},
        "messages": {"bench.records:Order": "json"},
        "queues": {group: {"topics": [topic], "consumers": ["bench.processes_case:BurnConsumer"]}},
        "service": {"metrics_port": port, "metrics_host": "127.0.0.1", "log_level": "WARNING"},
    }
    path.write_text(json.dumps(config))
    return path


def _processed(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "kafka_dispatch_processed_messages_total"
    )


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants, from /proc."""
    total = 0.0
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return 0.0
    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total + sum(_tree_cpu(int(child)) for child in children)


def publish(bootstrap: str, topic: str, count: int) -> None:
    """``count`` JSON ``Order`` records, round-robin over the partitions (equal shares: with
    keyed records some partitions hold more, and the member that has them finishes last)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    body: dict[str, Any] = {"order_id": "", "amount": 0, "currency": "EUR", "note": "x" * 120}
    for i in range(count):
        body["order_id"], body["amount"] = f"order-{i:08d}", i
        headers: list[tuple[str, str | bytes | None]] = [
            ("serializer_id", b"1"),
            ("manifest", MANIFEST.encode()),
            ("message_id", uuid.uuid4().hex.encode()),
        ]
        while True:
            try:
                producer.produce(
                    topic, json.dumps(body).encode(), partition=i % PARTITIONS, headers=headers
                )
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise SystemExit("publishing did not complete")


def _members_working(admin: AdminClient, group: str) -> int:
    """How many members of ``group`` hold at least one partition."""
    try:
        found = admin.describe_consumer_groups([group], request_timeout=5)[group].result(10)
    except KafkaException:
        return 0
    return sum(1 for member in found.members if member.assignment.topic_partitions)


def _autogroup() -> bool:
    try:
        return pathlib.Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_once(bootstrap: str, count: int, processes: int, workdir: str) -> Run | None:
    """Run the service with ``processes`` on a fresh topic, publish ``count`` records once
    every member holds partitions, and time it; ``None`` when too little was left to time."""
    port, group = _free_port(), f"bench-procs-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = group
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    path = pathlib.Path(workdir) / f"{group}.yaml"
    _config(path, bootstrap, topic, port, group)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "service", "run", "-c", str(path)]
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    service = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [*command, "--processes", str(processes)], cwd=ROOT, env=env
    )
    samples: list[tuple[float, float, float]] = []  # (time, processed, CPU seconds)
    try:
        deadline = started + 600
        while _members_working(admin, group) < processes:
            if time.monotonic() > deadline or service.poll() is not None:
                raise SystemExit(f"--processes {processes}: the group never settled")
            time.sleep(0.2)
        publish(bootstrap, topic, count)
        published = time.monotonic()
        while not samples or samples[-1][1] < count:
            if time.monotonic() > deadline or service.poll() is not None:
                raise SystemExit(f"--processes {processes}: {samples[-1:]} of {count} processed")
            time.sleep(POLL_SECONDS)
            try:
                sample = (time.monotonic(), _processed(port), _tree_cpu(service.pid))
            except OSError:
                continue  # not serving yet
            samples.append(sample)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(60)
        with contextlib.suppress(KafkaException):
            admin.delete_topics([topic])[topic].result(30)
    window = [s for s in samples if s[0] >= published and s[1] >= count * 0.1]
    if not window or window[0][1] > count * 0.6:
        print(f"--processes {processes}: over 60% processed while publishing: again", flush=True)
        return None
    low, low_count, low_cpu = window[0]
    high, high_count, high_cpu = next(s for s in samples if s[1] >= count * 0.9)
    seconds, messages, cpu = max(high - low, 1e-3), high_count - low_count, high_cpu - low_cpu
    return Run(
        processes,
        messages / seconds,
        cpu / messages * 1e6,
        cpu / seconds,
        load_before,
        os.getloadavg()[0],
    )


def main(argv: list[str] | None = None) -> int:
    """Run the interleaved rounds, print the figures; 0 when the target is met."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here")
    args = parser.parse_args(argv)
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    print(
        f"{args.messages} records per run on a fresh topic ({PARTITIONS} partitions), "
        f"{os.cpu_count()} cores"
    )
    if _autogroup():
        print(
            "kernel.sched_autogroup_enabled=1: the scheduler shares the CPU between sessions, "
            "so on a busy machine the service's processes (one session) share one session's "
            "share: compare the cores each run was given"
        )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(1, args.rounds + 1):
            for processes in (1, 2) if round_ % 2 else (2, 1):
                for _ in range(3):
                    run = run_once(bootstrap, args.messages, processes, workdir)
                    if run is not None:
                        break
                else:
                    raise SystemExit("the group never settled in time: add --messages")
                runs.append(run)
                print(
                    f"round {round_} processes {processes}: {run.rate:,.0f} msg/s, "
                    f"{run.cpu_us_per_message:.0f} us CPU/msg, {run.cores_used:.2f} cores, "
                    f"load {run.load_before:.1f}->{run.load_after:.1f}",
                    flush=True,
                )
    one = [r.rate for r in runs if r.processes == 1]
    two = [r.rate for r in runs if r.processes == 2]
    ratios = [b / a for a, b in zip(one, two, strict=True)]
    ratio = statistics.median(ratios)
    cores = statistics.median(
        b.cores_used / a.cores_used
        for a, b in zip(
            [r for r in runs if r.processes == 1],
            [r for r in runs if r.processes == 2],
            strict=True,
        )
    )
    cpu_one = statistics.median(r.cpu_us_per_message for r in runs if r.processes == 1)
    cpu_two = statistics.median(r.cpu_us_per_message for r in runs if r.processes == 2)
    print(
        f"2 processes / 1: median {ratio:.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios)}), "
        f"target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}; "
        f"load {min(r.load_before for r in runs):.1f}-{max(r.load_after for r in runs):.1f}\n"
        f"cores the scheduler gave: 2 processes / 1 = {cores:.2f}x; CPU per message "
        f"{cpu_one:.0f} us (1) vs {cpu_two:.0f} us (2): with two free cores the rate would "
        f"scale by at most {2 * cpu_one / cpu_two:.2f}x"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"runs": [asdict(r) for r in runs], "ratio": ratio}, indent=1) + "\n"
        )
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
