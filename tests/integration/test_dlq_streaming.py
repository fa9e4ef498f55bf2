"""Replaying a large dead-letter topic streams: memory stays bounded, the range is fixed."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import tracemalloc
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from service.backends.kafka.dead_letters import DeadLetterReader, Republisher
from tests.integration.test_cli_ops import ROOT, write_config
from tests.kafka_helpers import unique

pytestmark = pytest.mark.integration
RECORDS = 3000
VALUE_SIZE = 8 * 1024  # 24 MiB in all


def create(bootstrap: str, *topics: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, 2, 1) for t in topics]).values():
        future.result(timeout=30)


def fill(bootstrap: str, dead_letters: str, original: str, count: int, size: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for number in range(count):
        while True:
            try:
                producer.produce(
                    dead_letters,
                    bytes([number % 251]) * size,
                    f"k-{number}".encode(),
                    headers=[
                        ("message_id", f"m-{number}".encode()),
                        ("dlq.original_topic", original.encode()),
                    ],
                )
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def total_records(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("ends")})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)
        )
    finally:
        consumer.close()


def test_replay_holds_a_bounded_batch_not_the_topic(kafka_bootstrap: str) -> None:
    dead_letters, original = unique("big.dlq"), unique("big")
    create(kafka_bootstrap, dead_letters, original)
    fill(kafka_bootstrap, dead_letters, original, RECORDS, VALUE_SIZE)
    client = {"bootstrap.servers": kafka_bootstrap}
    outcomes: list[str | None] = []

    tracemalloc.start()
    try:
        with DeadLetterReader(client, dead_letters, None, 20.0) as reader:
            assert reader.span == RECORDS  # sized from the watermarks before reading
            fill(kafka_bootstrap, dead_letters, original, 10, 10)  # after the range: not read
            publisher = Republisher(client, {}, 30.0, max_in_flight=200)
            for message in reader.records():
                publisher.send(original, message, outcomes.append)
            publisher.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert outcomes == [None] * RECORDS
    assert publisher.peak_in_flight <= 200
    assert total_records(kafka_bootstrap, original) == RECORDS
    held = RECORDS * VALUE_SIZE
    assert peak < held / 3, f"peak {peak / 2**20:.1f} MiB of {held / 2**20:.0f} MiB replayed"


def test_a_terminal_gets_a_progress_bar(kafka_bootstrap: str, tmp_path: Path) -> None:
    queue, original = unique("q"), unique("orders")
    create(kafka_bootstrap, f"{queue}.dlq", original)
    fill(kafka_bootstrap, f"{queue}.dlq", original, 5, 10)
    config = write_config(tmp_path, kafka_bootstrap, {queue: {"topics": [original]}})
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, cols
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL")
    }
    try:
        result = subprocess.run(
            [sys.executable, "-m", "service", "dlq", "replay", "--queue", queue, "-c", str(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
    assert result.returncode == 0, drawn.decode(errors="replace")
    assert result.stdout.strip() == f"replayed 5 dead letter(s) to {original}"
    assert b"\r" in drawn and b"replaying" in drawn and b"5/5" in drawn
