"""``kafka-dispatch run --processes 2`` as a subprocess on the real broker (issue 16)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from service import Consumer
from tests.integration.test_service_run import publish, wait_for
from tests.kafka_helpers import kafka_backend, unique

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4


class PidLedgerConsumer(Consumer):
    """Appends ``<amount> <pid>`` to $LEDGER per message; sleeps $SLEEP_MS per message."""

    def __init__(self) -> None:
        super().__init__()
        if os.environ.get("CRASH_ON_START"):  # only children build consumers
            os._exit(3)
        self._file = open(os.environ["LEDGER"], "a", buffering=1)  # noqa: SIM115
        self._sleep = int(os.environ.get("SLEEP_MS", "0")) / 1000

    def process(self, message: Any, **kwargs: Any) -> None:
        time.sleep(self._sleep)
        self._file.write(f"{message.amount} {os.getpid()}\n")


def write_config(path: Path, bootstrap: str, queue: str) -> Path:
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": PARTITIONS,
            "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        },
        "messages": {"tests.payments:DoPayment": "json"},
        "queues": {queue: {"consumers": ["tests.integration.test_processes:PidLedgerConsumer"]}},
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "20s"},
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


class Supervised:
    """A running ``python -m service run --processes N``; its stderr drained by a thread."""

    def __init__(
        self, config: Path, ledger: Path, processes: int, sleep_ms: int = 0, **extra: str
    ) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL")
        }
        env.update(LEDGER=str(ledger), SLEEP_MS=str(sleep_ms), PYTHONPATH=str(ROOT), **extra)
        command = [sys.executable, "-m", "service", "run", "-c", str(config)]
        self.proc = subprocess.Popen(
            [*command, "--processes", str(processes)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()
        self.port = int(self.wait_for_line(r"metrics and probes on port (\d+)")[1])

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines[-30:])

    def wait_for_line(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                if match := re.search(pattern, line):
                    return match
            assert self.proc.poll() is None, f"supervisor ended: {self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen: {self.log()}")

    def pids(self) -> dict[int, int]:
        """The latest pid of each child, from the supervisor's log."""
        found: dict[int, int] = {}
        for line in self.lines:
            if match := re.search(r"process (\d+) started \(pid (\d+)\)", line):
                found[int(match[1])] = int(match[2])
        return found

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples matching ``labels``."""
        _, text = self.get("/metrics")
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def stop(self, timeout: float = 40) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._drain.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


def ledger_rows(ledger: Path) -> list[tuple[int, int]]:
    if not ledger.exists():
        return []
    rows = [line.split() for line in ledger.read_text().splitlines()]
    return [(int(amount), int(pid)) for amount, pid in rows]


def is_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has stopped too


def group_assignment(bootstrap: str, group: str) -> dict[str, set[int]]:
    """Each member's partitions, from the group's description."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    return {
        member.member_id: {tp.partition for tp in member.assignment.topic_partitions}
        for member in description.members
    }


def test_two_processes_split_the_group_and_serve_one_metrics_and_probes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger, total = unique("procs"), tmp_path / "ledger", 200
    backend = kafka_backend(kafka_bootstrap, partitions=PARTITIONS)
    backend.declare_queue(queue)
    service = Supervised(write_config(tmp_path / "c.yaml", kafka_bootstrap, queue), ledger, 2)
    try:
        wait_for(lambda: service.get("/readyz")[0] == 200, 60)
        pids = service.pids()
        assert sorted(pids) == [1, 2]

        def split_in_two() -> bool:  # the description settles after the group's rebalance
            members = list(group_assignment(kafka_bootstrap, queue).values())
            halves = [len(partitions) == PARTITIONS // 2 for partitions in members]
            return len(members) == 2 and all(halves) and set.union(*members) == set(range(4))

        wait_for(split_in_two, 30)

        publish(backend, queue, total)
        wait_for(lambda: len(ledger_rows(ledger)) >= total, 60)
        rows = ledger_rows(ledger)
        assert sorted(amount for amount, _ in rows) == list(range(total))
        assert {pid for _, pid in rows} == set(pids.values()), "both children processed"

        processed = "kafka_dispatch_processed_messages_total"
        wait_for(lambda: service.metric(processed, queue=queue, outcome="success") == total, 15)
        assert service.metric("kafka_dispatch_received_messages_total", queue=queue) == total
        count = service.metric("kafka_dispatch_processing_duration_seconds_count", queue=queue)
        assert count == total
        assert service.metric("kafka_dispatch_assigned_partitions", queue=queue) == PARTITIONS
        lags = [
            service.metric("kafka_dispatch_consumer_lag_messages", queue=queue, partition=str(p))
            for p in range(PARTITIONS)
        ]
        assert lags == [0.0] * PARTITIONS
        _, text = service.get("/metrics")
        polled = [
            s
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "kafka_dispatch_seconds_since_last_poll"
        ]
        assert len(polled) == 1 and polled[0].value < 30, polled  # merged: one per queue

        for path in ("/healthz", "/readyz"):
            status, body = service.get(path)
            assert (status, json.loads(body)) == (200, {"status": "ok", "problems": {}})
    finally:
        code = service.stop()
    assert code == 0, service.log()
    assert all(is_gone(pid) for pid in pids.values())
    assert "process 1 (pid" in service.log() and "exited with code 0" in service.log()
    backend.close()


def test_a_killed_child_is_restarted_and_nothing_is_lost(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger, total = unique("procs"), tmp_path / "ledger", 400
    backend = kafka_backend(kafka_bootstrap, partitions=PARTITIONS)
    backend.declare_queue(queue)
    config = write_config(tmp_path / "c.yaml", kafka_bootstrap, queue)
    service = Supervised(config, ledger, 2, sleep_ms=10)
    try:
        wait_for(lambda: service.get("/readyz")[0] == 200, 60)
        publish(backend, queue, total)
        wait_for(lambda: len(ledger_rows(ledger)) >= 60, 30)
        victim = service.pids()[1]
        mark = len(service.lines)
        os.kill(victim, signal.SIGKILL)

        def down_in_probes() -> bool:
            status, body = service.get("/healthz")
            return status == 503 and "process 1" in json.loads(body)["problems"]

        wait_for(down_in_probes, 5)
        _, body = service.get("/readyz")
        assert "process 1" in json.loads(body)["problems"]
        service.wait_for_line(r"process 1 \(pid \d+\) exited with code -9", 5, mark)
        service.wait_for_line(r"process 1 started \(pid \d+\)", 10, mark)
        assert service.pids()[1] != victim
        wait_for(lambda: {a for a, _ in ledger_rows(ledger)} == set(range(total)), 90)
        wait_for(lambda: service.get("/readyz")[0] == 200, 30)
        assert service.metric("kafka_dispatch_process_restarts_total", process="1") == 1
        processed = service.metric(
            "kafka_dispatch_processed_messages_total", queue=queue, outcome="success"
        )
        assert processed >= total  # the killed child's counts stay; redeliveries count again
        pids = service.pids()
    finally:
        code = service.stop()
    assert code == 0, service.log()
    assert all(is_gone(pid) for pid in pids.values())
    assert sorted({a for a, _ in ledger_rows(ledger)}) == list(range(total))
    backend.close()


def test_a_child_that_keeps_crashing_makes_the_supervisor_give_up(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue = unique("procs")
    config = write_config(tmp_path / "c.yaml", kafka_bootstrap, queue)
    started = time.monotonic()
    service = Supervised(config, tmp_path / "ledger", 2, CRASH_ON_START="1")

    def named_in_probes() -> bool:
        status, body = service.get("/healthz")
        problems = json.loads(body)["problems"] if status == 503 else {}
        return any("in a row); restarting in" in problems.get(f"process {i}", "") for i in (1, 2))

    wait_for(named_in_probes, 30)
    code = service.proc.wait(120)
    elapsed = time.monotonic() - started
    service._drain.join(5)
    assert service.proc.stderr is not None
    service.proc.stderr.close()
    assert code == 1, service.log()
    assert re.search(r"process \d exited with code 3, 5 times in a row: giving up", service.log())
    backoffs = re.findall(r"\(\d in a row\): restarting in (\d+)s", service.log())
    assert {"1", "2", "4", "8"} <= set(backoffs), backoffs  # doubling, per child
    assert elapsed >= 15, "the back-off of 1 + 2 + 4 + 8 s was waited"
    assert all(is_gone(pid) for pid in service.pids().values())


def test_a_second_signal_makes_everyone_exit_at_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    queue, ledger = unique("procs"), tmp_path / "ledger"
    backend = kafka_backend(kafka_bootstrap, partitions=PARTITIONS)
    backend.declare_queue(queue)
    config = write_config(tmp_path / "c.yaml", kafka_bootstrap, queue)
    service = Supervised(config, ledger, 2, sleep_ms=20_000)  # each message outlasts the test
    wait_for(lambda: service.get("/readyz")[0] == 200, 60)
    pids = service.pids()
    publish(backend, queue, 8)
    time.sleep(2)  # the children are in the middle of their first message
    service.proc.send_signal(signal.SIGTERM)
    service.wait_for_line(r"SIGTERM: stopping every child", 5)
    started = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    code = service.proc.wait(10)
    assert code == 1, service.log()
    assert time.monotonic() - started < 5, "not at once"
    wait_for(lambda: all(is_gone(pid) for pid in pids.values()), 5)
    assert ledger_rows(ledger) == [], "no message in hand was finished"
    service._drain.join(5)
    assert service.proc.stderr is not None
    service.proc.stderr.close()
    assert "SIGTERM again: children exit now" in service.log()
    backend.close()
