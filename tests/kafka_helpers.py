"""Helpers for tests on the real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from service import Message
from service.backends.kafka import KafkaBackend

# Short session timeout so a killed member's partitions move quickly (broker minimum: 6 s).
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def kafka_backend(bootstrap: str, **options: Any) -> KafkaBackend:
    options.setdefault("consumer_config", FAST_GROUP)
    options.setdefault("startup_timeout", 20.0)
    return KafkaBackend(bootstrap, **options)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def read_topic(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 15.0,
    client: Mapping[str, Any] | None = None,
) -> list[Message]:
    """Read ``topic`` from the beginning until ``count`` records or ``timeout``.

    ``client``: extra librdkafka settings (e.g. SASL credentials).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",  # what exactly-once readers must use
            **(client or {}),
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for record in consumer.consume(count - len(got), 0.5):
                if record.error() is None:
                    got.append(
                        Message(
                            record.topic() or "",
                            record.value(),
                            tuple(record.headers() or ()),  # type: ignore[arg-type]
                            record.key(),
                            record.partition() or 0,
                            record.offset() or 0,
                        )
                    )
        return got
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> list[int]:
    """The committed offsets of ``group`` on ``topic`` (-1001 when none).

    Asks again for up to 10 s while the group's coordinator is moving or loading (as right
    after a broker freeze or restart): that is the broker answering "not yet", not a result.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                tps = consumer.committed(
                    [TopicPartition(topic, p) for p in range(partitions)], timeout=10
                )
                return [tp.offset for tp in tps]
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


_COORDINATOR_BUSY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)


def broker_pid(workdir: Path) -> int:
    """The pid of the local JVM broker whose command line names ``workdir``."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "kafka.Kafka" in cmdline and str(workdir.resolve()) in cmdline:
                return int(proc.name)
    raise RuntimeError(f"no broker running from {workdir}")
