"""The checkpoint: the one place that decides which offsets may be committed, and commits them.

Every backend's subscription owns one :class:`Checkpoint` and routes through it everything
that changes what may be committed:

* **partition lifecycle**: :meth:`Checkpoint.assign` starts each partition afresh (nothing
  remembered from an earlier ownership), :meth:`Checkpoint.revoke` commits the done work of
  the partitions and forgets them, :meth:`Checkpoint.lose` forgets them without committing;
* **message lifecycle**, per partition (:class:`PartitionState`): a record is *delivered*
  (in flight), then *done* (acknowledged or dead-lettered), or *awaiting* redelivery
  (:meth:`Checkpoint.redeliver` after a failure, counting an attempt;
  :meth:`Checkpoint.release` for work handed back unprocessed, counting none);
* **commits**: :meth:`Checkpoint.commit` runs its steps in order - (1) take the positions
  that moved, (2) pass every commit gate (side data such as dedup entries durable), (3) send
  the offsets, (4) remember them as committed - and raises
  :class:`~service.errors.CommitError` when a gate failed, so nothing is committed past side
  data that is not durable.

The committed position of a partition is the lowest offset in flight or awaiting
redelivery, or one past the highest delivered offset when none is: a commit never passes a
message that is not done, whatever order completions arrive in and however many retries a
partition holds at once.

Failed attempts survive a restart or a rebalance: a commit carries, as the partition's commit
metadata (:meth:`Checkpoint.note`), the number of failed deliveries of each offset at or above
the committed position, and the next owner reads it back (:meth:`Checkpoint.assign`), so a
message's attempts are counted across members and the retry policy still ends in the
dead-letter topic. Not counted: a delivery whose process died before it settled (no write
happens before a consumer runs); such a message is delivered again as the same attempt.

Redelivery works like a Kafka seek: a partition with awaiting offsets waits (paused) until
the lowest of them is due, then is read again from there (:meth:`Checkpoint.due_seeks`).
While re-reading, :meth:`Checkpoint.accept` lets through only the offsets that await
redelivery and are due, and new ones; done offsets and offsets still in flight are skipped,
so nothing runs twice. Only the polling thread may call a checkpoint.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from service.backends.base import CommitGate, TopicPartition
from service.errors import CommitError, ServiceError

__all__ = ["Checkpoint", "OffsetCommitter", "PartitionState"]

logger = logging.getLogger(__name__)

_IN_FLIGHT = 0  # in `PartitionState.status`; any other value is an awaiting attempt number


class OffsetCommitter(Protocol):
    """Sends offsets to the group's store (the broker, or memory)."""

    def commit_offsets(self, offsets: Mapping[TopicPartition, int], wait: bool) -> bool:
        """Commit ``offsets`` (partition -> next offset to read); ``wait`` for the answer.

        Returns False when the commit was refused at once (it is logged by the committer;
        the offsets are committed again later, or redelivered to the next owner).
        """


class PartitionState:
    """What one assigned partition has delivered, finished and must deliver again."""

    __slots__ = (
        "_heap",
        "awaiting",
        "committed",
        "failures",
        "next_offset",
        "noted",
        "recorded",
        "seek_at",
        "status",
        "unconfirmed",
    )

    def __init__(self) -> None:
        self.status: dict[int, int] = {}
        """Offset -> ``_IN_FLIGHT`` or the attempt number its redelivery will carry."""
        self.awaiting: dict[int, float] = {}
        """Offset -> monotonic time its redelivery is due."""
        self._heap: list[int] = []  # offsets in `status`, lazily cleaned
        self.next_offset: int | None = None
        """One past the highest offset delivered so far (``None``: nothing yet)."""
        self.committed: int | None = None
        """The last position committed, or known committed."""
        self.seek_at: float | None = None
        """When the partition must be read again from :attr:`seek_offset`; None if not."""
        self.failures: dict[int, int] = {}
        """Offset -> failed deliveries so far, for offsets not done (kept in commit notes)."""
        self.recorded: dict[int, int] = {}
        """Offset -> failed deliveries an earlier owner recorded (read on assignment)."""
        self.noted = ""
        """The note committed with :attr:`committed`."""
        self.unconfirmed = False
        """Whether :attr:`committed` was sent asynchronously and not confirmed yet."""

    @property
    def position(self) -> int | None:
        """The offset to commit: nothing at or above it is known done in order."""
        heap, status = self._heap, self.status
        while heap and heap[0] not in status:
            heapq.heappop(heap)
        return heap[0] if heap else self.next_offset

    @property
    def seek_offset(self) -> int:
        """The lowest offset awaiting redelivery (only meaningful while :attr:`seek_at`)."""
        return min(self.awaiting)

    @property
    def in_flight(self) -> int:
        """How many offsets are delivered and not done."""
        return len(self.status) - len(self.awaiting)

    def wait_for(self, offset: int, attempt: int, due: float) -> bool:
        """Make ``offset`` await redelivery as ``attempt`` at ``due``; False if stale."""
        if self.status.get(offset) != _IN_FLIGHT:
            return False
        self.status[offset] = attempt
        self.awaiting[offset] = due
        self._plan_seek()
        return True

    def _plan_seek(self) -> None:
        self.seek_at = self.awaiting[min(self.awaiting)] if self.awaiting else None


class Checkpoint:
    """Per-partition progress, commit gates and the one ``commit()`` of a subscription.

    Args:
        committer: sends offsets.
        commit_every: commit (asynchronously) after this many messages are done...
        commit_interval: ...or this many seconds after the last commit.
        gate_timeout: seconds a synchronous commit waits for each gate.
        clock: monotonic seconds (the in-memory backend passes its own).
        confirms_later: the committer answers asynchronous commits later
            (:meth:`commit_confirmed` / :meth:`commit_failed`): until then a synchronous
            commit (a revocation's) sends their positions again.
    """

    def __init__(
        self,
        committer: OffsetCommitter,
        *,
        commit_every: int = 1000,
        commit_interval: float = 1.0,
        gate_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        confirms_later: bool = False,
    ) -> None:
        self._committer = committer
        self._confirms_later = confirms_later
        self._every = commit_every
        self._interval = commit_interval
        self._gate_timeout = gate_timeout
        self._clock = clock
        self.partitions: dict[TopicPartition, PartitionState] = {}
        """The assigned partitions and their progress."""
        self._gates: list[CommitGate] = []
        self._deferred: tuple[dict[TopicPartition, int], list[Callable[[], bool]]] | None = None
        self._done_since_commit = 0
        self._retry = False  # a commit was refused: send again once the interval passed
        self._last_commit = clock()

    def add_gate(self, gate: CommitGate) -> None:
        """Commit nothing before ``gate`` says the side data below it is durable."""
        self._gates.append(gate)

    # -- partitions ---------------------------------------------------------------------
    def assign(
        self,
        partitions: Iterable[TopicPartition],
        notes: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        """Start ``partitions`` afresh: nothing from an earlier ownership is kept.

        ``notes`` are the commit notes found with the partitions' committed offsets (the
        failed attempts an earlier owner recorded, see :meth:`note`).
        """
        for tp in partitions:
            state = self.partitions[tp] = PartitionState()
            note = notes.get(tp) if notes else None
            if note:
                state.recorded = _parse_note(note)
                state.noted = note

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Commit the done work of ``partitions`` (waiting for the gates), then forget them.

        Raises:
            CommitError: a gate failed; the partitions are forgotten all the same (their
                undone work is delivered again to the next owner).
        """
        keys = [tp for tp in partitions if tp in self.partitions]
        try:
            self.commit(keys, wait=True)
        finally:
            self.lose(keys)

    def lose(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget ``partitions`` without committing anything of them."""
        for tp in partitions:
            self.partitions.pop(tp, None)
        if self._deferred is not None:
            offsets = {tp: o for tp, o in self._deferred[0].items() if tp in self.partitions}
            self._deferred = (offsets, self._deferred[1]) if offsets else None

    # -- messages -------------------------------------------------------------------------
    def accept(self, tp: TopicPartition, offset: int) -> int:
        """Whether a fetched record may be delivered: its attempt number, or 0 to skip it.

        Skipped: records of partitions not assigned, records fetched while the partition
        waits to be read again, done offsets and offsets still in flight (re-read after a
        seek). A due awaiting offset is delivered with its attempt number; an awaiting one
        that is not due yet makes the partition wait for it again.
        """
        state = self.partitions.get(tp)
        if state is None or state.seek_at is not None:
            return 0
        if state.awaiting:
            self._forget_vanished(tp, state, offset)
        next_offset = state.next_offset
        if next_offset is None or offset >= next_offset:
            # delivered for the first time (inlined: once per message)
            state.status[offset] = _IN_FLIGHT
            heapq.heappush(state._heap, offset)
            state.next_offset = offset + 1
            if state.recorded:
                failed = state.recorded.pop(offset, 0)
                if failed:
                    state.failures[offset] = failed
                    return failed + 1
            return 1
        attempt = state.status.get(offset)
        if attempt is None or attempt == _IN_FLIGHT:
            return 0  # done before, or still running
        due = state.awaiting[offset]
        if due > self._clock():
            state.seek_at = due
            return 0
        del state.awaiting[offset]
        state.status[offset] = _IN_FLIGHT
        return attempt

    def _forget_vanished(self, tp: TopicPartition, state: PartitionState, offset: int) -> None:
        """Awaited offsets below ``offset`` that the re-read skipped are gone from the log.

        A partition is re-read from its lowest awaited offset; a record above one that is
        due means the broker no longer has it (retention, compaction, DeleteRecords): it can
        be neither processed nor dead-lettered, and waiting for it would stall the commit.
        """
        now = self._clock()
        gone = [o for o, due in state.awaiting.items() if o < offset and due <= now]
        for vanished in gone:
            del state.awaiting[vanished]
            del state.status[vanished]
            state.failures.pop(vanished, None)
            logger.warning(
                "%s[%d]@%d awaited a redelivery but is gone from the log (retention, "
                "compaction or deleted records); skipped",
                tp[0],
                tp[1],
                vanished,
            )

    def done(self, tp: TopicPartition, offset: int) -> None:
        """``offset`` is done (acknowledged or dead-lettered); stale calls are ignored."""
        state = self.partitions.get(tp)
        if state is None:
            return
        status = state.status  # inlined: once per message
        if status.get(offset) != _IN_FLIGHT:
            return
        del status[offset]
        if state.failures:
            state.failures.pop(offset, None)
        self._done_since_commit += 1

    def redeliver(self, tp: TopicPartition, offset: int, attempt: int, delay: float) -> None:
        """``offset`` failed delivery ``attempt``: deliver it again after ``delay`` seconds."""
        state = self.partitions.get(tp)
        if state is not None and state.wait_for(offset, attempt + 1, self._clock() + delay):
            state.failures[offset] = attempt
            self._done_since_commit += 1  # the count is progress worth committing (its note)

    def release(self, tp: TopicPartition, offset: int, attempt: int) -> None:
        """``offset`` was handed back unprocessed: deliver it again as the same attempt."""
        state = self.partitions.get(tp)
        if state is not None:
            state.wait_for(offset, attempt, self._clock())

    def due_seeks(self) -> list[tuple[TopicPartition, int]]:
        """The partitions to read again now, and from which offset (the caller seeks)."""
        now = self._clock()
        seeks = []
        for tp, state in self.partitions.items():
            if state.seek_at is not None and state.seek_at <= now:
                state.seek_at = None
                seeks.append((tp, state.seek_offset))
        return seeks

    def note(self, tp: TopicPartition) -> str:
        """The commit note of ``tp``: failed attempts of offsets at or above its position.

        Format ``a1 <offset>:<failures> ...`` (at most 64 offsets, the lowest first);
        empty when there is nothing to remember.
        """
        state = self.partitions.get(tp)
        if state is None or not state.failures:
            return ""
        position = state.position
        kept = sorted(o for o in state.failures if position is None or o >= position)[:64]
        if not kept:
            return ""
        return "a1 " + " ".join(f"{o}:{state.failures[o]}" for o in kept)

    def is_waiting(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` waits to be read again (a redelivery is pending)."""
        state = self.partitions.get(tp)
        return state is not None and state.seek_at is not None

    # -- committing -----------------------------------------------------------------------
    def maybe_commit(self) -> None:
        """Commit asynchronously when enough is done or enough time passed.

        Raises:
            CommitError: a gate failed.
        """
        if self._deferred is not None:
            offsets, tickets = self._deferred
            if self._passes(tickets):
                self._deferred = None
                self._send(offsets, wait=False)
            return
        if self._done_since_commit >= self._every or (
            (self._done_since_commit or self._retry)
            and self._clock() - self._last_commit >= self._interval
        ):
            self.commit(None, wait=False)

    def commit(self, partitions: Iterable[TopicPartition] | None, *, wait: bool) -> None:
        """Commit the positions of ``partitions`` (all if None) that moved.

        A synchronous commit also sends positions whose asynchronous commit is unanswered
        (a revocation must not rely on a commit that may still fail).

        Steps: (1) the positions that moved; (2) the gates - waited for when ``wait``, else
        a ticket each, and the offsets are deferred until every ticket passes; (3) send;
        (4) remember them as committed.

        Raises:
            CommitError: a gate failed (nothing is committed).
        """
        keys = self.partitions if partitions is None else partitions
        if partitions is None:  # a partial commit (a revocation) leaves the others' work due
            self._done_since_commit = 0
            self._retry = False
            self._last_commit = self._clock()
        offsets: dict[TopicPartition, int] = {}
        for tp in keys:
            state = self.partitions.get(tp)
            if state is not None:
                position = state.position
                if position is not None and (
                    position != state.committed
                    or (wait and state.unconfirmed)
                    or (state.failures and self.note(tp) != state.noted)
                ):
                    offsets[tp] = position
        if not offsets:
            return
        if wait:
            self._keep_deferred_except(offsets if partitions is not None else None)
            for gate in self._gates:
                try:
                    gate.wait(self._gate_timeout)
                except ServiceError as exc:
                    raise _commit_error(exc) from exc
            self._send(offsets, wait=True)
            return
        tickets = [gate.ticket() for gate in self._gates]
        if self._passes(tickets):
            self._send(offsets, wait=False)
        else:
            self._deferred = (offsets, tickets)

    def _keep_deferred_except(self, committing: Mapping[TopicPartition, int] | None) -> None:
        """Drop the deferred commit's positions that a synchronous commit now covers.

        ``committing`` None: all of them. The others' positions still wait for their tickets.
        """
        if self._deferred is None:
            return
        offsets, tickets = self._deferred
        rest = {} if committing is None else {
            tp: o for tp, o in offsets.items() if tp not in committing
        }  # fmt: skip
        self._deferred = (rest, tickets) if rest else None

    def commit_failed(self, partitions: Iterable[TopicPartition]) -> None:
        """An asynchronous commit of ``partitions`` failed: commit them again.

        Tried again once the interval has passed, so a partition's last work is not left
        uncommitted while its member runs.
        """
        for tp in partitions:
            state = self.partitions.get(tp)
            if state is not None:
                state.committed = None
                state.unconfirmed = False
                self._rearm()

    def commit_confirmed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """The broker confirmed an asynchronous commit of ``offsets``."""
        for tp, offset in offsets.items():
            state = self.partitions.get(tp)
            if state is not None and state.committed == offset:
                state.unconfirmed = False

    def _rearm(self) -> None:
        """Make :meth:`maybe_commit` commit again once the interval has passed.

        Not sooner, whatever ``commit_every``: a refusing coordinator is not asked at every poll.
        """
        self._retry = True

    @staticmethod
    def _passes(tickets: list[Callable[[], bool]]) -> bool:
        try:
            return all(ticket() for ticket in tickets)
        except ServiceError as exc:
            raise _commit_error(exc) from exc

    def _send(self, offsets: dict[TopicPartition, int], *, wait: bool) -> None:
        live = {tp: o for tp, o in offsets.items() if tp in self.partitions}
        if not live:
            return
        logger.debug("committing %s (wait=%s)", live, wait)
        if not self._committer.commit_offsets(live, wait):
            self._rearm()  # refused at once: tried again after the interval
            return
        unconfirmed = self._confirms_later and not wait
        for tp, offset in live.items():
            state = self.partitions[tp]
            state.committed = offset
            state.noted = self.note(tp)
            state.unconfirmed = unconfirmed


def _parse_note(note: str) -> dict[int, int]:
    """The failed attempts in a commit note (see :meth:`Checkpoint.note`); bad text: none."""
    if not note.startswith("a1 "):
        return {}
    recorded: dict[int, int] = {}
    for item in note[3:].split():
        offset, _, failures = item.partition(":")
        if _decimal(offset, 19) and _decimal(failures, 5):
            recorded[int(offset)] = int(failures)
    return recorded


def _decimal(text: str, digits: int) -> bool:
    """ASCII digits only (``str.isdigit`` also takes '²'), at most ``digits`` of them."""
    return 0 < len(text) <= digits and text.isascii() and text.isdigit()


def _commit_error(exc: ServiceError) -> CommitError:
    if isinstance(exc, CommitError):
        return exc
    return CommitError(f"not committing: {exc}")
