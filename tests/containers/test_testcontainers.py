"""The fixture's testcontainers branch is the one in use under ``make test-containers``."""

from __future__ import annotations

import os

import docker

from tests.conftest import _kafka_image


def test_fixture_broker_is_a_container_of_the_configured_image(kafka_bootstrap: str) -> None:
    assert "KAFKA_BOOTSTRAP_SERVERS" not in os.environ, "the environment would win"
    assert os.environ.get("DOCKER_HOST"), "make test-containers serves podman's API"
    port = kafka_bootstrap.rsplit(":", 1)[1]
    client = docker.from_env()
    try:
        serving = [
            c
            for c in client.containers.list()
            for binding in (c.attrs["NetworkSettings"]["Ports"] or {}).get("9092/tcp") or []
            if binding["HostPort"] == port
        ]
        assert len(serving) == 1, f"one container publishes {kafka_bootstrap}"
        (container,) = serving
        assert _kafka_image() in container.image.tags
    finally:
        client.close()
