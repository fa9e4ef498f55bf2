"""The dedup entries in memory: per owned partition, evicted as they expire."""

from __future__ import annotations

import heapq
import threading

from service.backends.base import TopicPartition

__all__ = ["OwnedPartitions", "PartitionEntries"]

BUCKETS_PER_WINDOW = 1024
"""Expiry buckets per window: eviction runs at most ``window / 1024`` late (min. 1 s)."""


class PartitionEntries:
    """One dedup partition: :attr:`map` (digest -> expiry, epoch ms) and its expiry buckets.

    Every key added through :meth:`add` is also listed in the bucket of its expiry
    (``expiry // granularity``); :meth:`evict` empties the buckets whose whole span has
    passed, a bounded number of keys at a time, so memory follows the window rather than
    the uptime. A key re-added with a later expiry sits in two buckets; the earlier one
    finds the later expiry and leaves the key alone. Keys written into :attr:`map` directly
    (a restore's fast path) are bucketed by :meth:`reindex`.

    :attr:`map` is a plain ``dict`` of bytes and ints, which the garbage collector leaves
    untracked: millions of keys cost no collection time.

    Not thread-safe on its own: the owner serializes :meth:`add`, :meth:`evict` and
    :meth:`reindex` (lookups in :attr:`map` need no lock).

    Args:
        granularity_ms: the bucket width (:meth:`granularity_for`).

    Attributes:
        map: digest -> expiry (epoch milliseconds).
        recent: the last expiry added and its bucket: a hot path holding the owner's lock
            may set ``map[key] = expiry`` and append ``key`` to it when the expiry is the
            same, instead of calling :meth:`add`.
    """

    __slots__ = ("_buckets", "_granularity", "_slots", "map", "recent")

    def __init__(self, granularity_ms: int) -> None:
        self.map: dict[bytes, int] = {}
        self._granularity = max(granularity_ms, 1)
        self._buckets: dict[int, list[bytes]] = {}
        self._slots: list[int] = []  # a heap of the bucket numbers in use
        self.recent: tuple[int, list[bytes]] = (-1, [])

    @staticmethod
    def granularity_for(window_ms: int) -> int:
        """The bucket width for a window: ``window / 1024``, at least a second."""
        return max(1000, window_ms // BUCKETS_PER_WINDOW)

    def __len__(self) -> int:
        """Keys held, expired ones included until evicted."""
        return len(self.map)

    def add(self, key: bytes, expiry: int) -> None:
        """Hold ``key`` until ``expiry`` (epoch ms)."""
        self.map[key] = expiry
        slot = expiry // self._granularity
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = []
            heapq.heappush(self._slots, slot)
        bucket.append(key)
        self.recent = (expiry, bucket)

    def reindex(self) -> None:
        """Rebuild the buckets from :attr:`map` (after keys were written directly)."""
        buckets: dict[int, list[bytes]] = {}
        granularity = self._granularity
        for key, expiry in self.map.items():
            slot = expiry // granularity
            bucket = buckets.get(slot)
            if bucket is None:
                bucket = buckets[slot] = []
            bucket.append(key)
        self._buckets = buckets
        self._slots = list(buckets)
        heapq.heapify(self._slots)
        self.recent = (-1, [])

    def evict(self, now_ms: float, budget: int) -> int:
        """Drop keys expired at ``now_ms``, looking at no more than ``budget`` keys.

        Returns:
            How many keys were looked at: less than ``budget`` means nothing expired is
            left to find.
        """
        slots, buckets, granularity, entries = (
            self._slots,
            self._buckets,
            self._granularity,
            self.map,
        )
        seen = 0
        while slots and (slots[0] + 1) * granularity <= now_ms and seen < budget:
            slot = slots[0]
            bucket = buckets[slot]
            while bucket and seen < budget:
                key = bucket.pop()
                seen += 1
                expiry = entries.get(key)
                if expiry is not None and expiry <= now_ms:
                    del entries[key]
            if not bucket:
                heapq.heappop(slots)
                del buckets[slot]
                self.recent = (-1, [])
        return seen

    @property
    def bucketed(self) -> int:
        """Keys listed in buckets (at least ``len(self)``; re-added keys count twice)."""
        return sum(len(bucket) for bucket in self._buckets.values())


class OwnedPartitions:
    """The entries of the dedup partitions this member owns, and who owns each.

    Dedup partition *p* is owned while at least one input partition numbered *p* (of any
    input topic) is assigned. Only owned partitions have entries; they are created afresh
    when the partition becomes owned, never reused from before.

    Args:
        granularity_ms: the expiry bucket width of every partition.

    Attributes:
        lock: guards :attr:`partitions`, :attr:`maps`, the owners and every partition's
            buckets; writers hold it (lookups in :attr:`maps` need no lock).
        partitions: dedup partition -> its :class:`PartitionEntries` (for writers).
        maps: dedup partition -> its ``map`` (for lookups). Both dicts are the same
            objects for the whole life, so a hot path may keep references to them.
    """

    def __init__(self, granularity_ms: int) -> None:
        self._granularity = granularity_ms
        self.lock = threading.Lock()
        self.partitions: dict[int, PartitionEntries] = {}
        self.maps: dict[int, dict[bytes, int]] = {}
        self._owners: dict[int, set[TopicPartition]] = {}

    def __len__(self) -> int:
        """Entries held, in every owned partition."""
        return sum(len(entries) for entries in list(self.maps.values()))

    def take(self, assigned: set[TopicPartition]) -> tuple[dict[int, PartitionEntries], list[int]]:
        """Own ``assigned``.

        Returns:
            The partitions to restore into, by dedup partition (fresh unless the partition
            stays owned through another input topic, whose entries are kept), and the
            dedup partitions that start afresh.
        """
        fresh: list[int] = []
        targets: dict[int, PartitionEntries] = {}
        with self.lock:
            for number in sorted({p for _, p in assigned}):
                owners = self._owners.setdefault(number, set())
                if owners - assigned:
                    targets[number] = self.partitions[number]
                else:
                    fresh.append(number)
                    entries = targets[number] = PartitionEntries(self._granularity)
                    self.partitions[number] = entries
                    self.maps[number] = entries.map
                owners.update(pair for pair in assigned if pair[1] == number)
        return targets, fresh

    def release(self, partitions: set[TopicPartition]) -> list[int]:
        """Stop owning ``partitions``; the dedup partitions no longer owned (entries dropped)."""
        gone: list[int] = []
        with self.lock:
            for pair in partitions:
                owners = self._owners.get(pair[1])
                if owners is None:
                    continue
                owners.discard(pair)
                if not owners:
                    del self._owners[pair[1]]
                    self.partitions.pop(pair[1], None)
                    self.maps.pop(pair[1], None)
                    gone.append(pair[1])
        return sorted(gone)

    def reindex(self, targets: dict[int, PartitionEntries]) -> None:
        """Bucket the keys a restore wrote directly into ``targets``."""
        with self.lock:
            for entries in targets.values():
                entries.reindex()

    def evict(self, now_ms: float, budget: int, chunk: int = 1000) -> int:
        """Drop expired keys, looking at no more than ``budget`` keys; how many were seen.

        The lock is held for ``chunk`` keys at a time, so writers wait little.
        """
        left = budget
        for entries in list(self.partitions.values()):
            while left > 0:
                wanted = min(left, chunk)
                with self.lock:
                    seen = entries.evict(now_ms, wanted)
                left -= seen
                if seen < wanted:
                    break
        return budget - left
