"""Session fixtures for a real Kafka broker and schema registry.

The broker comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` in the environment;
testcontainers, when a Docker-compatible engine answers on ``DOCKER_HOST`` (or the default
Docker socket), running ``$KAFKA_IMAGE`` (default ``apache/kafka:<KAFKA_VERSION>`` from
deploy/versions.env; ``make test-containers`` names the image ``make images`` builds and
serves podman's API, see docs/containers.md); the local JVM broker of ``deploy/local`` (jars
from Maven Central, cached). A test that needs a broker and cannot get one fails; it never
skips.

``tests/containers`` (the compose group on real containers) is collected only when named on
the command line (``make test-containers``), never by a plain ``pytest``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local_brokers import local_kafka, local_schema_registry, versions

CONTAINER_TESTS = Path(__file__).parent / "containers"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave ``tests/containers`` out unless a command-line path points into it."""
    if collection_path != CONTAINER_TESTS:
        return None
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == CONTAINER_TESTS or CONTAINER_TESTS in path.parents:
            return None
    return True


def _kafka_image() -> str:
    """``$KAFKA_IMAGE``, else the official image of the version deploy/versions.env names."""
    return os.environ.get("KAFKA_IMAGE") or f"apache/kafka:{versions()['KAFKA_VERSION']}"


def _docker_engine_answers() -> bool:
    """Whether a Docker engine answers ``GET /_ping`` (unix socket or tcp DOCKER_HOST)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            name, _, port = host.removeprefix("tcp://").partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port or 2375))
        else:
            return False
        with sock:
            sock.settimeout(3)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
            return status_line.startswith(b"HTTP/1.") and b" 200" in status_line
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real Kafka 4.x broker for this test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with contextlib.ExitStack() as stack:
        if _docker_engine_answers():
            from tests.containers.apache_kafka import ApacheKafkaContainer

            container = ApacheKafkaContainer(_kafka_image())
            yield stack.enter_context(container).get_bootstrap_server()
        else:
            yield stack.enter_context(local_kafka(tmp_path_factory.mktemp("kafka")))


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a Confluent-compatible schema registry (Apicurio ``/apis/ccompat/v7``)."""
    external = os.environ.get("SCHEMA_REGISTRY_URL")
    if external:
        yield external
        return
    with local_schema_registry(tmp_path_factory.mktemp("registry")) as url:
        yield url
