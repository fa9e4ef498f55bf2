"""``kafka-dispatch run`` as a subprocess on the real broker (issue 6)."""

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
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import Consumer, Publisher
from service.backends.kafka import KafkaBackend
from tests.kafka_helpers import broker_pid, committed, kafka_backend, unique
from tests.payments import DoPayment, json_registry
from tests.support.local_brokers import local_kafka

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class LedgerConsumer(Consumer):
    """Appends every amount to $LEDGER; sleeps $SLEEP_MS per message."""

    def __init__(self) -> None:
        super().__init__()
        self._file = open(os.environ["LEDGER"], "a", buffering=1)  # noqa: SIM115
        self._sleep = int(os.environ.get("SLEEP_MS", "0")) / 1000

    def process(self, message: Any, **kwargs: Any) -> None:
        if self._sleep:
            with open(os.environ["LEDGER"] + ".started", "a") as started:
                started.write(f"{message.amount}\n")
            time.sleep(self._sleep)
        self._file.write(f"{message.amount}\n")


def write_config(path: Path, bootstrap: str, queue: str, **extra: Any) -> Path:
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": 3,
            "consumer": {"session.timeout.ms": 6000},
        },
        "messages": {"tests.payments:DoPayment": "json"},
        "queues": {
            queue: {"consumers": ["tests.integration.test_service_run:LedgerConsumer"], **extra}
        },
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "20s"},
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


class Service:
    """A running ``python -m service run`` and what it printed."""

    def __init__(self, config: Path, ledger: Path, sleep_ms: int = 0) -> None:
        env = _without_overrides(os.environ)
        env.update(LEDGER=str(ledger), SLEEP_MS=str(sleep_ms), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "-c", str(config)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        # stderr is read all the time: a broker outage logs a lot, and a full pipe would
        # block the service's logging (and so its consume loop) until someone read it
        self.lines: list[str] = []
        self._seen = 0  # lines already matched past by _wait_for
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()
        self.port = int(self._wait_for(r"metrics and probes on port (\d+)")[1])

    def _read(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in self.proc.stderr:
                self.lines.append(line)
        except ValueError:  # closed by a test that killed the service: nothing more to read
            return

    def _wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first line from the last match on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self._seen < len(self.lines):
                line = self.lines[self._seen]
                self._seen += 1
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None and not self._drain.is_alive():
                raise AssertionError(f"service ended: {''.join(self.lines[-20:])}")
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not seen: {''.join(self.lines[-20:])}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        _, text = self.get("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._drain.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


def _without_overrides(environ: Any) -> dict[str, str]:
    """``environ`` without the variables that override a config's broker and registry."""
    return {
        k: v
        for k, v in environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL")
    }


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def amounts(ledger: Path) -> list[int]:
    return [int(x) for x in ledger.read_text().split()] if ledger.exists() else []


def publish(backend: KafkaBackend, topic: str, count: int, start: int = 0) -> None:
    publisher = Publisher(json_registry(), backend)
    for i in range(start, start + count):
        publisher.publish(topic, DoPayment(f"o{i}", i), key=f"k{i}")
    backend.flush()


def test_run_processes_reports_metrics_and_probes_then_stops_cleanly(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger = unique("svc"), tmp_path / "ledger"
    backend = kafka_backend(kafka_bootstrap, partitions=3)
    backend.declare_queue(queue)
    service = Service(write_config(tmp_path / "c.yaml", kafka_bootstrap, queue), ledger)
    try:
        publish(backend, queue, 50)
        wait_for(lambda: len(amounts(ledger)) == 50, 30)
        wait_for(lambda: service.get("/readyz")[0] == 200, 15)
        assert service.get("/healthz")[0] == 200
        wait_for(
            lambda: (
                service.metric(
                    "kafka_dispatch_processed_messages_total", queue=queue, outcome="success"
                )
                == 50
            ),
            10,
        )
        assert service.metric("kafka_dispatch_received_messages_total", queue=queue) == 50
        assert service.metric("kafka_dispatch_assigned_partitions", queue=queue) == 3
        assert service.metric("kafka_dispatch_processing_duration_seconds_count", queue=queue) == 50
        assert service.get("/nope")[0] == 404
    finally:
        code = service.stop()
    assert code == 0, "".join(service.lines[-20:])
    assert sum(committed(kafka_bootstrap, queue, queue, 3)) == 50
    backend.close()


def test_sigterm_mid_stream_loses_nothing_and_exits_0(kafka_bootstrap: str, tmp_path: Path) -> None:
    queue, ledger, total = unique("svc"), tmp_path / "ledger", 200
    backend = kafka_backend(kafka_bootstrap, partitions=3)
    backend.declare_queue(queue)
    config = write_config(tmp_path / "c.yaml", kafka_bootstrap, queue)
    publish(backend, queue, total)
    service = Service(config, ledger, sleep_ms=20)
    wait_for(lambda: len(amounts(ledger)) >= 30, 30)
    assert service.stop() == 0
    stopped_at = len(amounts(ledger))
    assert stopped_at < total
    again = Service(config, ledger)
    try:
        wait_for(lambda: set(amounts(ledger)) == set(range(total)), 30)
    finally:
        assert again.stop() == 0
    assert sorted(set(amounts(ledger))) == list(range(total))
    backend.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"queues": {"q": {"consumers": ["tests.payments:Nope"]}}},
            "queues.q.consumers[0]: cannot import 'tests.payments:Nope'",
        ),
        (
            {"queues": {"q": {"consumers": ["tests.payments:json_registry"], "colour": 1}}},
            "queues.q.colour: unknown key",
        ),
        (
            {
                "kafka": {
                    "bootstrap_servers": "x:1",
                    "client": {"sasl.password": "${env:NOPE_NOT_SET}"},
                }
            },
            "kafka.client.sasl.password: environment variable NOPE_NOT_SET is not set",
        ),
        (
            {
                "queues": {
                    "q": {
                        "consumers": ["tests.payments:json_registry"],
                        "retry": {"max_attempts": 0},
                    }
                }
            },
            "queues.q.retry.max_attempts: an integer >= 1 or null",
        ),
    ],
)
def test_config_errors_say_where_and_what_and_exit_2(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9"},
        "queues": {"q": {"consumers": ["tests.payments:json_registry"]}},
    }
    config.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "service", "run", "-c", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("consumer", "code", "says"),
    [
        # user code is checked before the broker: a config error exits 2 without connecting
        ("tests.payments:json_registry", 2, "not a Consumer"),
        # a good config then meets the unreachable broker: exit 1, one clear line
        ("tests.integration.test_service_run:LedgerConsumer", 1, "check kafka.bootstrap_servers"),
    ],
)
def test_secrets_never_appear_in_errors(
    tmp_path: Path, consumer: str, code: int, says: str
) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(
        json.dumps(
            {
                "kafka": {
                    "bootstrap_servers": "127.0.0.1:9",
                    "startup_timeout": 2,
                    "client": {"sasl.password": "hunter2-very-secret"},
                },
                "queues": {"q": {"consumers": [consumer]}},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "service", "run", "-c", str(path)],
        cwd=ROOT,
        env={**_without_overrides(os.environ), "LEDGER": str(tmp_path / "ledger")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == code, result.stderr
    assert says in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_readyz_flips_when_the_broker_goes_away_and_comes_back(tmp_path: Path) -> None:
    workdir = tmp_path / "own-broker"
    with local_kafka(workdir) as bootstrap:
        queue, ledger = unique("svc"), tmp_path / "ledger"
        backend = kafka_backend(bootstrap, partitions=3)
        backend.declare_queue(queue)
        config = json.loads(write_config(tmp_path / "c.yaml", bootstrap, queue).read_text())
        config["kafka"]["client"] = {"socket.timeout.ms": 2000, "socket.keepalive.enable": True}
        (tmp_path / "c.yaml").write_text(json.dumps(config))
        service = Service(tmp_path / "c.yaml", ledger)
        broker = broker_pid(workdir)
        try:
            publish(backend, queue, 5)
            wait_for(lambda: len(amounts(ledger)) == 5, 30)
            wait_for(lambda: service.get("/readyz")[0] == 200, 20)
            os.kill(broker, signal.SIGSTOP)  # the broker stops answering
            try:
                wait_for(lambda: service.get("/readyz")[0] == 503, 60)
                _, body = service.get("/readyz")
                assert "broker unreachable" in body
            finally:
                os.kill(broker, signal.SIGCONT)
            wait_for(lambda: service.get("/readyz")[0] == 200, 90)
            publish(backend, queue, 5, start=5)
            # a rejoin after the freeze may take a session timeout or two, and the group
            # coordinator's timed-out requests (seen once: 78 s under a full-suite load)
            wait_for(lambda: set(amounts(ledger)) == set(range(10)), 180)
            # at-least-once: the first five may come again (their commit may have been in
            # flight when the broker froze, and the session lost); the later ones once each
            runs = Counter(amounts(ledger))
            assert all(runs[i] == 1 for i in range(5, 10)), runs
        finally:
            code = service.stop()
            backend.close()
        assert code == 0, "".join(service.lines[-30:])


def test_a_second_signal_exits_at_once_and_nothing_done_is_lost(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger, total = unique("svc"), tmp_path / "ledger", 30
    backend = kafka_backend(kafka_bootstrap, partitions=3)
    backend.declare_queue(queue)
    config = write_config(tmp_path / "c.yaml", kafka_bootstrap, queue)
    publish(backend, queue, total)
    service = Service(config, ledger, sleep_ms=3000)  # each message takes 3 s
    in_hand = Path(f"{ledger}.started")
    wait_for(lambda: in_hand.exists() and len(amounts(in_hand)) > len(amounts(ledger)), 30)
    service.proc.send_signal(signal.SIGTERM)
    service._wait_for(r"SIGTERM: stopping")  # the first is handled: graceful stop begins
    started = time.monotonic()
    code = service.stop(signal.SIGTERM, timeout=10)
    assert code == 1, "".join(service.lines[-15:])  # the second one: at once, code 1
    assert time.monotonic() - started < 2.5
    again = Service(config, ledger)
    try:
        wait_for(lambda: set(amounts(ledger)) == set(range(total)), 30)
    finally:
        assert again.stop() == 0
    backend.close()
