"""The dedup entries in memory: per owned partition, evicted as they expire."""

from __future__ import annotations

import threading

from service.backends.base import TopicPartition

__all__ = ["OwnedPartitions", "PartitionEntries"]

SWEEPS_PER_WINDOW = 64
"""Eviction sweeps per window: an expired key leaves at most ``window / 64`` late (min. 1 s)."""


class PartitionEntries:
    """One dedup partition: :attr:`map` (digest -> expiry, epoch ms), swept for expired keys.

    Eviction keeps no per-key structure: every ``interval_ms`` a sweep takes a snapshot of
    the keys (a list, 8 bytes per key of this partition while the sweep lasts) and looks at
    each against its expiry in :attr:`map`, a bounded number per :meth:`evict` call. So an
    expired key leaves at most one interval (plus the sweep) late, and memory follows the
    window rather than the uptime. A key added during a sweep is looked at by the next one;
    a key re-added with a later expiry keeps the later one.

    (Before 2026-12-02 each key was also listed in a bucket of its expiry: no key looked at
    before it expired, but ~9 bytes more per key held, and ~0.2 s to bucket 1,000,000
    restored keys. A sweep looks at each key ``window / interval`` times in its life,
    ~40 ns each.)

    :attr:`map` is a plain ``dict`` of ints, which the garbage collector leaves untracked:
    millions of keys cost no collection time. Keys are the digests as ints (``int.from_bytes
    (digest, "big")``): a 16-byte digest is 44 bytes as an ``int``, 49 as ``bytes``.

    Not thread-safe on its own: the owner serializes writes and :meth:`evict` (lookups in
    :attr:`map` need no lock).

    Args:
        interval_ms: the time between two sweeps (:meth:`interval_for`).

    Attributes:
        map: digest (as an int) -> expiry (epoch milliseconds).
    """

    __slots__ = ("_interval", "_next_sweep", "_pending", "map")

    def __init__(self, interval_ms: int) -> None:
        self.map: dict[int, int] = {}
        self._interval = max(interval_ms, 1)
        self._next_sweep = 0.0  # epoch ms before which no sweep starts
        self._pending: list[int] = []  # keys the running sweep has still to look at

    @staticmethod
    def interval_for(window_ms: int) -> int:
        """The time between sweeps for a window: ``window / 64``, at least a second."""
        return max(1000, window_ms // SWEEPS_PER_WINDOW)

    def __len__(self) -> int:
        """Keys held, expired ones included until evicted."""
        return len(self.map)

    def evict(self, now_ms: float, budget: int) -> int:
        """Drop keys expired at ``now_ms``, looking at no more than ``budget`` keys.

        Starts a sweep when none is running and one is due.

        Returns:
            How many keys were looked at: less than ``budget`` means this partition's sweep
            is over (or none was due).
        """
        pending, entries = self._pending, self.map
        if not pending:
            if now_ms < self._next_sweep or not entries:
                return 0
            pending = self._pending = list(entries)
            self._next_sweep = now_ms + self._interval
        taken = min(budget, len(pending))
        for key in pending[-taken:]:
            expiry = entries.get(key)
            if expiry is not None and expiry <= now_ms:
                del entries[key]
        del pending[-taken:]
        return taken

    @property
    def sweeping(self) -> int:
        """Keys the running sweep has still to look at (0: no sweep running)."""
        return len(self._pending)


class OwnedPartitions:
    """The entries of the dedup partitions this member owns, and who owns each.

    Dedup partition *p* is owned while at least one input partition numbered *p* (of any
    input topic) is assigned. Only owned partitions have entries; they are created afresh
    when the partition becomes owned, never reused from before.

    Args:
        interval_ms: the time between eviction sweeps of every partition.

    Attributes:
        lock: guards :attr:`partitions`, :attr:`maps`, the owners and every partition's
            sweep; writers hold it (lookups in :attr:`maps` need no lock).
        partitions: dedup partition -> its :class:`PartitionEntries` (for writers).
        maps: dedup partition -> its ``map`` (for lookups). Both dicts are the same
            objects for the whole life, so a hot path may keep references to them.
    """

    def __init__(self, interval_ms: int) -> None:
        self._interval = interval_ms
        self.lock = threading.Lock()
        self.partitions: dict[int, PartitionEntries] = {}
        self.maps: dict[int, dict[int, int]] = {}
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
                    entries = targets[number] = PartitionEntries(self._interval)
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
