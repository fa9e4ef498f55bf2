"""Reading the dedup topic: partition counts and their check, and the restore."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from service.backends.kafka.errors import TRANSIENT_CODES
from service.errors import DeduplicationStoreError

__all__ = [
    "DIGEST_SIZE",
    "EXPIRY_BYTES",
    "RESTORE_CONSUMER_CONFIG",
    "check_partitions",
    "partition_counts",
    "restore_partitions",
]

logger = logging.getLogger(__name__)

DIGEST_SIZE = 16
EXPIRY_BYTES = 8
METADATA_TIMEOUT = 10.0
RESTORE_CONSUMER_CONFIG: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.partition.eof": True,
    "fetch.queue.backoff.ms": 10,
    "isolation.level": "read_committed",
    "max.partition.fetch.bytes": 262_144,
    "queued.min.messages": 20_000,
    "queued.max.messages.kbytes": 16_384,
}
"""The restore consumer's settings (docs/performance.md, "Dedup restore", has the figures).

A 10 ms fetch back-off (librdkafka waits 1000 ms before refetching a partition whose
queue was full: a restore drains it in milliseconds), and a bounded prefetch: fetches of
up to 256 KiB per partition (~6,500 entries; a larger first record batch still comes
whole), refetched while a partition holds fewer than 20,000 records, 16 MiB in all. That
keeps the fetcher ahead of the loop; prefetching whole partitions (1,000,000 records,
256 MiB, 10 MiB fetches, as before) only raised the peak memory (~440 MiB for 1,000,000
keys) without reading faster, and 1 MiB fetches added ~30 MiB to the peak.
``enable.partition.eof`` also ends a partition whose log shrank below the end taken at
assignment. ``read_committed`` (librdkafka's default, stated because it is a contract):
entries staged in a transaction that aborted are never restored, else they would suppress
the redelivered messages whose outputs the abort undid."""
RESTORE_BATCH = 500
"""Records per ``consume()`` call. Small on purpose: each batch's message objects are freed
before the next batch is made, so the allocations never reach the garbage collector's
first threshold (700 by default) and a restore runs no collection; with 10,000 per call
the collector ran ~1,400 times per 1,000,000 records (10 full collections), ~15% of the
restore."""
RESTORE_WAIT = 0.1
"""Seconds a ``consume()`` call waits for a full batch. The last call asks for no more
than is left, so it returns with the last record; only a compacted log (fewer records
than offsets) waits this out once at its end. (With 10,000 and 0.5 s every restore
waited 0.5 s at its end: a restore of 1,000 keys took ~0.51 s, now ~0.02 s.)"""
# a topic just created has no leader for a moment
_PASSING_CODES = TRANSIENT_CODES | {KafkaError.UNKNOWN_TOPIC_OR_PART}
# the watermark read also passes librdkafka's own "unknown partition / topic" (_watermarks)
_WATERMARK_PASSING_CODES = _PASSING_CODES | {
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
}
PATIENCE = 300.0
"""Seconds a restore keeps trying while the brokers cannot be reached (an outage, a member
frozen mid-restore): broker errors are retried while they last, as everywhere else; past
this the member stops loudly and a restart tries again."""


def _passing(exc: KafkaException, codes: frozenset[int] = _PASSING_CODES) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() in codes


def partition_counts(consumer: Consumer, topics: Iterable[str]) -> dict[str, int]:
    """The partition count of each existing topic named or matched (``^regex``) by ``topics``.

    Uses a consumer's metadata request, which never auto-creates a topic. Missing topics
    (or topics this principal may not DESCRIBE) are absent from the answer.

    Raises:
        DeduplicationStoreError: the brokers did not answer.
    """
    wanted = list(topics)
    patterns = [re.compile(t) for t in wanted if t.startswith("^")]
    names = [t for t in wanted if not t.startswith("^")]
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            if patterns or len(names) != 1:
                metadata = consumer.list_topics(timeout=METADATA_TIMEOUT)
            else:
                metadata = consumer.list_topics(names[0], timeout=METADATA_TIMEOUT)
            break
        except KafkaException as exc:
            if _passing(exc) and time.monotonic() < deadline:
                logger.warning("dedup: brokers unreachable, retrying: %s", exc)
                time.sleep(1.0)
                continue
            raise DeduplicationStoreError(
                f"cannot read the metadata of {', '.join(wanted)}: {exc}"
            ) from exc
    counts: dict[str, int] = {}
    for name, topic in metadata.topics.items():
        if topic.error is not None or not topic.partitions:
            continue
        if name in names or any(p.match(name) for p in patterns):
            counts[name] = len(topic.partitions)
    return counts


def check_partitions(
    consumer: Consumer, topic: str, known: int | None, assigned: Iterable[tuple[str, int]]
) -> int:
    """The dedup topic's partition count, if it has a partition for every ``assigned`` one.

    Entries of input partition *p* live in dedup partition *p*. ``known`` is the count
    seen before (asked again when an input partition is beyond it: the topic may have
    grown).

    Raises:
        DeduplicationStoreError: the topic is missing, or has too few partitions; the text
            names both counts and the command that fixes it.
    """
    pairs = sorted(set(assigned))
    highest = max(p for _, p in pairs)
    have = known
    deadline = time.monotonic() + 5.0  # a topic just created may not be visible at once
    while have is None or highest >= have:
        have = partition_counts(consumer, [topic]).get(topic)
        if have is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if have is None:
        raise DeduplicationStoreError(
            f"dedup topic {topic} does not exist (or this principal may not DESCRIBE it); "
            "create it (cleanup.policy=compact,delete) with the input topics' partition "
            "count, or let the service create it (CREATE permission)"
        )
    beyond = [(t, p) for t, p in pairs if p >= have]
    if not beyond:
        return have
    inputs = partition_counts(consumer, sorted({t for t, _ in beyond}))
    needed = max([*(p + 1 for _, p in beyond), *inputs.values()])
    counts = ", ".join(f"{t} has {n}" for t, n in sorted(inputs.items()))
    raise DeduplicationStoreError(
        f"dedup topic {topic} has {have} partitions, but input topic {counts or 'has more'} "
        f"(assigned {', '.join(f'{t}[{p}]' for t, p in beyond)}): entries of input "
        f"partition p live in dedup partition p, so the dedup topic needs {needed}. Add "
        f"partitions (kafka-topics.sh --alter --topic {topic} --partitions {needed}; its "
        "entries stay valid), then restart",
        partitions=[p for _, p in beyond],
    )


def restore_partitions(
    consumer: Consumer,
    topic: str,
    targets: Mapping[int, dict[int, int]],
    now_ms: int,
    expiry_of: Callable[[int], int],
) -> int:
    """Read dedup partitions ``targets`` from the beginning to their current end.

    Each record is applied to ``targets[its partition]`` (digest as an int -> expiry, in
    the order read, see :class:`~service.dedup.entries.PartitionEntries`): an unexpired
    entry is set, an expired one or a tombstone removes its key. Records written after the
    end was taken may be applied too: they are valid entries. A partition is read once the
    consumer's position reaches the end taken at assignment (with ``read_committed``,
    librdkafka's default, the last stable offset: a transaction still open is not waited
    for), or the consumer reports the partition's end (``enable.partition.eof``: what ends
    it should the log have shrunk below the end taken, e.g. after an unclean leader
    election).

    Args:
        consumer: a consumer of the dedup topic's cluster made with
            :data:`RESTORE_CONSUMER_CONFIG`, closed by the caller.
        topic: the dedup topic.
        targets: the maps to fill, by dedup partition.
        now_ms: epoch milliseconds against which expiries are judged.
        expiry_of: the shared expiry object for a wire value in milliseconds.

    Returns:
        The number of unexpired entries read.

    Raises:
        DeduplicationStoreError: the topic cannot be read.
    """
    ends: dict[int, int] = {}
    starts: dict[int, int] = {}
    for partition in targets:
        low, high = _watermarks(consumer, topic, partition)
        if high > low:
            ends[partition], starts[partition] = high, low
    consumer.assign([KafkaTopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    loader = _Loader(topic, targets, now_ms, expiry_of)
    consume, position, load = consumer.consume, consumer.position, loader.load
    reading = [KafkaTopicPartition(topic, p) for p in ends]
    left = sum(ends[p] - starts[p] for p in ends)
    while ends:
        # ask for no more than is left: the last call returns with the last record
        # instead of waiting out its timeout (a compacted log has fewer: then it waits)
        load(consume(min(RESTORE_BATCH, left), RESTORE_WAIT))
        left = 0
        for tp in position(reading):
            number, offset = tp.partition, tp.offset
            if offset >= ends[number] or number in loader.ended:
                del ends[number]
            else:  # a negative offset: nothing of the partition consumed yet
                left += ends[number] - (offset if offset >= 0 else starts[number])
        if len(reading) != len(ends):
            reading = [KafkaTopicPartition(topic, p) for p in ends]
    return loader.count


def _watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    """The partition's low and high offsets, retrying what passes (a new topic, an outage).

    The partition was found in the topic's metadata just before (:func:`check_partitions`),
    so librdkafka's own "unknown partition / topic" here is its metadata cache emptied by
    an outage (seen once when a broker came back mid-restore), retried like one.
    """
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                KafkaTopicPartition(topic, partition), timeout=METADATA_TIMEOUT
            )
            return low, high
        except KafkaException as exc:
            if _passing(exc, _WATERMARK_PASSING_CODES) and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise DeduplicationStoreError(
                f"cannot read dedup topic {topic}[{partition}] (no READ permission, or "
                f"the broker is unreachable?): {exc}"
            ) from exc


class _Loader:
    """Applies batches of dedup records; the hot loop of a restore, kept flat.

    ``expiries`` maps each wire value seen to its shared expiry, and starts with a
    tombstone (``None``) mapped to 0, so a tombstone takes the path of an expired entry:
    its key is removed. One dict lookup per record decides; the partition's map is looked
    up again only when the partition changes (a batch holds runs of one partition).
    """

    def __init__(
        self,
        topic: str,
        targets: Mapping[int, dict[int, int]],
        now_ms: int,
        expiry_of: Callable[[int], int],
    ) -> None:
        self.topic = topic
        self.targets = targets
        self.now_ms = now_ms
        self.expiry_of = expiry_of
        self.expiries: dict[bytes | None, int] = {None: 0}  # wire value -> shared expiry
        self.ended: set[int] = set()  # partitions the consumer said it reached the end of
        self.count = 0

    def load(self, batch: list[Any]) -> None:
        """Apply ``batch`` (one ``consume()`` answer) in order."""
        count = 0
        targets, expiries, now_ms, digest_size, from_bytes = (
            self.targets,
            self.expiries,
            self.now_ms,
            DIGEST_SIZE,
            int.from_bytes,
        )
        number, entries = -1, None
        for record in batch:
            if record.error() is not None:
                self._error(record)
                continue
            if record.partition() != number:
                number = record.partition()
                entries = targets[number]
            value = record.value()
            expiry = expiries.get(value)
            if expiry is None:
                expiry = self._expiry(record, value)
                if expiry is None:
                    continue
            key = record.key()
            if key is not None and len(key) == digest_size:
                if expiry > now_ms:
                    entries[from_bytes(key, "big")] = expiry  # type: ignore[index]
                    count += 1
                else:  # expired, or a tombstone
                    entries.pop(from_bytes(key, "big"), None)  # type: ignore[union-attr]
            elif value is not None:  # a tombstone of a bad key has nothing to remove
                self._skip(record, "key")
        self.count += count

    def _expiry(self, record: Any, value: bytes) -> int | None:
        """The expiry of a wire value not seen before; None (logged) if it is not one."""
        if len(value) != EXPIRY_BYTES:
            self._skip(record, "value")
            return None
        expiry = self.expiries[value] = self.expiry_of(int.from_bytes(value, "big"))
        return expiry

    def _error(self, record: Any) -> None:
        error = record.error()
        code = error.code()
        if code == KafkaError._PARTITION_EOF:
            self.ended.add(record.partition())
        elif code not in _PASSING_CODES:  # those are retried by the client while they last
            raise DeduplicationStoreError(f"restoring {self.topic}: {error}")

    def _skip(self, record: Any, what: str) -> None:
        logger.warning(
            "dedup %s[%s]@%s: skipped a record with a bad %s",
            self.topic,
            record.partition(),
            record.offset(),
            what,
        )
