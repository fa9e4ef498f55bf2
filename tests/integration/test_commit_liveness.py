"""Done work is committed while the member runs, whatever rebalance it meets (real broker).

A member keeps running while another member of its group joins and leaves again at a random
moment (cooperative-sticky: it revokes one partition and keeps the others). During such a
rebalance the broker refuses commits with ILLEGAL_GENERATION, and the revocation commits only
the partitions it gives away. Found by a breaker review: a refused background commit was
never sent again, so a partition whose last message was done stayed uncommitted for as long
as the member ran (and, earlier, the revocation's own commit reset the count of work to
commit). Each trial publishes a wave, waits until every message ran, and requires the
committed offsets to reach the end of every partition within 15 s, without stopping anything.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition

from tests.integration.test_exactly_once_attacks import (
    Proc,
    attack_inputs,
    ledger_runs,
    service_config,
)
from tests.integration.test_service_run import publish, wait_for
from tests.kafka_helpers import committed

pytestmark = pytest.mark.integration
TRIALS, WAVE = 6, 8  # messages per partition per trial


def ends(bootstrap: str, topic: str) -> list[int]:
    consumer = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": "ends"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(3)
        ]
    finally:
        consumer.close()


def join_and_leave(bootstrap: str, group: str) -> None:
    """A second member of ``group`` that takes what it is given, commits nothing, and leaves."""
    joiner = KafkaConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    assigned: list[int] = []
    joiner.subscribe([group], on_assign=lambda c, ps: assigned.extend(p.partition for p in ps))
    deadline = time.monotonic() + 30
    while not assigned and time.monotonic() < deadline:
        joiner.poll(0.1)
    leave_at = time.monotonic() + 0.3
    while time.monotonic() < leave_at:
        joiner.poll(0.1)
    joiner.close()
    assert assigned, "the joiner was never given a partition"


@pytest.mark.parametrize(
    ("concurrency", "ordering", "dedup"),
    [(1, "partition", "compacted"), (4, "none", "none")],
)
def test_done_work_is_committed_while_members_join_and_leave(
    kafka_bootstrap: str, tmp_path: Path, concurrency: int, ordering: str, dedup: str
) -> None:
    queue, _, ledger, setup, env = attack_inputs(
        kafka_bootstrap, tmp_path, "liveness", 0, sleep_ms=60 // concurrency
    )
    config = service_config(
        tmp_path / "c.yaml",
        kafka_bootstrap,
        queue,
        processing="at_least_once",
        concurrency=concurrency,
        ordering=ordering,
        dedup={"kind": dedup},
    )
    member = Proc(config, tmp_path / "m.log", **env)
    rng = random.Random(7)
    total = 0
    try:
        for trial in range(TRIALS):
            publish(setup, queue, 3 * WAVE, start=total)
            total += 3 * WAVE
            time.sleep(rng.uniform(0.0, 1.5))  # the joiner comes mid-wave, or after it
            join_and_leave(kafka_bootstrap, queue)
            wait_for(lambda t=total: set(range(t)) <= set(ledger_runs(ledger)), 60)
            try:
                wait_for(
                    lambda: (
                        committed(kafka_bootstrap, queue, queue, 3) == ends(kafka_bootstrap, queue)
                    ),
                    15,
                )
            except AssertionError:
                raise AssertionError(
                    f"trial {trial}: committed {committed(kafka_bootstrap, queue, queue, 3)} "
                    f"of {ends(kafka_bootstrap, queue)} with every message handled:\n"
                    + member.tail(30)
                ) from None
    finally:
        code = member.stop()
        setup.close()
    assert code == 0, member.tail()
