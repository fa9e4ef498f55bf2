"""CompactedTopicCache: the deduplication store kept in a log-compacted Kafka topic.

Layout: one topic per consumer group (default ``<group>.dedup``), ``cleanup.policy=
compact,delete`` with ``retention.ms`` = the window, so it cannot grow without limit. A
record's key is a 16-byte BLAKE2b digest of the dedup key; its value the entry's expiry as
8 bytes (milliseconds since the epoch, big-endian). Entries of messages from input partition
*p* live in dedup partition *p*.

Contract:

* On assignment of input partitions the store restores their dedup partitions, from the
  beginning to the end offset seen at that moment, before any message of them is delivered
  (the restore runs inside the rebalance callback; :attr:`is_ready` is false meanwhile). On
  revocation their entries are dropped from memory.
* :meth:`store` writes an entry with an idempotent producer (``acks=all``) after the consumer
  succeeded; :meth:`confirm` reports once the broker confirmed it, and only then does the
  dispatcher acknowledge the message, so its offset is committed after its entries are
  durable. A crash can repeat a consumer only in the window between its success and the
  confirmation of its entry.
* Memory: a digest and a shared expiry per key (measured by ``make bench``).
* Bad state: a record that does not parse is skipped with a warning; a missing topic or
  a refused permission is a :class:`~service.errors.DeduplicationStoreError`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from service.backends.base import Subscription, TopicPartition
from service.dedup.base import Confirmation, DeduplicationCache
from service.errors import ConfigurationError, DeduplicationStoreError

if TYPE_CHECKING:
    from service.backends.kafka.backend import KafkaBackend

__all__ = ["CompactedTopicCache"]

logger = logging.getLogger(__name__)

DIGEST_SIZE = 16
_EXPIRY_BYTES = 8
WEEK = 7 * 24 * 3600.0


def digest(key: str) -> bytes:
    """The 16-byte digest a key is stored under."""
    return hashlib.blake2b(key.encode(), digest_size=DIGEST_SIZE).digest()


class CompactedTopicCache(DeduplicationCache):
    """Deduplication entries in a compacted topic, restored per assigned partition.

    Args:
        backend: the Kafka backend (connection settings and topic creation).
        topic: the dedup topic, e.g. ``<group>.dedup``.
        window: seconds an entry suppresses duplicates; also the topic's retention.
        partitions: the dedup topic's partitions when it is created: at least the input
            topics' partition count.
        clock: wall-clock seconds (tests pass a fake one).
    """

    def __init__(
        self,
        backend: KafkaBackend,
        topic: str,
        *,
        window: float = WEEK,
        partitions: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window <= 0:
            raise ConfigurationError(f"dedup window must be positive, got {window}")
        self.topic = topic
        self.window = window
        self._backend = backend
        self._clock = clock
        self._entries: dict[int, dict[bytes, int]] = {}  # dedup partition -> digest -> expiry
        self._owners: dict[int, set[TopicPartition]] = {}  # why a dedup partition is loaded
        self._expiries: dict[int, int] = {}  # shared expiry ints, one per second
        self._produced: dict[int, int] = {}
        self._delivered: dict[int, int] = {}
        self._failures: dict[int, BaseException] = {}
        self._waiting: dict[int, deque[tuple[int, Confirmation]]] = {}
        self._restoring = 0
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self.restored_keys = 0
        self.restore_seconds = 0.0
        backend.create_topics(
            {topic: partitions},
            config={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(int(window * 1000)),
            },
        )

    # -- the DeduplicationCache contract ------------------------------------------------
    def get(self, key: str) -> str | None:
        """``key`` itself while an unexpired entry exists (values are not kept), else None."""
        wanted = digest(key)
        now_ms = int(self._clock() * 1000)
        for entries in list(self._entries.values()):
            expiry = entries.get(wanted)
            if expiry is not None and expiry > now_ms:
                return key
        return None

    def store(
        self, key: str, value: str, expire: float | None = None, *, partition: int | None = None
    ) -> None:
        """Write the entry of ``key`` to dedup partition ``partition`` (asynchronously).

        Raises:
            DeduplicationStoreError: the record could not be queued.
        """
        del value
        target = 0 if partition is None else partition
        expiry = self._expiry(self._clock() + (self.window if expire is None else expire))
        key_digest = digest(key)
        self._entries.setdefault(target, {})[key_digest] = expiry
        producer = self._producer_client()
        try:
            producer.produce(
                self.topic,
                expiry.to_bytes(_EXPIRY_BYTES, "big"),
                key_digest,
                partition=target,
                on_delivery=self._on_delivery,
            )
        except (BufferError, KafkaException) as exc:
            raise DeduplicationStoreError(
                f"cannot write a dedup entry to {self.topic}[{target}]: {exc}"
            ) from exc
        self._produced[target] = self._produced.get(target, 0) + 1
        producer.poll(0)

    def confirm(self, partition: int | None, callback: Confirmation) -> None:
        """Call ``callback`` once every entry stored so far to ``partition`` is confirmed."""
        target = 0 if partition is None else partition
        threshold = self._produced.get(target, 0)
        if self._delivered.get(target, 0) >= threshold and target not in self._failures:
            callback(None)
            return
        self._waiting.setdefault(target, deque()).append((threshold, callback))

    def poll(self) -> None:
        """Serve delivery reports (and so confirmations) without waiting."""
        if self._producer is not None:
            self._producer.poll(0)

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every entry to be confirmed."""
        if self._producer is not None:
            self._producer.flush(timeout)

    def attach(self, subscription: Subscription) -> None:
        """Restore and drop dedup partitions as ``subscription``'s assignment changes."""
        subscription.add_listener(self)

    @property
    def is_ready(self) -> bool:
        """False while a restore is running."""
        return self._restoring == 0

    def __len__(self) -> int:
        """Entries held in memory, expired ones included until dropped."""
        return sum(len(e) for e in self._entries.values())

    # -- confirmations ------------------------------------------------------------------
    def _producer_client(self) -> Producer:
        if self._producer is None:
            self._producer = self._backend.new_producer(
                {"enable.idempotence": True, "acks": "all", "linger.ms": 2}
            )
        return self._producer

    def _on_delivery(self, error: KafkaError | None, record: Any) -> None:
        partition = record.partition()
        if error is not None:
            self._failures[partition] = DeduplicationStoreError(
                f"dedup entry not confirmed by {self.topic}[{partition}]: {error.str()}"
            )
        delivered = self._delivered[partition] = self._delivered.get(partition, 0) + 1
        waiting = self._waiting.get(partition)
        while waiting and waiting[0][0] <= delivered:
            _, callback = waiting.popleft()
            callback(self._failures.get(partition))
        if not waiting:
            self._failures.pop(partition, None)

    def _expiry(self, seconds: float) -> int:
        second = int(seconds)
        shared = self._expiries.get(second)
        if shared is None:
            if len(self._expiries) > 100_000:
                self._expiries.clear()
            shared = self._expiries[second] = second * 1000
        return shared

    # -- assignment -----------------------------------------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Restore the dedup partitions of ``partitions`` that are not loaded yet."""
        missing: list[int] = []
        for topic, partition in partitions:
            owners = self._owners.setdefault(partition, set())
            if not owners and partition not in self._entries:
                missing.append(partition)
            owners.add((topic, partition))
        if missing:
            self._restore(sorted(set(missing)))

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Confirm what is pending, then drop the entries no assigned partition needs."""
        self.flush(self._backend.dead_letter_timeout)
        for topic, partition in partitions:
            owners = self._owners.get(partition, set())
            owners.discard((topic, partition))
            if not owners:
                self._owners.pop(partition, None)
                self._entries.pop(partition, None)

    def _restore(self, partitions: list[int]) -> None:
        self._restoring += 1
        started = time.monotonic()
        try:
            count = self._read(partitions)
        finally:
            self._restoring -= 1
        elapsed = time.monotonic() - started
        self.restored_keys += count
        self.restore_seconds += elapsed
        logger.info(
            "dedup %s: restored %d entries of partitions %s in %.2fs",
            self.topic,
            count,
            partitions,
            elapsed,
        )

    def _read(self, partitions: list[int]) -> int:
        consumer = self._backend.new_consumer(
            {
                "group.id": f"{self.topic}.restore",
                "enable.auto.commit": False,
                "fetch.max.bytes": 52428800,
                "queued.max.messages.kbytes": 262144,
            }
        )
        try:
            ends: dict[int, int] = {}
            for partition in partitions:
                try:
                    low, high = consumer.get_watermark_offsets(
                        KafkaTopicPartition(self.topic, partition), timeout=10
                    )
                except KafkaException as exc:
                    raise DeduplicationStoreError(
                        f"cannot read dedup topic {self.topic}[{partition}] (missing, or no "
                        f"READ permission?): {exc}"
                    ) from exc
                self._entries.setdefault(partition, {})
                if high > low:
                    ends[partition] = high
            consumer.assign([KafkaTopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            now_ms = int(self._clock() * 1000)
            count = 0
            while ends:
                batch = consumer.consume(10_000, 1.0)
                if not batch:  # compaction may have removed the last offsets: ask the position
                    for tp in consumer.position([KafkaTopicPartition(self.topic, p) for p in ends]):
                        if tp.offset >= ends[tp.partition]:
                            del ends[tp.partition]
                for record in batch:
                    if record.error() is not None:
                        raise DeduplicationStoreError(f"restoring {self.topic}: {record.error()}")
                    number, offset = record.partition() or 0, record.offset() or 0
                    if number not in ends:
                        continue
                    count += self._load(
                        self._entries[number], record.key(), record.value(), now_ms, number, offset
                    )
                    if offset + 1 >= ends[number]:
                        del ends[number]
            return count
        finally:
            consumer.close()

    def _load(
        self,
        entries: dict[bytes, int],
        key: bytes | None,
        value: bytes | None,
        now_ms: int,
        partition: int,
        offset: int,
    ) -> int:
        if key is None or len(key) != DIGEST_SIZE:
            logger.warning(
                "dedup %s[%d]@%d: skipped a record with a bad key", self.topic, partition, offset
            )
            return 0
        if value is None:  # tombstone
            entries.pop(key, None)
            return 0
        if len(value) != _EXPIRY_BYTES:
            logger.warning(
                "dedup %s[%d]@%d: skipped a record with a bad value", self.topic, partition, offset
            )
            return 0
        expiry = int.from_bytes(value, "big")
        if expiry <= now_ms:
            entries.pop(key, None)
            return 0
        entries[key] = self._expiry(expiry / 1000)
        return 1
