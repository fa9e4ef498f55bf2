"""Planted passwords never leave the process: every output channel is searched for them.

Passwords are planted in the schema registry URL's user-info, in the SASL settings and in
the registry's basic auth, then the service runs (``run`` on the real broker, with text and
with JSON logs) and the schema commands run against an unreachable registry. Searched:
stdout, stderr, the log output, ``/metrics``, ``/healthz``, ``/readyz``, and the headers,
keys and values of the dead letters.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service import Consumer
from service.messages import MANIFEST_HEADER, MESSAGE_ID_HEADER, SERIALIZER_ID_HEADER
from tests.kafka_helpers import kafka_backend, read_topic, unique

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
URL_PASSWORD = "url-pw-0f3c9a"  # noqa: S105 - planted on purpose
SASL_PASSWORD = "sasl-pw-7d21be"  # noqa: S105
AUTH_PASSWORD = "auth-pw-5e88c4"  # noqa: S105
KEY_PASSWORD = "key-pw-91ab07"  # noqa: S105
PLANTED = (URL_PASSWORD, SASL_PASSWORD, AUTH_PASSWORD, KEY_PASSWORD)
_OVERRIDES = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "SCHEMA_REGISTRY_URL",
    "SCHEMA_REGISTRY_USERNAME",
    "SCHEMA_REGISTRY_PASSWORD",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "SERVICE_CONFIG",
)


def refusing_consumer() -> Consumer:
    """Refuses every message: with one attempt, each is dead-lettered."""

    def refuse(message: Any) -> None:
        raise ValueError(f"refused {type(message).__name__} on purpose")

    return Consumer(on_message=refuse)


def accepting_consumer() -> Consumer:
    """Takes every message (the Avro queue's never get this far: the registry is down)."""
    return Consumer(on_message=lambda message: None)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def assert_no_secret(channel: str, text: str | bytes) -> None:
    for planted in PLANTED:
        found = planted.encode() in text if isinstance(text, bytes) else planted in text
        assert not found, f"{planted!r} appears in {channel}"


def registry_url(port: int, password: str = URL_PASSWORD) -> str:
    return f"http://svc:{password}@127.0.0.1:{port}/apis/ccompat/v7"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for_line(stream: Any, lines: list[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise AssertionError(f"the service ended: {''.join(lines[-20:])}")
        lines.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not logged: {''.join(lines[-20:])}")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_run_shows_no_secret_on_any_channel(
    kafka_bootstrap: str, tmp_path: Path, log_format: str
) -> None:
    refused, avro = unique("secrets-refused"), unique("secrets-avro")
    backend = kafka_backend(kafka_bootstrap, partitions=1)
    for queue in (refused, avro):
        backend.declare_queue(queue)
    backend.publish(
        refused,
        b'{"order_id": "o-1", "amount": 1}',
        key=b"k-1",
        headers=(
            (SERIALIZER_ID_HEADER, b"1"),
            (MANIFEST_HEADER, b"OrderResponse"),
            (MESSAGE_ID_HEADER, b"m-1"),
        ),
    )
    # Avro-framed (magic byte, schema id 7): decoding asks the unreachable registry
    backend.publish(
        avro,
        b"\x00\x00\x00\x00\x07payload",
        key=b"k-2",
        headers=(
            (SERIALIZER_ID_HEADER, b"2"),
            (MANIFEST_HEADER, b"payments.DoPayment"),
            (MESSAGE_ID_HEADER, b"m-2"),
        ),
    )
    backend.flush()
    registry_port = closed_port()
    config = tmp_path / "service.yaml"
    module = "tests.integration.test_secrets"
    config.write_text(
        json.dumps(
            {
                "kafka": {
                    "bootstrap_servers": kafka_bootstrap,
                    # SASL credentials are set (the shared broker is PLAINTEXT: unused)
                    "client": {"sasl.username": "alice", "sasl.password": "${env:SASL_PW}"},
                    "consumer": {"session.timeout.ms": 6000},
                },
                "schema_registry": {"url": registry_url(registry_port)},
                "messages": {
                    "examples.payment_service.messages:DoPayment": "avro",
                    "tests.payments:OrderResponse": "json",
                },
                "queues": {
                    refused: {
                        "consumers": [f"{module}:refusing_consumer"],
                        "retry": {"max_attempts": 1},
                    },
                    avro: {"consumers": [f"{module}:accepting_consumer"]},
                },
                "service": {
                    "metrics_port": 0,
                    "metrics_host": "127.0.0.1",
                    "log_format": log_format,
                    "log_level": "DEBUG",
                    "shutdown_timeout": "20s",
                },
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "run", "-c", str(config)],
        cwd=ROOT,
        env=clean_env(SASL_PW=SASL_PASSWORD),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    lines: list[str] = []
    try:
        started = wait_for_line(proc.stderr, lines, "metrics and probes on port", 60)
        port = int(started.split("metrics and probes on port")[1].split()[0].strip('",}'))
        letters = read_topic(kafka_bootstrap, f"{refused}.dlq", 1, timeout=60)
        assert len(letters) == 1, "".join(lines[-20:])
        deadline = time.monotonic() + 30
        while "cannot reach" not in get(port, "/readyz")[1]:
            assert time.monotonic() < deadline, get(port, "/readyz")
            time.sleep(0.2)
        probes = {path: get(port, path) for path in ("/metrics", "/healthz", "/readyz")}
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, rest = proc.communicate(timeout=60)
    stderr = "".join(lines) + rest

    assert "svc:***@127.0.0.1" in probes["/readyz"][1]  # the URL is shown, masked
    assert "kafka_dispatch" in probes["/metrics"][1]
    for path, (_, body) in probes.items():
        assert_no_secret(path, body)
    assert_no_secret("stdout", stdout)
    assert_no_secret("stderr (the log)", stderr)
    assert "dead-lettering" in stderr
    if log_format == "json":
        records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        assert records, stderr[-2000:]
        assert_no_secret("JSON log fields", json.dumps(records))
    letter = letters[0]
    assert letter.header("dlq.error_class") == b"ConsumerError"
    for name, value in letter.headers:
        assert_no_secret(f"dead-letter header {name}", name.encode() + (value or b""))
    assert_no_secret("dead-letter key", letter.key or b"")
    assert_no_secret("dead-letter value", letter.value or b"")
    backend.close()


def client_certificate(directory: Path) -> dict[str, str]:
    """TLS client settings: a self-signed certificate and its key, encrypted with a password."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kafka-dispatch-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, certificate_path = directory / "client.key", directory / "client.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return {
        "ssl.certificate.location": str(certificate_path),
        "ssl.key.location": str(key_path),
        "ssl.key.password": KEY_PASSWORD,
    }


def schemas_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "schemas", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env(**env),
    )


def write_registry_config(path: Path, registry: dict[str, Any]) -> Path:
    path.write_text(
        json.dumps(
            {
                "kafka": {
                    "bootstrap_servers": "127.0.0.1:9",
                    "client": {"sasl.username": "alice", "sasl.password": SASL_PASSWORD},
                },
                "schema_registry": registry,
                "queues": {
                    "q": {"consumers": ["tests.integration.test_secrets:accepting_consumer"]}
                },
            }
        )
    )
    return path


@pytest.mark.parametrize("action", ["register", "check"])
def test_schema_commands_show_no_secret(tmp_path: Path, action: str) -> None:
    port = closed_port()
    runs = {
        "--registry with user-info": schemas_cli(action, "--registry", registry_url(port)),
        "$SCHEMA_REGISTRY_URL with user-info": schemas_cli(
            action, SCHEMA_REGISTRY_URL=registry_url(port)
        ),
        "-c, user-info in the URL": schemas_cli(
            action,
            "-c",
            str(write_registry_config(tmp_path / "a.yaml", {"url": registry_url(port)})),
        ),
        "-c, basic auth and TLS settings": schemas_cli(
            action,
            "-c",
            str(
                write_registry_config(
                    tmp_path / "b.yaml",
                    {
                        "url": f"http://127.0.0.1:{port}/apis/ccompat/v7",
                        "username": "svc",
                        "password": "${env:REGISTRY_PW}",
                        "ssl": client_certificate(tmp_path),
                    },
                )
            ),
            REGISTRY_PW=AUTH_PASSWORD,
        ),
    }
    for how, result in runs.items():
        assert result.returncode == 1, (how, result.stderr)
        assert "cannot reach" in result.stderr, (how, result.stderr)
        assert f"127.0.0.1:{port}" in result.stderr  # the registry is named...
        assert_no_secret(f"{how}: stdout", result.stdout)
        assert_no_secret(f"{how}: stderr", result.stderr)  # ...without its password
    assert "svc:***@" in runs["-c, user-info in the URL"].stderr
