"""Session fixtures for a real Kafka broker and schema registry.

The broker comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` in the environment;
testcontainers' Kafka module (Confluent Platform 8 = Kafka 4.x, KRaft) when a Docker engine
answers; the local JVM broker of ``deploy/local`` (jars from Maven Central, cached). A test
that needs a broker and cannot get one fails; it never skips.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest

from tests.support.local_brokers import local_kafka, local_schema_registry

TESTCONTAINERS_IMAGE = "confluentinc/cp-kafka:8.0.0"


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
            from testcontainers.community.kafka import KafkaContainer

            container = stack.enter_context(KafkaContainer(TESTCONTAINERS_IMAGE).with_kraft())
            yield container.get_bootstrap_server()
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
