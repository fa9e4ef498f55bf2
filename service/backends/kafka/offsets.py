"""Per-partition completion tracking: what may be committed when messages finish out of order."""

from __future__ import annotations

from collections import deque

__all__ = ["PartitionTracker"]


class PartitionTracker:
    """Tracks delivered offsets of one partition and computes its commit position.

    Offsets are delivered in increasing order (with gaps: compaction, transaction markers);
    they may be done in any order. The commit position is the lowest delivered offset not
    yet done, or one past the highest delivered offset when all are done: committing it
    never passes a message that is not done.
    """

    __slots__ = ("_done", "_in_flight", "_next", "committed")

    def __init__(self) -> None:
        self._in_flight: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None
        self.committed: int | None = None
        """The last position committed (or known committed) for this partition."""

    def delivered(self, offset: int) -> None:
        """Record that ``offset`` was handed out."""
        self._in_flight.append(offset)
        self._next = offset + 1

    def done(self, offset: int) -> None:
        """Record that ``offset`` is done (acknowledged or dead-lettered)."""
        in_flight = self._in_flight
        if in_flight and in_flight[0] == offset:
            in_flight.popleft()
            done = self._done
            while in_flight and in_flight[0] in done:
                done.discard(in_flight.popleft())
        elif offset in in_flight:
            self._done.add(offset)

    def rewind(self, offset: int) -> None:
        """Forget ``offset`` and everything after it: they will be delivered again."""
        while self._in_flight and self._in_flight[-1] >= offset:
            self._done.discard(self._in_flight.pop())
        self._next = offset if self._next is None else min(self._next, offset)

    @property
    def position(self) -> int | None:
        """The offset to commit: the next message to read on restart; ``None`` if unknown."""
        if self._in_flight:
            return self._in_flight[0]
        return self._next

    @property
    def in_flight(self) -> int:
        """How many delivered offsets are not done."""
        return len(self._in_flight) - len(self._done)

    def pending_commit(self) -> int | None:
        """The position to commit if it moved since the last commit, else ``None``."""
        position = self.position
        if position is None or position == self.committed:
            return None
        return position
