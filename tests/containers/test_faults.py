"""Faults on the compose group: a replica SIGKILLed, another stopped; the ledger balances.

The demo publisher sends payment commands (``payments``) while one replica is killed
(``podman kill``: SIGKILL) and another stopped (``podman stop``: SIGTERM, then the grace
period). Every command must come out as exactly one event on ``payment-events``
(PaymentCompleted or PaymentFailed), except that a SIGKILL may repeat work whose dedup entry
was not yet confirmed: at most ``max_in_flight`` of the queue per kill (README, deduplication).
"""

from __future__ import annotations

import collections
import io
import json
import time
import urllib.request
import uuid
from functools import cache
from typing import Any

import fastavro
from confluent_kafka import Consumer, ConsumerGroupState, TopicPartition

from tests.containers.conftest import Stack, wait_for
from tests.containers.test_compose_group import TOPIC, stable_members
from tests.kafka_helpers import read_topic

EVENTS_TOPIC = "payment-events"
# a rebalance after the session expired takes a moment more
REBALANCE_SLACK_S = 5.0


def test_kill_and_stop_of_replicas_lose_nothing(stack: Stack, figures: dict[str, float]) -> None:
    members = wait_for("3 stable members", lambda: stable_members(stack, 3), 60)
    replicas = stack.containers("consumer")
    by_ip = {m.host.lstrip("/"): m.member_id for m in members}
    wait_for("the publisher's first commands", lambda: _end_offsets(stack, TOPIC), 60)

    # SIGKILL one replica: its member must be gone and its partitions owned by live members
    # within the session timeout (plus the rebalance itself)
    victim = replicas[0]
    victim_member = by_ip[stack.ip(victim)]
    session_s = float(stack.config.kafka.consumer["session.timeout.ms"]) / 1000
    killed_at = time.monotonic()
    stack.podman("kill", victim)
    wait_for(
        f"{victim}'s partitions moved to live members",
        lambda: _reassigned_without(stack, victim_member),
        session_s + REBALANCE_SLACK_S + 30,
        every=0.25,
    )
    moved_after = time.monotonic() - killed_at
    figures["kill_partitions_moved_s"] = round(moved_after, 1)
    assert moved_after <= session_s + REBALANCE_SLACK_S, f"moved after {moved_after:.1f}s"

    # graceful stop of another: exit 0 inside compose's stop_grace_period
    stopped = replicas[1]
    grace = float(stack.compose["services"]["consumer"]["stop_grace_period"].removesuffix("s"))
    stop_at = time.monotonic()
    stack.podman("stop", "-t", str(int(grace)), stopped, timeout=grace + 30)
    stop_took = time.monotonic() - stop_at
    figures["graceful_stop_s"] = round(stop_took, 1)
    state = stack.inspect(stopped)["State"]
    assert state["ExitCode"] == 0, f"{stopped} exited {state['ExitCode']}"
    assert stop_took < grace, f"stop took {stop_took:.1f}s (grace {grace:.0f}s)"

    # no more traffic; the group (whatever members are left) must finish all of it
    (publisher,) = stack.containers("publisher")
    stack.podman("kill", publisher)
    ends = _end_offsets(stack, TOPIC)
    wait_for("the group caught up", lambda: _caught_up(stack, ends), 180, every=1)

    commands = _payment_ids(stack, TOPIC, sum(ends.values()), "DoPayment")
    assert len(commands) >= 100, "the publisher published"
    assert len(set(commands)) == len(commands)
    events = collections.Counter(
        _payment_ids(stack, EVENTS_TOPIC, sum(_end_offsets(stack, EVENTS_TOPIC).values()))
    )
    lost = set(commands) - set(events)
    assert not lost, f"{len(lost)} of {len(commands)} commands never processed"
    assert set(events) <= set(commands)
    duplicates = sum(count - 1 for count in events.values())
    figures.update(ledger_commands=len(commands), ledger_duplicates=duplicates)
    kills = 1
    bound = kills * (stack.config.queues["payments"].max_in_flight or 0)
    assert duplicates <= bound, f"{duplicates} repeated side effects (bound {bound})"

    # leave the stack whole (a killed or stopped container is not restarted by its policy)
    stack.podman("start", victim, stopped)


def _reassigned_without(stack: Stack, gone: str) -> bool:
    group = stack.group()
    owned = sorted(
        tp.partition for m in group.members for tp in m.assignment.topic_partitions
        if tp.topic == TOPIC
    )  # fmt: skip
    return (
        group.state == ConsumerGroupState.STABLE
        and gone not in {m.member_id for m in group.members}
        and owned == list(range(stack.config.kafka.partitions))
    )


def _consumer(stack: Stack) -> Consumer:
    return Consumer(
        {"bootstrap.servers": stack.bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:8]}"}
    )


def _end_offsets(stack: Stack, topic: str) -> dict[int, int]:
    """High watermark per partition (only partitions that have records)."""
    consumer = _consumer(stack)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10) for p in partitions}
        return {p: high for p, (_, high) in ends.items() if high > 0}
    finally:
        consumer.close()


def _caught_up(stack: Stack, ends: dict[int, int]) -> bool:
    group_id = stack.config.queues["payments"].group_id
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": group_id})
    try:
        tps = consumer.committed([TopicPartition(TOPIC, p) for p in ends], timeout=10)
        return all(tp.offset >= ends[tp.partition] for tp in tps)
    finally:
        consumer.close()


def _payment_ids(stack: Stack, topic: str, count: int, record: str = "") -> list[str]:
    """``payment_id`` of every Avro record of ``topic`` (whose schema name ends with ``record``)."""
    ids = []
    messages = read_topic(stack.bootstrap, topic, count, timeout=60)
    assert len(messages) == count, f"read {len(messages)} of {count} records of {topic}"
    for message in messages:
        value = message.value or b""
        assert value[:1] == b"\0", "Confluent framing"
        schema = _schema(stack.registry, int.from_bytes(value[1:5], "big"))
        if not schema["name"].endswith(record):
            continue
        decoded: Any = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema)
        ids.append(str(decoded["payment_id"]))
    return ids


@cache
def _schema(registry: str, schema_id: int) -> Any:
    url = f"{registry}/schemas/ids/{schema_id}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
        text = json.load(response)["schema"]
    return fastavro.parse_schema(json.loads(text))
