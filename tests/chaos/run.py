"""The fault suite: 3 service processes, kills, graceful stops, broker outages, failures.

``python -m tests.chaos.run --messages 100000`` (``make chaos``); CI runs a smaller size.
Prints a table of the figures and exits non-zero if anything was lost, if a dead letter is
missing, if duplicates exceed kills x in-flight limit, or if offsets stop short.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from service import Publisher
from service.backends.kafka import KafkaBackend
from tests.kafka_helpers import broker_pid, committed, read_topic
from tests.payments import DoPayment, json_registry
from tests.support.local_brokers import local_kafka

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6
MAX_IN_FLIGHT = 200
MEMBERS = 3
LIVE: list[Member] = []


def config(bootstrap: str, queue: str) -> dict[str, object]:
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": PARTITIONS,
            "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
            "client": {"socket.timeout.ms": 5000},
        },
        "messages": {"tests.payments:DoPayment": "json"},
        "queues": {
            queue: {
                "consumers": ["tests.chaos.consumer:make_consumer"],
                "retry": {"max_attempts": 3, "backoff_base": "50ms", "backoff_max": "200ms"},
                "dedup": {"kind": "compacted", "window": "1d"},
                "concurrency": 8,
                "ordering": "key",
                "max_in_flight": MAX_IN_FLIGHT,
            }
        },
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "30s"},
    }


class Member:
    """One ``python -m service run`` process."""

    sleep_ms = 0.0

    def __init__(self, config_path: Path, chaos_dir: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SCHEMA_"))}
        env.update(
            CHAOS_DIR=str(chaos_dir), PYTHONPATH=str(ROOT), CHAOS_SLEEP_MS=str(self.sleep_ms)
        )
        self._log = open(log, "a")  # noqa: SIM115 - lives as long as the process
        LIVE.append(self)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "-c", str(config_path)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        finally:
            self._log.close()


def _tail(log: Path) -> str:
    lines = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "ERROR" in line or "Error" in line or "stopped" in line
    ]
    return "\n".join(lines[-30:])


def ledger(chaos_dir: Path) -> list[str]:
    rows: list[str] = []
    for path in chaos_dir.glob("ledger-*.txt"):
        rows += [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return rows


def main() -> int:
    """Run the suite; on any failure no member process is left behind."""
    try:
        return _main()
    finally:
        for member in LIVE:
            if member.proc.poll() is None:
                member.proc.kill()


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--outage", type=float, nargs=2, default=(10.0, 30.0))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--sleep-ms", type=float, default=10.0, help="I/O per message")
    parser.add_argument(
        "--max-extra", type=int, default=30, help="kills/stops beyond the first round, at most"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker_dir, chaos_dir = work / "broker", work / "chaos"
        chaos_dir.mkdir()
        with local_kafka(broker_dir) as bootstrap:
            queue = f"chaos-{uuid.uuid4().hex[:8]}"
            backend = KafkaBackend(bootstrap, partitions=PARTITIONS)
            backend.declare_queue(queue)
            config_path = work / "service.yaml"
            config_path.write_text(json.dumps(config(bootstrap, queue)))
            publisher = Publisher(json_registry(), backend)
            expected: set[str] = set()
            poison: set[str] = set()
            for i in range(args.messages):
                order = "poison" if i % 2000 == 7 else f"order-{i % 97}"
                message_id = publisher.publish(
                    queue, DoPayment(order, i), key=order, message_id=f"m{i:07d}"
                )
                (poison if order == "poison" else expected).add(message_id)
            backend.flush(120)
            log = work / "members.log"
            Member.sleep_ms = args.sleep_ms
            members = [Member(config_path, chaos_dir, log) for _ in range(MEMBERS)]
            kills = terms = outages = 0
            broker = broker_pid(broker_dir)

            def done() -> bool:
                return expected <= set(ledger(chaos_dir))

            events = ["kill"] * args.kills + ["term", "term", "outage", "transient"]
            rng.shuffle(events)
            for event in events:
                time.sleep(rng.uniform(0.5, 2.0))
                victim = rng.randrange(MEMBERS)
                if event == "kill":
                    members[victim].kill(signal.SIGKILL)
                    kills += 1
                    members[victim] = Member(config_path, chaos_dir, log)
                elif event == "term":
                    code = members[victim].kill(signal.SIGTERM)
                    assert code == 0, f"graceful stop exited {code}: {_tail(log)}"
                    terms += 1
                    members[victim] = Member(config_path, chaos_dir, log)
                elif event == "outage":
                    os.kill(broker, signal.SIGSTOP)
                    time.sleep(rng.uniform(*args.outage))
                    os.kill(broker, signal.SIGCONT)
                    outages += 1
                else:
                    (chaos_dir / "transient").touch()
                    time.sleep(rng.uniform(2.0, 5.0))
                    (chaos_dir / "transient").unlink()
            # keep killing while most of the work is still ahead, so the faults hit it
            extra = 0
            while len(set(ledger(chaos_dir))) < 0.8 * len(expected) and extra < args.max_extra:
                time.sleep(rng.uniform(3.0, 6.0))
                victim = rng.randrange(MEMBERS)
                if rng.random() < 0.7:
                    members[victim].kill(signal.SIGKILL)
                    kills += 1
                else:
                    code = members[victim].kill(signal.SIGTERM)
                    assert code == 0, f"graceful stop exited {code}: {_tail(log)}"
                    terms += 1
                members[victim] = Member(config_path, chaos_dir, log)
                extra += 1
            during_chaos = len(set(ledger(chaos_dir)))
            deadline = time.monotonic() + 600
            while not done() and time.monotonic() < deadline:
                time.sleep(1)
            letters = []
            end = time.monotonic() + 120
            while time.monotonic() < end:
                # a poison message may be dead-lettered twice (killed before its commit)
                letters = read_topic(bootstrap, f"{queue}.dlq", 100 * len(poison), timeout=10)
                if len({m.header("message_id") for m in letters}) >= len(poison):
                    break
            time.sleep(3)  # let the last commits land
            for member in members:
                code = member.kill(signal.SIGTERM)
                assert code == 0, f"graceful stop exited {code}: {_tail(log)}"
            offsets = committed(bootstrap, queue, queue, PARTITIONS)
            backend.close()
            rows = ledger(chaos_dir)
    seen = Counter(rows)
    lost = len(expected - set(seen))
    duplicates = sum(n - 1 for n in seen.values())
    dead = {(m.header("message_id") or b"").decode() for m in letters}
    dead_repeats = len(letters) - len(dead)
    dead_missing = len(poison - dead)
    reasons = {(m.header("dlq.error_class") or b"").decode() for m in letters}
    figures = [
        ("messages", args.messages),
        ("processed when the chaos ended", during_chaos),
        ("kills (SIGKILL)", kills),
        ("graceful restarts", terms),
        ("broker outages", outages),
        ("lost", lost),
        ("duplicate side effects", duplicates),
        ("dead letters (poison)", f"{len(dead)} of {len(poison)} (+{dead_repeats} repeats)"),
        ("committed", sum(offsets)),
        ("wall time", f"{time.monotonic() - started:.0f} s"),
    ]
    print("\n| figure | value |\n|---|---|")
    for name, value in figures:
        print(f"| {name} | {value} |")
    problems = []
    if lost:
        problems.append(f"{lost} messages lost")
    if dead_missing:
        problems.append(f"{dead_missing} poison messages missing from the dead-letter topic")
    if reasons - {"ConsumerError"}:
        problems.append(f"unexpected dead-letter reasons {reasons}")
    if duplicates > kills * MAX_IN_FLIGHT:
        problems.append(f"{duplicates} duplicates > kills x in-flight limit")
    if sum(offsets) != args.messages:
        problems.append(f"committed {sum(offsets)} of {args.messages}")
    for problem in problems:
        print("FAIL:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
