"""WriteLedger: which dedup entries were written, confirmed or refused, per dedup partition."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from service.errors import DeduplicationStoreError

__all__ = ["WriteLedger"]

logger = logging.getLogger(__name__)


class WriteLedger:
    """Counts entries written and confirmed per dedup partition; keeps refusals until they go.

    Entries of input partition *p* are written to dedup partition *p*, so a partition
    number names both. A refused entry (its delivery report carried an error) vetoes every
    commit, raising :class:`~service.errors.DeduplicationStoreError` whose ``partitions``
    name the input partitions concerned, until its partition is no longer this member's:

    * lost (:meth:`forget`): nothing of it is committed; the new owner redelivers;
    * revoked (:meth:`retire`): the veto still covers the commit that ends the revocation,
      and lasts until the next assignment (:meth:`end_rebalance`).

    It is never cleared by being reported. Thread-safe: entries are written from worker
    threads and confirmed on whichever thread serves the producer.

    Args:
        topic: the dedup topic, for messages.
        lock: the lock guarding the counts. An owner that updates its own state with each
            write passes its own lock and, holding it, counts into :attr:`written_counts`
            and :attr:`confirmed_counts` itself: one acquisition and no call per write.
    """

    def __init__(self, topic: str, lock: threading.Lock | None = None) -> None:
        self.topic = topic
        self._lock = lock or threading.Lock()
        self.written_counts: dict[int, int] = {}
        """Entries written per partition; an owner sharing the lock may count into it."""
        self.confirmed_counts: dict[int, int] = {}
        """Delivery reports per partition, refusals included; same rule as above."""
        # partition -> (refused entries, the first reason): bounded however many fail
        self._refused: dict[int, tuple[int, str]] = {}  # partitions still ours
        self._retiring: dict[int, tuple[int, str]] = {}  # revoked: veto until the next assignment

    def written(self, partition: int) -> None:
        """One more entry was handed to the producer for ``partition``."""
        with self._lock:
            self.written_counts[partition] = self.written_counts.get(partition, 0) + 1

    def confirmed(self, partition: int, error: str | None) -> None:
        """The delivery report of one entry of ``partition``: ``error`` if refused."""
        with self._lock:
            self.confirmed_counts[partition] = self.confirmed_counts.get(partition, 0) + 1
            if error is not None:
                self.refused_locked(partition, error)

    def refused_locked(self, partition: int, error: str) -> None:
        """Record a refusal (its report already counted), for a caller holding the lock."""
        count, first = self._refused.get(partition, (0, error))
        self._refused[partition] = (count + 1, first)

    @property
    def totals(self) -> tuple[int, int]:
        """(entries written, delivery reports received) since the start."""
        with self._lock:
            return sum(self.written_counts.values()), sum(self.confirmed_counts.values())

    def pending(self) -> dict[int, int]:
        """Entries not confirmed yet, per partition (only partitions with some)."""
        with self._lock:
            confirmed = self.confirmed_counts
            return {
                p: n - confirmed.get(p, 0)
                for p, n in self.written_counts.items()
                if n > confirmed.get(p, 0)
            }

    def ticket(self) -> Callable[[], bool]:
        """A check: true once the entries written before this call are confirmed.

        The check raises :class:`~service.errors.DeduplicationStoreError` while a refusal
        stands (see the class docstring), whenever that refusal happened.
        """
        with self._lock:
            confirmed = self.confirmed_counts
            owed = {p: n for p, n in self.written_counts.items() if n > confirmed.get(p, 0)}

        def durable() -> bool:
            self.check()
            if not owed:
                return True
            with self._lock:
                done = self.confirmed_counts
                return all(done.get(p, 0) >= n for p, n in owed.items())

        return durable

    def check(self) -> None:
        """Raise if a refusal stands.

        Raises:
            DeduplicationStoreError: with ``partitions`` = the input partitions whose
                offsets must stay uncommitted.
        """
        with self._lock:
            if not self._refused and not self._retiring:
                return
            standing = [*self._refused.items(), *self._retiring.items()]
        count = sum(n for _, (n, _) in standing)
        first = standing[0][1][1]
        partitions = sorted({p for p, _ in standing})
        raise DeduplicationStoreError(
            f"{count} dedup entries were refused by {self.topic} (partitions {partitions}; "
            f"first: {first}); offsets of input partitions {partitions} stay uncommitted until "
            "those partitions are revoked or lost, so their messages are delivered again",
            partitions=partitions,
        )

    def retire(self, partitions: Iterable[int]) -> None:
        """``partitions`` were revoked: their refusals veto until :meth:`end_rebalance`."""
        with self._lock:
            for partition in partitions:
                refused = self._refused.pop(partition, None)
                if refused is not None:
                    count, first = self._retiring.get(partition, (0, refused[1]))
                    self._retiring[partition] = (count + refused[0], first)

    def forget(self, partitions: Iterable[int]) -> None:
        """``partitions`` were lost, or start afresh: drop their refusals (nothing committed)."""
        with self._lock:
            dropped = {
                p: self._refused.pop(p, (0, ""))[0] + self._retiring.pop(p, (0, ""))[0]
                for p in partitions
            }
        self._log_dropped({p: n for p, n in dropped.items() if n})

    def end_rebalance(self) -> None:
        """An assignment ended the rebalance: revoked partitions' refusals are done vetoing."""
        with self._lock:
            dropped = {p: count for p, (count, _) in self._retiring.items()}
            self._retiring = {}
        self._log_dropped(dropped)

    def _log_dropped(self, dropped: dict[int, int]) -> None:
        for partition, count in sorted(dropped.items()):
            logger.warning(
                "dedup %s[%d]: %d refused entries no longer veto commits: the input partition "
                "went to another member (or starts afresh) uncommitted past them, so their "
                "messages are delivered again",
                self.topic,
                partition,
                count,
            )
