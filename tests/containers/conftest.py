"""The compose group on real containers: one stack per session, started and removed here.

``deploy/podman/compose.sh up`` runs docker-compose.yml under podman-compose on the images
``make images`` builds (kafka, registry, init, the service x3, the demo publisher,
Prometheus), as its own compose project on free host ports, so it never meets a stack a
developer keeps running. Missing podman or images fail the tests with the command to run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from confluent_kafka.admin import AdminClient, ConsumerGroupDescription

from service.config import ServiceConfig
from service.config.loader import parse_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SH = ROOT / "deploy" / "podman" / "compose.sh"
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
SERVICE_CONFIG = ROOT / "deploy" / "compose" / "service.yaml"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    """The first truthy ``probe()`` within ``timeout`` seconds; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


@dataclass
class Stack:
    """A running compose project and the addresses the host reaches it on."""

    project: str
    bootstrap: str
    registry: str
    prometheus: str
    config: ServiceConfig
    compose: dict[str, Any]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``podman ARGS...``, whatever its exit code."""
        return subprocess.run(
            ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def podman(self, *args: str, timeout: float = 120) -> str:
        """The output of ``podman ARGS...``; fails the test on a non-zero exit."""
        result = self.run(*args, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(f"podman {' '.join(args)}: exit {result.returncode}: {result.stderr}")
        return result.stdout

    def containers(self, service: str) -> list[str]:
        """Names of the service's containers (running or not), sorted."""
        out = self.podman(
            "ps", "-a", "--format", "{{.Names}}",
            "--filter", f"label=io.podman.compose.project={self.project}",
            "--filter", f"label=io.podman.compose.service={service}",
        )  # fmt: skip
        return sorted(out.split())

    def inspect(self, name: str) -> dict[str, Any]:
        (info,) = json.loads(self.podman("inspect", name))
        return dict(info)

    def ip(self, name: str) -> str:
        networks = self.inspect(name)["NetworkSettings"]["Networks"]
        (network,) = networks.values()
        return str(network["IPAddress"])

    @functools.cached_property
    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def group(self) -> ConsumerGroupDescription:
        """The description of the consumer group of the ``payments`` queue."""
        admin = self.admin
        group_id = self.config.queues["payments"].group_id
        future = admin.describe_consumer_groups([group_id], request_timeout=10)[group_id]
        return future.result(timeout=15)


FIGURES_FILE = ROOT / ".local" / "containers-figures.json"


@pytest.fixture(scope="package")
def figures() -> Iterator[dict[str, float]]:
    """Measured figures (seconds, counts), written to .local/containers-figures.json."""
    found: dict[str, float] = {}
    yield found
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    FIGURES_FILE.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="package")
def stack(figures: dict[str, float]) -> Iterator[Stack]:
    """The compose project, up for the tests of this package and removed after them."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: `make images` installs it (docs/containers.md)")
    os.environ.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    project = f"kdtest{uuid.uuid4().hex[:8]}"
    ports = {
        "KAFKA_HOST_PORT": free_port(),
        "REGISTRY_HOST_PORT": free_port(),
        "PROMETHEUS_HOST_PORT": free_port(),
    }
    env = {**os.environ, "COMPOSE_PROJECT": project, **{k: str(v) for k, v in ports.items()}}
    config = parse_config(yaml.safe_load(SERVICE_CONFIG.read_text()), {}, str(SERVICE_CONFIG))
    compose = yaml.safe_load(COMPOSE_FILE.read_text())

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(COMPOSE_SH), command],
            env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip

    started = time.monotonic()
    up = run("up")
    figures["compose_up_s"] = round(time.monotonic() - started, 1)
    try:
        if up.returncode != 0:
            pytest.fail(f"compose up failed (exit {up.returncode}):\n{up.stderr[-4000:]}")
        yield Stack(
            project=project,
            bootstrap=f"127.0.0.1:{ports['KAFKA_HOST_PORT']}",
            registry=f"http://127.0.0.1:{ports['REGISTRY_HOST_PORT']}/apis/ccompat/v7",
            prometheus=f"http://127.0.0.1:{ports['PROMETHEUS_HOST_PORT']}",
            config=config,
            compose=compose,
        )
    finally:
        started = time.monotonic()
        down = run("down")
        figures["compose_down_s"] = round(time.monotonic() - started, 1)
        assert down.returncode == 0, down.stderr[-4000:]
