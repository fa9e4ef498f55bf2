"""The chaos suite's view of the broker: whole topics read to their end, the DLQ's size limit.

How the dead-letter topic is made to refuse (on a single-node Kafka 4.3 broker): its
``max.message.bytes`` is lowered for a window and then reset to the broker default.
``min.insync.replicas`` above the replication factor does not make this broker refuse, and
deleting the topic would also delete the dead letters written before (the suite counts them
at the end). A record larger than the limit is refused for good (``MSG_SIZE_TOO_LARGE``), so
two levels are used:

* :data:`PAYLOAD_REFUSED` - below a poison record's payload (the suite's poison payloads are
  padded to :data:`POISON_PAD` bytes) but above a payload-less dead letter: the service must
  write the dead letter without its payload (``dlq.payload_dropped``);
* :data:`ALL_REFUSED` - below any dead letter: the service must stop loudly
  (``DeadLetterRefusedError``) without committing past the poison message; the driver
  restarts the member and counts the stop.

:data:`ALL_REFUSED` stays above a transaction marker (a control batch of ~80 bytes): the
broker's transaction coordinator writes a commit/abort marker into every partition a
transaction touched, the DLQ's included, and Kafka 4.3 takes a marker refused with
``RecordTooLargeException`` as fatal (``Uncaught error in request completion ... while
sending txn marker``): the transaction stays in its prepare state, and that transactional
id (and any whose markers went in the same request) answers ``CONCURRENT_TRANSACTIONS``
until the broker restarts. No real topic takes records that small, so the exactly-once run
keeps the markers in and refuses the dead letters only.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

# Defined there; confluent_kafka.admin re-exports them without declaring it (mypy --strict).
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from tests.kafka_helpers import committed

POISON_PAD = 8192  # bytes of padding in a poison message's payload
PAYLOAD_REFUSED = 4096  # max.message.bytes: the full dead letter no, the payload-less one yes
ALL_REFUSED = 256  # max.message.bytes: no dead letter at all (a payload-less one: ~550 B)


@dataclass(frozen=True, slots=True)
class Record:
    """What the checks need of a record: where it is, its headers, its payload size."""

    partition: int
    offset: int
    headers: dict[str, str]
    size: int

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)


def set_max_message_bytes(bootstrap: str, topic: str, limit: int | None) -> None:
    """Set the topic's ``max.message.bytes`` (``None``: back to the broker default)."""
    entry = ConfigEntry(
        "max.message.bytes",
        "" if limit is None else str(limit),
        incremental_operation=AlterConfigOpType.DELETE if limit is None else AlterConfigOpType.SET,
    )
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    time.sleep(1.0)  # the partitions' logs take the new limit asynchronously


def read_all(
    bootstrap: str, topic: str, timeout: float = 120.0, *, committed_only: bool = True
) -> list[Record]:
    """Every record of ``topic`` up to its end as of now (headers decoded as UTF-8).

    ``committed_only`` reads with ``isolation.level=read_committed`` (librdkafka's default):
    records of aborted transactions are skipped, and a partition is read to its end once the
    consumer's position passes the end seen at the start (a position moves past transaction
    markers and aborted records, which the consumer never returns); records of a transaction
    still open then are waited for. False reads every record written (``read_uncommitted``).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        ends: dict[int, int] = {}
        for partition in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        records: list[Record] = []
        left = dict(ends)
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                pairs: list[tuple[str, bytes | None]] = message.headers() or []  # type: ignore[assignment]
                headers = {name: (value or b"").decode("utf-8", "replace") for name, value in pairs}
                records.append(Record(partition, offset, headers, len(message.value() or b"")))
                if offset + 1 >= left.get(partition, 0):
                    left.pop(partition, None)
            if left:
                positions = consumer.position([TopicPartition(topic, p) for p in left])
                for tp in positions:
                    if tp.offset >= left[tp.partition]:
                        left.pop(tp.partition)
        if left:
            raise RuntimeError(f"{topic}: partitions {sorted(left)} not read to the end")
        return records
    finally:
        consumer.close()


def dead_letters(bootstrap: str, dlq: str) -> set[tuple[str, str]]:
    """The locations (partition, offset) of the originals in the dead-letter topic."""
    return {
        (r.header("dlq.original_partition"), r.header("dlq.original_offset"))
        for r in read_all(bootstrap, dlq)
    }


def committed_total(bootstrap: str, group: str, partitions: int) -> int:
    """The offsets ``group`` committed on its topic (named as the group) summed; 0 while
    they cannot be read."""
    try:
        return sum(max(0, offset) for offset in committed(bootstrap, group, group, partitions))
    except KafkaException:  # e.g. offsets pending in a transaction for longer than the timeout
        return 0
