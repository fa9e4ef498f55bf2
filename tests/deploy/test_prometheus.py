"""Prometheus from Debian's ``prometheus`` package: promtool checks, and a real scrape.

These run the binaries; a missing ``promtool``/``prometheus`` fails the test (``make deps``
installs the package, ``make test`` runs it first), it never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from service import Consumer, Publisher
from tests.kafka_helpers import kafka_backend, unique
from tests.payments import DoPayment, json_registry

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
INSTALL = "make deps, or as root: apt-get install -y --no-install-recommends prometheus"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: install Debian's prometheus package ({INSTALL})")
    return path


class NoopConsumer(Consumer):
    """Accepts every message (the scrape is what is under test)."""

    def process(self, message: Any, **kwargs: Any) -> None:
        """Nothing to do."""


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_config(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    # compose mounts alerts.yml at /etc/prometheus/alerts.yml; point the copy at the repo file
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
    config["rule_files"] = ["alerts.yml"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output or "SUCCESS: 5 rules found" in output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_service(tmp_path: Path, bootstrap: str, queue: str) -> tuple[subprocess.Popen[str], int]:
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": 3,
            "consumer": {"session.timeout.ms": 6000},
        },
        "messages": {"tests.payments:DoPayment": "json"},
        "queues": {queue: {"consumers": ["tests.deploy.test_prometheus:NoopConsumer"]}},
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "10s"},
    }
    path = tmp_path / "service.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "run", "-c", str(path)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    stderr: IO[str] = proc.stderr
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = stderr.readline()
        if not line:
            proc.wait(10)
            raise AssertionError(f"service ended: {''.join(lines[-20:])}")
        lines.append(line)
        if match := re.search(r"metrics and probes on port (\d+)", line):
            return proc, int(match[1])
    proc.kill()
    raise AssertionError(f"no metrics port announced: {''.join(lines[-20:])}")


def _query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_the_running_service(kafka_bootstrap: str, tmp_path: Path) -> None:
    prometheus = binary("prometheus")
    queue = unique("prom")
    backend = kafka_backend(kafka_bootstrap, partitions=3)
    backend.declare_queue(queue)
    service, metrics_port = _start_service(tmp_path, kafka_bootstrap, queue)
    prom: subprocess.Popen[str] | None = None
    try:
        publisher = Publisher(json_registry(), backend)
        for i in range(10):
            publisher.publish(queue, DoPayment(f"o{i}", i), key=f"k{i}")
        backend.flush()
        prom_port = _free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "kafka-dispatch",
                    "scrape_interval": "1s",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (tmp_path / "prometheus.log").open("w") as log:  # the child keeps its own fd
            prom = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        value, up, deadline = 0.0, [], time.monotonic() + 40
        while time.monotonic() < deadline:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                result = _query(prom_port, "sum(kafka_dispatch_processed_messages_total)")
                up = _query(prom_port, 'up{job="kafka-dispatch"}')
            except (urllib.error.URLError, ConnectionError):
                result = []
            if result and float(result[0]["value"][1]) > 0:
                value = float(result[0]["value"][1])
                break
            time.sleep(0.5)
        assert value > 0, (
            f"no processed messages seen by Prometheus; up={up}\n"
            + (tmp_path / "prometheus.log").read_text()[-3000:]
        )
        assert up and float(up[0]["value"][1]) == 1
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(20)
        service.send_signal(signal.SIGTERM)
        code = service.wait(30)
        if service.stderr is not None:
            service.stderr.close()
        backend.close()
    assert code == 0
