"""The compose consumer group on real containers: membership, health, scraping, hardening."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import MemberDescription

from tests.containers.conftest import Stack, wait_for

TOPIC = "payments"


def stable_members(stack: Stack, count: int) -> list[MemberDescription] | None:
    """The group's members once it is stable with ``count`` members owning every partition."""
    group = stack.group()
    owned = sorted(
        tp.partition for m in group.members for tp in m.assignment.topic_partitions
        if tp.topic == TOPIC
    )  # fmt: skip
    if (
        group.state == ConsumerGroupState.STABLE
        and len(group.members) == count
        and owned == list(range(stack.config.kafka.partitions))
    ):
        return list(group.members)
    return None


def test_three_replicas_form_one_group_two_partitions_each(stack: Stack) -> None:
    replicas = stack.compose["services"]["consumer"]["deploy"]["replicas"]
    partitions = stack.config.kafka.partitions
    assert (replicas, partitions) == (3, 6)
    members = wait_for("3 members owning the 6 partitions", lambda: stable_members(stack, 3), 60)
    assert sorted(len(m.assignment.topic_partitions) for m in members) == [2, 2, 2]
    # one member per replica container, by address
    hosts = sorted(m.host.lstrip("/") for m in members)
    assert hosts == sorted(stack.ip(name) for name in stack.containers("consumer"))


def test_replicas_report_healthy(stack: Stack) -> None:
    names = stack.containers("consumer")
    assert len(names) == 3
    for name in names:
        info = stack.inspect(name)
        assert info["State"]["Running"], name
        assert "/healthz" in " ".join(info["Config"]["Healthcheck"]["Test"])
        health = wait_for(
            f"{name} healthy", lambda n=name: _health(stack, n, "healthy"), 60, every=1
        )
        assert health["Log"], "the health check ran"
        assert health["Log"][-1]["ExitCode"] == 0
    # the image itself carries the check too (built with --format docker)
    image = json.loads(stack.podman("image", "inspect", stack.inspect(names[0])["ImageName"]))[0]
    assert "/healthz" in " ".join(image["Healthcheck"]["Test"])


def _health(stack: Stack, name: str, status: str) -> dict[str, Any] | None:
    health = stack.inspect(name)["State"]["Health"]
    return dict(health) if health["Status"] == status else None


def _prometheus(stack: Stack, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(stack.prometheus + path, timeout=10) as response:  # noqa: S310
        body: dict[str, Any] = json.load(response)
    assert body["status"] == "success", body
    return body


def test_prometheus_scrapes_every_replica(stack: Stack) -> None:
    replicas = sorted(stack.ip(name) for name in stack.containers("consumer"))

    def up_targets() -> list[str] | None:
        targets = _prometheus(stack, "/api/v1/targets")["data"]["activeTargets"]
        up = sorted(
            t["labels"]["instance"].rsplit(":", 1)[0] for t in targets
            if t["labels"]["job"] == "kafka-dispatch" and t["health"] == "up"
        )  # fmt: skip
        return up if up == replicas else None

    wait_for("prometheus scraping the 3 replicas", up_targets, 60, every=1)

    def assigned() -> float | None:
        query = "/api/v1/query?query=sum(kafka_dispatch_assigned_partitions)"
        result = _prometheus(stack, query)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    # the scraped series are the service's own: the replicas hold the 6 partitions between them
    total = wait_for("assigned partitions scraped", assigned, 30, every=1)
    assert total == stack.config.kafka.partitions


def test_service_runs_as_non_root_on_a_read_only_root(stack: Stack) -> None:
    name = stack.containers("consumer")[0]
    info = stack.inspect(name)
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert stack.podman("exec", name, "id", "-u").strip() == "10001"
    status = stack.podman("exec", name, "cat", "/proc/1/status")
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"10001"}, "the service process (pid 1) runs as 10001"
    # the root filesystem refuses writes even where the user may write (/app is 10001's)
    denied = stack.run("exec", name, "sh", "-c", "echo x > /app/probe")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert stack.run("exec", name, "sh", "-c", "echo x > /tmp/probe").returncode == 0
