"""An unreachable broker: one line naming the brokers and the cause, fast, exit 1, no flood.

Each case runs the operating commands as subprocesses against an address that fails in a
known way: a closed port (refused), a name that cannot resolve (DNS), the shared broker's
plaintext port with a TLS client (TLS), and with SASL credentials (authentication).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli_ops import cli, write_config

pytestmark = pytest.mark.integration
TIMEOUT = 3.0
SLACK = 5.0  # interpreter start-up and config loading on a loaded 2-core machine
COMMANDS = [
    ("topics", "create"),
    ("dlq", "inspect", "--queue", "q"),
    ("dlq", "replay", "--queue", "q"),
    ("publish", "--topic", "t", "--manifest", "dict", "--json", "{}"),
]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the with block ends


def run(
    tmp_path: Path,
    bootstrap: str,
    command: tuple[str, ...],
    timeout: float = TIMEOUT,
    **client: Any,
) -> tuple[str, float]:
    config = write_config(
        tmp_path, bootstrap, {"q": {"topics": ["t"]}}, startup_timeout=timeout, client=client
    )
    started = time.monotonic()
    result = cli(config, *command)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no librdkafka flood, no traceback
    return lines[0], elapsed


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_refused_connection(tmp_path: Path, command: tuple[str, ...]) -> None:
    address = f"127.0.0.1:{closed_port()}"
    line, elapsed = run(tmp_path, address, command)
    assert line.startswith(f"error: cannot reach Kafka at {address} (connection refused) within 3s")
    assert "failed attempt(s)" in line and "check kafka.bootstrap_servers" in line
    assert TIMEOUT - 0.5 <= elapsed < TIMEOUT + SLACK


def test_unresolvable_host(tmp_path: Path) -> None:
    address = "no-such-broker.invalid:9092"
    line, elapsed = run(tmp_path, address, ("topics", "create"))
    assert line.startswith(f"error: cannot reach Kafka at {address} (DNS: host name not resolved)")
    assert "check the host names in kafka.bootstrap_servers" in line
    assert elapsed < TIMEOUT + SLACK


def test_tls_client_against_a_plaintext_listener(kafka_bootstrap: str, tmp_path: Path) -> None:
    line, elapsed = run(
        tmp_path,
        kafka_bootstrap,
        ("dlq", "inspect", "--queue", "q"),
        **{"security.protocol": "SSL"},
    )
    assert line.startswith(f"error: cannot reach Kafka at {kafka_bootstrap} (TLS handshake failed)")
    assert "security.protocol" in line
    assert elapsed < TIMEOUT + SLACK


def test_sasl_client_against_a_plaintext_listener_fails_at_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    client = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "user",
        "sasl.password": "planted-s3cret",
    }
    line, elapsed = run(tmp_path, kafka_bootstrap, ("topics", "create"), 30.0, **client)
    assert line.startswith(f"error: Kafka at {kafka_bootstrap} refused the credentials")
    assert "sasl.username" in line and "planted-s3cret" not in line
    assert elapsed < 15.0  # not retried until the 30 s start-up timeout
