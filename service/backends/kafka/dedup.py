"""CompactedTopicCache: the deduplication store kept in a log-compacted Kafka topic.

Layout: one topic per consumer group (default ``<group>.dedup``), ``cleanup.policy=
compact,delete`` with ``retention.ms`` = the window. A record's key is a 16-byte BLAKE2b
digest of the dedup key, its value the expiry (8 bytes, epoch ms, big-endian). Entries of
input partition *p* live in dedup partition *p*: the topic needs as many partitions as every
input topic (:meth:`CompactedTopicCache.input_partitions`).

Contract (a :class:`~service.backends.base.SubscriptionListener` and a
:class:`~service.backends.base.CommitGate` of the subscription it is attached to):

* Ownership decides, never leftovers: an assigned input partition's dedup partition starts
  afresh and is restored from the beginning to the end seen then, before any of its
  messages is delivered (:attr:`is_ready` is false meanwhile); a revoked or lost one is
  dropped. An input partition beyond the dedup topic's partitions is refused, naming both.
* :meth:`store` writes an entry (idempotent producer, ``acks=all``) after the consumer
  succeeded, also for a partition no longer owned (the consumer did succeed), but only an
  owned partition keeps it in memory.
* Commits: a :meth:`ticket` turns true once the entries written before it are confirmed;
  :meth:`wait` blocks for them. A refused entry vetoes every commit (raising
  :class:`~service.errors.DeduplicationStoreError` naming the input partitions) until its
  partition is lost, or revoked and the rebalance ends: the new owner redelivers. A crash
  repeats a consumer only between its success and the confirmation of its entry.
* Memory: a digest (as an int) and a shared expiry per key, in owned partitions only;
  expired keys are evicted oldest first from :meth:`poll` (about a second late, a bounded
  number at a time; see :class:`~service.dedup.entries.PartitionEntries`), so memory
  follows the window.
* Threads: :meth:`store` and :meth:`get` may run on worker threads; listener and gate
  methods and :meth:`poll` run on the polling thread.
* A record that does not parse is skipped with a warning; a missing topic, a refused
  permission or too few partitions is a :class:`~service.errors.DeduplicationStoreError`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer

from service.backends.base import Subscription, TopicPartition
from service.backends.kafka.dedup_restore import (
    DIGEST_SIZE,
    EXPIRY_BYTES,
    RESTORE_CONSUMER_CONFIG,
    check_partitions,
    partition_counts,
    restore_partitions,
)
from service.backends.outputs import StagedRecord, current_outputs
from service.dedup.base import DeduplicationCache
from service.dedup.entries import OwnedPartitions
from service.dedup.ledger import WriteLedger
from service.errors import ConfigurationError, DeduplicationStoreError

if TYPE_CHECKING:
    from service.backends.kafka.backend import KafkaBackend

__all__ = ["CompactedTopicCache"]

logger = logging.getLogger(__name__)

WEEK = 7 * 24 * 3600.0
SWEEP_INTERVAL = 1.0  # seconds between evictions while nothing expired is left over
SWEEP_BUDGET = 10_000  # expired keys one poll() drops, at most


def digest(key: str) -> bytes:
    """The 16-byte digest a key is stored under (the record key in the dedup topic)."""
    return hashlib.blake2b(key.encode(), digest_size=DIGEST_SIZE).digest()


def held(key_digest: bytes) -> int:
    """The digest as it is held in memory: an int (44 bytes, against 49 for the bytes)."""
    return int.from_bytes(key_digest, "big")


class CompactedTopicCache(DeduplicationCache):
    """Deduplication entries in a compacted topic, restored per assigned partition.

    Args:
        backend: the Kafka backend (connection settings and topic creation).
        topic: the dedup topic, e.g. ``<group>.dedup``.
        window: seconds an entry suppresses duplicates; also the topic's retention.
        partitions: the dedup topic's partitions when it is created: the input topics'
            partition count (:meth:`input_partitions`). An existing topic is not altered.
        clock: wall-clock seconds (tests pass a fake one).
    """

    transactional = True  # on an exactly-once queue, store() stages its entries

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
        if partitions < 1:
            raise ConfigurationError(f"dedup topic partitions must be >= 1, got {partitions}")
        self.topic = topic
        self.window = window
        self._backend = backend
        self._clock = clock
        self._owned = OwnedPartitions()
        self._entries = self._owned.maps  # owned dedup partitions only, for lookups
        self._writable = self._owned.partitions  # the same, for writes
        self._lock = self._owned.lock  # also the ledger's: one acquisition per store
        self._ledger = WriteLedger(topic, self._lock)
        self._expiries: dict[int, tuple[int, bytes]] = {}  # shared expiries, one per second
        # the last key's digests (wire, held): one tuple, read and set atomically
        self._memo: tuple[str | None, bytes, int] = (None, b"", 0)
        self._next_sweep = 0.0
        self._restoring = 0
        self._topic_partitions: int | None = None
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

    @staticmethod
    def input_partitions(backend: KafkaBackend, topics: Iterable[str], *, default: int = 1) -> int:
        """The partitions a dedup topic needs for input ``topics``: the most any has.

        ``^regex`` patterns count the existing topics they match; when no input topic exists
        yet, ``default`` (the count they will be created with).

        Raises:
            DeduplicationStoreError: the brokers did not answer.
        """
        consumer = backend.new_consumer({"group.id": "dedup.metadata"})
        try:
            counts = partition_counts(consumer, topics)
        finally:
            consumer.close()
        return max(counts.values(), default=default)

    # -- the DeduplicationCache contract ------------------------------------------------
    def get(self, key: str, *, partition: int | None = None) -> str | None:
        """``key`` itself while an unexpired entry exists (values are not kept), else None.

        With ``partition``, only that dedup partition is searched.
        """
        memo = self._memo  # get() then store() of one key: hash it once
        if memo[0] is key:
            wanted = memo[2]
        else:
            wire = digest(key)
            wanted = held(wire)
            self._memo = (key, wire, wanted)
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
        """Write the entry of ``key`` to dedup partition ``partition``; hold it if owned.

        It expires after ``expire`` seconds, at most the window (the topic keeps entries
        for the window, its ``retention.ms``), by default the window. The write is
        confirmed asynchronously (see :meth:`ticket`). A partition this member does not own
        (revoked or lost while the consumer ran) gets the write but no memory.

        Raises:
            DeduplicationStoreError: the record could not be queued.
        """
        del value
        target = 0 if partition is None else partition
        memo = self._memo
        if memo[0] is key:
            key_digest, key_held = memo[1], memo[2]
        else:
            key_digest = digest(key)
            key_held = held(key_digest)
        expiry, wire = self._expiry_pair(
            self._clock() + (self.window if expire is None else min(expire, self.window))
        )
        outputs = current_outputs()
        if outputs is not None and outputs.staged is not None:
            # exactly-once: written in the transaction that commits the message's offset
            outputs.stage(StagedRecord(self.topic, wire, key_digest, (), target))
            self._remember(target, key_held, expiry)
            return
        producer = self._producer or self._producer_client()
        while True:
            try:
                producer.produce(self.topic, wire, key_digest, partition=target)
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it
            except KafkaException as exc:
                raise DeduplicationStoreError(
                    f"cannot write a dedup entry to {self.topic}[{target}]: {exc}",
                    partitions=[target],
                ) from exc
        written = self._ledger.written_counts
        # once per consumer and message: one acquisition (not `with`: it costs twice as
        # much) and no call in the common case
        self._lock.acquire()
        try:
            written[target] = written.get(target, 0) + 1
            entries = self._writable.get(target)
            if entries is not None:
                entries.put(key_held, expiry)
        finally:
            self._lock.release()

    def _remember(self, target: int, key_held: int, expiry: int) -> None:
        """Hold an entry in memory if ``target`` is owned (its write is staged)."""
        with self._lock:
            entries = self._writable.get(target)
            if entries is not None:
                entries.put(key_held, expiry)

    def poll(self) -> None:
        """Serve delivery reports without waiting, and evict expired entries (bounded)."""
        if self._producer is not None:
            self._producer.poll(0)
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds until the broker confirmed every entry.

        Raises:
            DeduplicationStoreError: an entry was refused (the refusal stands, see
                :meth:`ticket`), or entries are unconfirmed after ``timeout``.
        """
        self.wait(timeout)

    @property
    def is_ready(self) -> bool:
        """False while a restore is running."""
        return self._restoring == 0

    @property
    def entries_written(self) -> int:
        """Entries handed to the producer since the start."""
        return self._ledger.totals[0]

    @property
    def entries_confirmed(self) -> int:
        """Entries the broker answered for (accepted or refused) since the start."""
        return self._ledger.totals[1]

    def __len__(self) -> int:
        """Entries held in memory, expired ones included until evicted."""
        return len(self._owned)

    # -- the CommitGate contract --------------------------------------------------------
    def attach(self, subscription: Subscription) -> None:
        """Follow ``subscription``'s assignment and gate its commits."""
        subscription.add_listener(self)
        subscription.add_gate(self)

    def ticket(self) -> Callable[[], bool]:
        """A check: true once every entry written before this call is confirmed.

        Raises (when checked):
            DeduplicationStoreError: an entry was refused and its partition is still this
                member's (or its revocation's rebalance has not ended); ``partitions``
                names the input partitions whose offsets must not be committed.
        """
        owed = self._ledger.ticket()
        producer = self._producer

        def durable() -> bool:
            if owed():
                return True
            if producer is not None:
                producer.poll(0)  # serve the reports we wait for
            return owed()

        return durable

    def wait(self, timeout: float) -> None:
        """Block until every entry written so far is confirmed (revocation, close).

        Raises:
            DeduplicationStoreError: an entry was refused (as for :meth:`ticket`), or
                entries are still unconfirmed after ``timeout`` seconds.
        """
        if self._producer is not None:
            self._producer.flush(timeout)
        self._ledger.check()
        pending = self._ledger.pending()
        if pending:
            raise DeduplicationStoreError(
                f"{sum(pending.values())} dedup entries unconfirmed by {self.topic} after "
                f"{timeout}s (partitions {sorted(pending)}); their offsets stay uncommitted",
                partitions=sorted(pending),
            )

    # -- the SubscriptionListener contract ------------------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Start the dedup partitions of ``partitions`` afresh and restore them.

        A dedup partition also owned by an input partition that stays assigned (another
        input topic) keeps its entries, and the restore adds the topic's.

        Raises:
            DeduplicationStoreError: the dedup topic is missing, unreadable, or has too few
                partitions for ``partitions``.
        """
        self._ledger.end_rebalance()
        if not partitions:
            return
        started = time.monotonic()
        self._restoring += 1
        try:
            count, numbers = self._restore(set(partitions))
        finally:
            self._restoring -= 1
        elapsed = time.monotonic() - started
        self.restored_keys += count
        self.restore_seconds += elapsed
        logger.info(
            "dedup %s: restored %d entries of partitions %s in %.2fs",
            self.topic,
            count,
            numbers,
            elapsed,
        )

    def _restore(self, assigned: set[TopicPartition]) -> tuple[int, list[int]]:
        consumer = self._backend.new_consumer(
            {"group.id": f"{self.topic}.restore", **RESTORE_CONSUMER_CONFIG}
        )
        try:
            self._topic_partitions = check_partitions(
                consumer, self.topic, self._topic_partitions, assigned
            )
            numbers, fresh = self._owned.take(assigned)
            self._ledger.forget(fresh)
            try:
                if self._producer is not None:  # our writes reach the topic before its end
                    self._producer.flush(self._backend.dead_letter_timeout)
                now_ms = int(self._clock() * 1000)
                # read into maps of its own: see OwnedPartitions.adopt
                maps: dict[int, dict[int, int]] = {number: {} for number in numbers}
                count = restore_partitions(consumer, self.topic, maps, now_ms, self._expiry)
                for number, restored in maps.items():
                    self._owned.adopt(number, restored)
            except BaseException:
                self._release(assigned, lost=True)
                raise
        finally:
            consumer.close()
        return count, numbers

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Drop the entries of dedup partitions no assigned input partition needs any more.

        Refused entries of those partitions keep vetoing until the rebalance ends, so the
        commit that follows the revocation does not pass them.
        """
        self._release(set(partitions), lost=False)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Drop everything of dedup partitions no assigned input partition needs any more."""
        self._release(set(partitions), lost=True)

    def _release(self, partitions: set[TopicPartition], *, lost: bool) -> None:
        gone = self._owned.release(partitions)
        if lost:
            self._ledger.forget(gone)
        else:
            self._ledger.retire(gone)

    # -- writes and eviction -----------------------------------------------------------
    def _producer_client(self) -> Producer:
        with self._lock:
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
        confirmed = self._ledger.confirmed_counts
        self._lock.acquire()  # once per entry: as in store()
        try:
            confirmed[partition] = confirmed.get(partition, 0) + 1
            if error is not None:
                self._ledger.refused_locked(partition, f"{self.topic}[{partition}]: {error.str()}")
        finally:
            self._lock.release()

    def _sweep(self, now: float) -> None:
        """Evict expired entries, no more than ``SWEEP_BUDGET``."""
        dropped = self._owned.evict(now * 1000, SWEEP_BUDGET)
        # budget spent: more may be due, so sweep again on the next poll
        self._next_sweep = now if dropped >= SWEEP_BUDGET else now + SWEEP_INTERVAL

    def _expiry(self, millis: int) -> int:
        return self._expiry_pair(millis / 1000)[0]

    def _expiry_pair(self, seconds: float) -> tuple[int, bytes]:
        """The shared expiry (ms, whole seconds) and its wire bytes: one object per second."""
        second = int(seconds)
        shared = self._expiries.get(second)
        if shared is None:
            if len(self._expiries) > 100_000:
                self._expiries.clear()
            millis = second * 1000
            shared = self._expiries[second] = (millis, millis.to_bytes(EXPIRY_BYTES, "big"))
        return shared
