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
  succeeded. The subscription commits offsets only once the entries written before they
  were prepared are confirmed (:meth:`commit_ticket`; :meth:`before_commit` waits for it on
  revocation and close), and not at all, raising
  :class:`~service.errors.DeduplicationStoreError`, if one failed: an input offset is
  committed only after the entries of the messages below it are durable. A crash can then
  repeat a consumer only in the window between its success and the confirmation of its
  entry.
* Memory: a digest and a shared expiry per key (measured by ``make bench``).
* Bad state: a record that does not parse is skipped with a warning; a missing topic or
  a refused permission is a :class:`~service.errors.DeduplicationStoreError`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from service.backends.base import Subscription, TopicPartition
from service.dedup.base import DeduplicationCache
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
        self._expiries: dict[int, tuple[int, bytes]] = {}  # shared expiries, one per second
        self._failures: list[str] = []
        self._produced: dict[int, int] = {}  # per dedup partition: entries written ...
        self._delivered: dict[int, int] = {}  # ... and confirmed (in order, per partition)
        self._restoring = 0
        self._restored_expiries: dict[bytes, int] = {}  # wire value -> shared expiry
        self._memo: tuple[str | None, bytes] = (None, b"")  # one tuple: read and set atomically
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
    def get(self, key: str, *, partition: int | None = None) -> str | None:
        """``key`` itself while an unexpired entry exists (values are not kept), else None.

        With ``partition``, only that dedup partition is searched.
        """
        memo = self._memo  # get() then store() of one key: hash it once
        if memo[0] is key:
            wanted = memo[1]
        else:
            wanted = digest(key)
            self._memo = (key, wanted)
        now_ms = self._clock() * 1000
        if partition is not None:
            entries = self._entries.get(partition)
            expiry = None if entries is None else entries.get(wanted)
            return key if expiry is not None and expiry > now_ms else None
        for entries in list(self._entries.values()):
            expiry = entries.get(wanted)
            if expiry is not None and expiry > now_ms:
                return key
        return None

    def store(
        self, key: str, value: str, expire: float | None = None, *, partition: int | None = None
    ) -> None:
        """Queue the entry of ``key`` for dedup partition ``partition``.

        The write is confirmed asynchronously; :meth:`flush` (run before every commit)
        waits for it.

        Raises:
            DeduplicationStoreError: the record could not be queued.
        """
        del value
        target = 0 if partition is None else partition
        memo = self._memo
        key_digest = memo[1] if memo[0] is key else digest(key)
        expiry, wire = self._expiry_pair(
            self._clock() + (self.window if expire is None else expire)
        )
        entries = self._entries.get(target)
        if entries is None:
            entries = self._entries.setdefault(target, {})  # atomic: workers may race here
        entries[key_digest] = expiry
        producer = self._producer or self._producer_client()
        while True:
            try:
                producer.produce(self.topic, wire, key_digest, partition=target)
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it
            except KafkaException as exc:
                raise DeduplicationStoreError(
                    f"cannot write a dedup entry to {self.topic}[{target}]: {exc}"
                ) from exc
        self._produced[target] = self._produced.get(target, 0) + 1

    def poll(self) -> None:
        """Serve delivery reports without waiting."""
        if self._producer is not None:
            self._producer.poll(0)

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds until the broker confirmed every entry.

        Raises:
            DeduplicationStoreError: entries failed, or are unconfirmed after ``timeout``.
        """
        if self._producer is None:
            return
        left = self._producer.flush(timeout)
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeduplicationStoreError(
                f"{len(failures)} dedup entries were not written to {self.topic}; first: "
                f"{failures[0]}; offsets stay uncommitted, so their messages come again"
            )
        if left:
            raise DeduplicationStoreError(
                f"{left} dedup entries unconfirmed by {self.topic} after {timeout}s; offsets "
                "stay uncommitted"
            )

    def before_commit(self) -> None:
        """Make every entry durable before offsets are committed (raising vetoes the commit)."""
        self.flush(self._backend.dead_letter_timeout)

    def commit_failed(self) -> None:
        """Nothing to do: the entries stay; the offsets are committed again later."""

    def commit_ticket(self) -> Callable[[], bool]:
        """True once every entry written before this call is confirmed.

        Raises (when checked):
            DeduplicationStoreError: an entry failed; the offsets are not committed.
        """
        snapshot = dict(self._produced)
        delivered = self._delivered

        def durable() -> bool:
            if self._failures:
                self.flush(0)  # raises with the failures
            return all(delivered.get(p, 0) >= n for p, n in snapshot.items())

        return durable

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
                {
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    "on_delivery": self._on_delivery,
                }
            )
        return self._producer

    def _on_delivery(self, error: KafkaError | None, record: Any) -> None:
        partition = record.partition()
        self._delivered[partition] = self._delivered.get(partition, 0) + 1
        if error is not None:
            self._failures.append(f"{self.topic}[{partition}]: {error.str()}")

    def _expiry(self, seconds: float) -> int:
        return self._expiry_pair(seconds)[0]

    def _expiry_pair(self, seconds: float) -> tuple[int, bytes]:
        """The shared expiry (ms, whole seconds) and its wire bytes: one object per second."""
        second = int(seconds)
        shared = self._expiries.get(second)
        if shared is None:
            if len(self._expiries) > 100_000:
                self._expiries.clear()
            millis = second * 1000
            shared = self._expiries[second] = (millis, millis.to_bytes(_EXPIRY_BYTES, "big"))
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
        """Drop the entries no assigned partition needs (the commit that follows flushes)."""
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
            self._restored_expiries.clear()
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
                "max.partition.fetch.bytes": 10485760,
                "queued.min.messages": 1000000,
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
                count += self._load_batch(consumer.consume(10_000, 0.5), now_ms)
                # records written after the restore began may come too: they are valid entries
                for tp in consumer.position([KafkaTopicPartition(self.topic, p) for p in ends]):
                    if tp.offset >= ends[tp.partition]:
                        del ends[tp.partition]
            return count
        finally:
            consumer.close()

    def _load_batch(self, batch: list[Any], now_ms: int) -> int:
        """Apply one batch of dedup records; the hot loop of a restore, kept flat."""
        count = 0
        entries_of, expiries = self._entries, self._restored_expiries
        for record in batch:
            if record.error() is not None:
                raise DeduplicationStoreError(f"restoring {self.topic}: {record.error()}")
            key, value = record.key(), record.value()
            entries = entries_of[record.partition()]
            if value is None:  # a tombstone
                if key is not None:
                    entries.pop(key, None)
                continue
            expiry = expiries.get(value)
            if expiry is None:
                if len(value) != _EXPIRY_BYTES:
                    self._skip(record, "value")
                    continue
                expiry = expiries[value] = self._expiry(int.from_bytes(value, "big") / 1000)
            if key is None or len(key) != DIGEST_SIZE:
                self._skip(record, "key")
            elif expiry > now_ms:
                entries[key] = expiry
                count += 1
            else:
                entries.pop(key, None)
        return count

    def _skip(self, record: Any, what: str) -> None:
        logger.warning(
            "dedup %s[%s]@%s: skipped a record with a bad %s",
            self.topic,
            record.partition(),
            record.offset(),
            what,
        )
