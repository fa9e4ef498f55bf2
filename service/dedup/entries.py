"""The dedup entries in memory: per owned partition, evicted as they expire."""

from __future__ import annotations

import threading
import time
from itertools import islice

from service.backends.base import TopicPartition

__all__ = ["OwnedPartitions", "PartitionEntries"]


class PartitionEntries:
    """One dedup partition: :attr:`map` (digest -> expiry, epoch ms) in the order written.

    Every entry is written with an expiry of at most "now + window" (the store cuts longer
    ones: the topic keeps entries for the window), and a key written again is moved to the
    end, so the map's order (a ``dict`` keeps insertion order) is the order of expiry, but
    for entries written with a shorter expiry and a second or so between writer threads.
    :meth:`evict` therefore looks at the oldest entries only, and stops at the first one
    not expired: each key is looked at about once, and nothing is kept per key for
    eviction. An entry written with a shorter expiry than those written before it leaves
    when they have left (its lookups still honour its own expiry); so does one a restore
    read twice from the topic (kept at its first place, with its later expiry).

    (Until 2026-12-02 each key was also listed in a bucket of its expiry: ~9 bytes more per
    key held, and ~0.2 s to bucket 1,000,000 restored keys. A first replacement swept every
    key every ``window / 64``; under load the sweeps fell behind and expired keys piled up.)

    :attr:`map` is a plain ``dict`` of ints, which the garbage collector leaves untracked:
    millions of keys cost no collection time. Keys are the digests as ints (``int.from_bytes
    (digest, "big")``): a 16-byte digest is 44 bytes as an ``int``, 49 as ``bytes``.

    Not thread-safe on its own: the owner serializes :meth:`put` and :meth:`evict` (lookups
    in :attr:`map` need no lock).

    Attributes:
        map: digest (as an int) -> expiry (epoch milliseconds), oldest first.
    """

    __slots__ = ("map",)

    def __init__(self) -> None:
        self.map: dict[int, int] = {}

    def __len__(self) -> int:
        """Keys held, expired ones included until evicted."""
        return len(self.map)

    def put(self, key: int, expiry: int) -> None:
        """Hold ``key`` until ``expiry`` (epoch ms): at the end, as the newest entry.

        A key held already is moved (a lookup in between finds it absent: it is written
        again only after a lookup found it absent or expired).
        """
        entries = self.map
        entries.pop(key, None)
        entries[key] = expiry

    def evict(self, now_ms: float, budget: int) -> int:
        """Drop the oldest keys while they are expired at ``now_ms``; at most ``budget``.

        Returns:
            How many keys were dropped: less than ``budget`` means the oldest key left is
            not expired (or none is left).
        """
        entries = self.map
        dropped = 0
        # the dict's iterator skips the slots of keys deleted before (until the dict is
        # resized): once per call, in C
        for key in list(islice(entries, budget)):
            if entries[key] > now_ms:
                break
            del entries[key]
            dropped += 1
        return dropped


class OwnedPartitions:
    """The entries of the dedup partitions this member owns, and who owns each.

    Dedup partition *p* is owned while at least one input partition numbered *p* (of any
    input topic) is assigned. Only owned partitions have entries; they are created afresh
    when the partition becomes owned, never reused from before.

    Attributes:
        lock: guards :attr:`partitions`, :attr:`maps` and the owners; writers and eviction
            hold it (lookups in :attr:`maps` need no lock).
        partitions: dedup partition -> its :class:`PartitionEntries` (for writers).
        maps: dedup partition -> its ``map`` (for lookups). Both dicts are the same
            objects for the whole life, so a hot path may keep references to them.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.partitions: dict[int, PartitionEntries] = {}
        self.maps: dict[int, dict[int, int]] = {}
        self._owners: dict[int, set[TopicPartition]] = {}
        self._turn = 0  # which partition eviction starts with: each in turn

    def __len__(self) -> int:
        """Entries held, in every owned partition."""
        return sum(len(entries) for entries in list(self.maps.values()))

    def take(self, assigned: set[TopicPartition]) -> tuple[list[int], list[int]]:
        """Own ``assigned``.

        Returns:
            The dedup partitions of ``assigned``, and those of them that start afresh
            (empty); the others stay owned through another input topic and keep their
            entries. A restore adds the topic's to both with :meth:`adopt`.
        """
        numbers = sorted({p for _, p in assigned})
        fresh: list[int] = []
        with self.lock:
            for number in numbers:
                owners = self._owners.setdefault(number, set())
                if not owners - assigned:
                    fresh.append(number)
                    entries = self.partitions[number] = PartitionEntries()
                    self.maps[number] = entries.map
                owners.update(pair for pair in assigned if pair[1] == number)
        return numbers, fresh

    def adopt(self, number: int, restored: dict[int, int], chunk: int = 10_000) -> None:
        """Add the entries a restore read for dedup partition ``number`` (if still owned).

        A restore reads into a map of its own, never into the live one: workers may hold
        entries in an owned partition meanwhile (one kept through another input topic),
        and the topic's older records of their keys (expired ones, tombstones) must not
        remove them. An empty live map takes ``restored`` as it is (a fresh partition: no
        copy); otherwise each restored key is added at the end unless the live map holds
        it with a later expiry (moved to the end if it was held with an earlier one),
        ``chunk`` keys per hold of the lock, yielding to waiting writers between chunks.
        Restored keys so added behind newer ones leave when those have left (see
        :class:`PartitionEntries`).
        """
        items = iter(restored.items())
        while True:
            with self.lock:
                entries = self.partitions.get(number)
                if entries is None:
                    return
                live = entries.map
                if not live:
                    entries.map = self.maps[number] = restored
                    return
                batch = list(islice(items, chunk))
                for key, expiry in batch:
                    if live.get(key, 0) < expiry:
                        live.pop(key, None)
                        live[key] = expiry
            if len(batch) < chunk:
                return
            # let a waiting writer take the lock (threading.Lock is not fair: without
            # this the next chunk took it again in the same time slice, ~60-280 ms waits)
            time.sleep(0)

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
        """Drop expired keys, no more than ``budget``; how many were dropped.

        The lock is held for ``chunk`` keys at a time, so writers wait little; each call
        starts with the next partition, so one with many expired keys does not take every
        call's budget.
        """
        partitions = list(self.partitions.values())
        if not partitions:
            return 0
        self._turn = turn = (self._turn + 1) % len(partitions)
        left = budget
        for entries in partitions[turn:] + partitions[:turn]:
            while left > 0:
                wanted = min(left, chunk)
                with self.lock:
                    dropped = entries.evict(now_ms, wanted)
                left -= dropped
                if dropped < wanted:
                    break
        return budget - left
