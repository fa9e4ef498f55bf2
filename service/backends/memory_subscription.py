"""InMemorySubscription: one member of an in-memory consumer group.

It fetches from its own positions (starting at the committed ones) and routes everything
that decides what may be committed through its
:class:`~service.backends.checkpoint.Checkpoint`, as the Kafka subscription does. The group's
changes (:mod:`service.backends.memory_group`) reach it inside
:meth:`~InMemorySubscription.poll`, on the polling thread: ``on_lost`` first, then
``on_revoked`` (and the revocation commit), then ``on_assigned``.

Exactly-once (a queue declared with ``exactly_once=True``): handlers' outputs and dead
letters are staged with their message's offset and appended, under the broker's lock, by
the commit that commits that offset, so they appear together or not at all, as
``read_committed`` readers see a Kafka transaction. (In memory a commit cannot fail:
:meth:`InMemoryBackend.refuse_publishes` applies to at-least-once publishes only.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from service.backends.base import (
    CommitGate,
    DeadLetterReason,
    Subscription,
    SubscriptionListener,
    TopicPartition,
)
from service.backends.checkpoint import Checkpoint
from service.backends.memory_group import Broker, ConsumerGroup, DeadLetter
from service.backends.outputs import StagedRecord
from service.errors import DeadLetterRefusedError, ProduceError
from service.messages import Message

__all__ = ["InMemorySubscription"]

logger = logging.getLogger(__name__)


class _Committer:
    """Writes a member's offsets into its group; refuses partitions it no longer owns."""

    def __init__(self, broker: Broker, group: ConsumerGroup, member: InMemorySubscription):
        self._broker, self._group, self._member = broker, group, member
        self.note: Callable[[TopicPartition], str] = lambda tp: ""
        self.staged: dict[TopicPartition, list[tuple[int, Sequence[StagedRecord]]]] = {}
        """Exactly-once: records to append with the commit of their input offset."""

    def commit_offsets(self, offsets: Mapping[TopicPartition, int], wait: bool) -> bool:
        """Commit ``offsets``; False, committing none, if one partition is not ours any more.

        (A zombie's commit: the group moved on, as a Kafka coordinator answers with an
        unknown member or illegal generation.)
        """
        del wait
        written: list[str] = []
        with self._broker.cond:
            refused = sorted(tp for tp in offsets if self._group.owners.get(tp) is not self._member)
            if not refused:
                for tp, position in offsets.items():
                    written += self._write_staged(tp, position)
                self._group.committed.update(offsets)
                self._group.notes.update((tp, self.note(tp)) for tp in offsets)
        if refused:
            logger.info("commit refused: this member no longer owns %s", refused)
        self._broker.published(written)
        return not refused

    def _write_staged(self, tp: TopicPartition, position: int) -> list[str]:
        """Append the staged records of ``tp`` below ``position`` (caller holds the lock)."""
        staged = self.staged.get(tp)
        if not staged:
            return []
        topics: list[str] = []
        kept = []
        for offset, records in staged:
            if offset >= position:
                kept.append((offset, records))
                continue
            for record in records:
                self._broker.append(record)
                topics.append(record.topic)
        if kept:
            self.staged[tp] = kept
        else:
            del self.staged[tp]
        return topics


class InMemorySubscription(Subscription):
    """One member of an in-memory consumer group; see the module docstring.

    Only the polling thread may call it, except the backend's test hooks.
    """

    def __init__(
        self,
        broker: Broker,
        group: ConsumerGroup,
        *,
        clock: Callable[[], float],
        jump: Callable[[float], None] | None,
    ) -> None:
        self._broker = broker
        self._group = group
        self._clock = clock
        self._jump = jump
        committer = _Committer(broker, group, self)
        self._checkpoint = Checkpoint(committer, commit_every=1, clock=clock)
        committer.note = self._checkpoint.note
        self._committer = committer
        self.transactional = group.exactly_once
        self._listeners: list[SubscriptionListener] = []
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._polls = 0
        self._closed = False
        # membership, written by the group under the broker's lock:
        self.target: set[TopicPartition] = set()
        """What the group wants this member to own."""
        self.revoke_all = False
        """An eager rebalance: revoke everything at the next poll."""
        self.lost: set[TopicPartition] = set()
        """Taken away without a revocation; ``on_lost`` at the next poll."""
        self.expelled = False
        """Out of the group since a loss; rejoins at the next poll."""
        self.owned: set[TopicPartition] = set()
        """Partitions this member was told it owns (``on_assigned``) and still holds."""

    # -- inspection ----------------------------------------------------------------------
    @property
    def assignment(self) -> list[TopicPartition]:
        """The partitions this member holds, sorted."""
        with self._broker.cond:
            return sorted(self.owned)

    @property
    def paused(self) -> set[TopicPartition]:
        """The partitions held by :meth:`pause` or waiting for a redelivery (as on Kafka)."""
        waiting = {tp for tp in self._checkpoint.partitions if self._checkpoint.is_waiting(tp)}
        return self._paused | waiting

    @property
    def held(self) -> set[TopicPartition]:
        """The partitions held by :meth:`pause` and not resumed."""
        return set(self._paused)

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def in_flight(self, tp: TopicPartition) -> int:
        """How many messages of ``tp`` this member delivered and has not settled yet."""
        state = self._checkpoint.partitions.get(tp)
        return 0 if state is None else state.in_flight

    def is_waiting(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` waits for a redelivery that is not due yet."""
        return self._checkpoint.is_waiting(tp)

    # -- the contract --------------------------------------------------------------------
    def add_listener(self, listener: SubscriptionListener) -> None:
        """Tell ``listener`` about assignments from now on (inside :meth:`poll`)."""
        self._listeners.append(listener)

    def add_gate(self, gate: CommitGate) -> None:
        """Commit no offset before ``gate`` says the side data below it is durable."""
        self._checkpoint.add_gate(gate)

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop fetching ``partitions`` (those this member holds) until :meth:`resume`."""
        self._paused.update(tp for tp in partitions if tp in self.owned)

    def resume(self, partitions: list[TopicPartition]) -> None:
        """Fetch ``partitions`` again."""
        self._paused.difference_update(partitions)

    def poll(self, max_messages: int, timeout: float) -> Iterator[Message] | None:
        """Up to ``max_messages`` records, accepted one by one as they are iterated.

        Applies the group's pending changes first (listeners run here), seeks the
        partitions whose redelivery is due and commits what is done. When nothing can be
        fetched: with the virtual clock, jumps to the next redelivery due; with a real
        clock, waits for it up to ``timeout``. Returns ``None`` only when nothing can be
        fetched now, no redelivery is awaited in a partition that is not paused, and no
        partition is on its way to this member.
        """
        if self._closed:
            return None
        self._polls += 1
        deadline = time.monotonic() + timeout
        while True:
            self._apply_group_changes()
            self.maintain()
            with self._broker.cond:
                fetched = self._fetch(max_messages)
                incoming = any(tp not in self.owned for tp in self.target) or self.expelled
            if fetched:
                return self._deliver(fetched, self._polls)
            due = min(
                (
                    state.seek_at
                    for tp, state in self._checkpoint.partitions.items()
                    if state.seek_at is not None and tp not in self._paused
                ),
                default=None,
            )
            if due is not None and self._jump is not None:
                self._jump(due)
                continue
            if due is None and not incoming:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return iter(())
            if due is not None:
                left = min(left, max(due - self._clock(), 0.0))
            with self._broker.cond:
                self._broker.cond.wait(left)

    def maintain(self) -> None:
        """Seek what is due for redelivery and commit what may be; fetch nothing.

        Raises:
            CommitError: a commit gate failed.
        """
        for tp, offset in self._checkpoint.due_seeks():
            if tp in self._positions:
                self._positions[tp] = offset
        self._checkpoint.maybe_commit()

    def acknowledge(self, message: Message, staged: Sequence[StagedRecord] = ()) -> None:
        """Mark ``message`` done; committed at the next poll (if nothing below is undone).

        ``staged`` (exactly-once): its handlers' outputs, appended by that commit.
        """
        tp = (message.topic, message.partition)
        if staged and tp in self._checkpoint.partitions:
            self._committer.staged.setdefault(tp, []).append((message.offset, staged))
        self._done(message)

    def redeliver(self, message: Message, delay: float = 0.0) -> None:
        """Deliver ``message`` again as attempt + 1, ``delay`` seconds from now (a seek)."""
        self._checkpoint.redeliver(
            (message.topic, message.partition), message.offset, message.attempt, delay
        )

    def release(self, message: Message) -> None:
        """Deliver ``message`` again as the same attempt (a seek, due now)."""
        tp = (message.topic, message.partition)
        self._checkpoint.release(tp, message.offset, message.attempt)

    def dead_letter(self, message: Message, reason: DeadLetterReason) -> None:
        """Publish ``message`` to the dead-letter topic, then mark it done.

        As on Kafka, a record the topic refuses for good (``ProduceError.permanent``) is
        written again without its payload (``dlq.payload_dropped`` says why). Does nothing
        when the partition is no longer this member's.

        Raises:
            ProduceError: a refusal that may pass; the message is not done.
            DeadLetterRefusedError: even the dead letter without payload is refused.
        """
        if (message.topic, message.partition) not in self._checkpoint.partitions:
            return
        topic = self._group.dead_letter_topic
        if self.transactional:
            record = StagedRecord(topic, message.value, message.key, reason.headers_for(message))
            with self._broker.cond:
                self._group.dead_letters.append(DeadLetter(message, reason))
            self.acknowledge(message, (record,))
            return
        try:
            self._broker.publish(
                topic, message.value, key=message.key, headers=reason.headers_for(message)
            )
        except ProduceError as exc:
            if not exc.permanent:
                raise
            headers = reason.headers_for(message, payload_dropped=str(exc))
            try:
                self._broker.publish(topic, None, key=message.key, headers=headers)
            except ProduceError as fallback:
                if not fallback.permanent:
                    raise
                raise DeadLetterRefusedError(
                    f"{message.location}: the dead-letter topic {topic!r} refuses the record "
                    f"({exc}) and its payload-less copy ({fallback})",
                    permanent=True,
                ) from fallback
        with self._broker.cond:
            self._group.dead_letters.append(DeadLetter(message, reason))
        self._done(message)

    def close(self) -> None:
        """Hear a pending loss, revoke (commit what is done) and leave the group."""
        if self._closed:
            return
        self._closed = True
        self._hear_lost()
        owned = sorted(self.owned)
        try:
            if owned:
                for listener in self._listeners:
                    listener.on_revoked(owned)
                self._checkpoint.revoke(owned)
        finally:
            with self._broker.cond:
                self._drop(owned)
                if self in self._group.members:
                    self._group.members.remove(self)
                self.target = set()
                self._broker.cond.notify_all()
            self._regroup()

    # -- inside poll ---------------------------------------------------------------------
    def _apply_group_changes(self) -> None:
        self._hear_lost()
        with self._broker.cond:
            if self.expelled:
                self.expelled = False
                self._group.members.append(self)
                rejoined = True
            else:
                rejoined = False
        if rejoined:
            self._regroup()
        with self._broker.cond:
            revoked = sorted(self.owned if self.revoke_all else self.owned - self.target)
            self.revoke_all = False
        if revoked:
            try:
                for listener in self._listeners:
                    listener.on_revoked(revoked)
                self._checkpoint.revoke(revoked)
            finally:
                with self._broker.cond:
                    self._drop(revoked)
                    self._broker.cond.notify_all()
        with self._broker.cond:
            owners, committed = self._group.owners, self._group.committed
            assigned = sorted(tp for tp in self.target - self.owned if tp not in owners)
            notes = {tp: self._group.notes[tp] for tp in assigned if tp in self._group.notes}
            for tp in assigned:
                owners[tp] = self
                self.owned.add(tp)
                self._positions[tp] = committed.get(tp, 0)
                self._paused.discard(tp)
        if assigned:
            self._checkpoint.assign(assigned, notes)
            for listener in self._listeners:
                listener.on_assigned(assigned)

    def _hear_lost(self) -> None:
        with self._broker.cond:
            lost, self.lost = sorted(self.lost), set()
            self._drop(lost)
        if lost:
            logger.warning("lost %s without commit", lost)
            try:
                for listener in self._listeners:
                    listener.on_lost(lost)
            finally:
                self._checkpoint.lose(lost)

    def _regroup(self) -> None:
        self._broker.regroup(self._group)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        """Forget ``partitions`` here and free them in the group (caller holds the lock)."""
        for tp in partitions:
            self._committer.staged.pop(tp, None)
            self.owned.discard(tp)
            self._positions.pop(tp, None)
            self._paused.discard(tp)
            if self._group.owners.get(tp) is self:
                del self._group.owners[tp]

    def _fetch(self, limit: int) -> list[Message]:
        """Records from the fetchable partitions, rotating which goes first (lock held)."""
        ready = [
            tp
            for tp in sorted(self.owned)
            if tp not in self._paused and not self._checkpoint.is_waiting(tp)
        ]
        if not ready:
            return []
        turn = self._polls % len(ready)
        fetched: list[Message] = []
        for tp in ready[turn:] + ready[:turn]:
            fetched += self._broker.read(tp, self._positions[tp], limit - len(fetched))
            if len(fetched) >= limit:
                break
        return fetched

    def _deliver(self, fetched: list[Message], poll: int) -> Iterator[Message]:
        """Accept each record as it is reached, so a partition rewound meanwhile skips it."""
        accept, positions, pending = self._checkpoint.accept, self._positions, self._group.pending
        for record in fetched:
            if poll != self._polls or self._closed:
                return  # a newer poll fetches the rest again
            tp = (record.topic, record.partition)
            if positions.get(tp) != record.offset:
                continue  # the partition went meanwhile
            positions[tp] = record.offset + 1
            attempt = accept(tp, record.offset)
            if attempt:
                message = record if attempt == 1 else record._replace(attempt=attempt)
                with self._broker.cond:
                    pending[(record.topic, record.partition, record.offset)] = message
                yield message

    def _done(self, message: Message) -> None:
        tp = (message.topic, message.partition)
        state = self._checkpoint.partitions.get(tp)
        if state is None:
            return  # revoked or lost meanwhile: the next owner delivers it again
        before = state.in_flight
        self._checkpoint.done(tp, message.offset)
        if state.in_flight < before:
            with self._broker.cond:
                if self._group.owners.get(tp) is self:
                    self._group.pending.pop((*tp, message.offset), None)
