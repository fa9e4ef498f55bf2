"""An in-memory consumer group: what a Kafka group coordinator holds for one queue.

A :class:`ConsumerGroup` holds the committed position (and commit note) of every partition,
the live members (:class:`~service.backends.memory_subscription.InMemorySubscription`), which
member owns which partition, and what the group wants each member to own.

Rebalances follow Kafka's cooperative protocol: the group computes a new target for every
member (:func:`balance`), and each member applies it inside its next poll, on the polling
thread: ``on_lost`` first, then ``on_revoked`` (and the revocation commit), then
``on_assigned``. A partition moves to its new owner only once the old owner has revoked it
(or closed), so two members never hold one partition, except a member that lost it and has
not polled since (a zombie, as in Kafka: its commits of that partition are refused).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from service.backends.base import DeadLetterReason, TopicPartition
from service.backends.outputs import StagedRecord
from service.messages import Headers, Message

if TYPE_CHECKING:
    from service.backends.memory_subscription import InMemorySubscription

__all__ = ["Broker", "ConsumerGroup", "DeadLetter", "Position", "balance"]

Position = tuple[str, int, int]
"""topic, partition, offset"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message and why."""

    message: Message
    reason_detail: DeadLetterReason

    @property
    def reason(self) -> str:
        """``ErrorClass: text``."""
        return self.reason_detail.text


class Broker(Protocol):
    """What a member needs from the backend: its lock, its logs, and publishing."""

    cond: threading.Condition
    """Guards every group and log; notified when records arrive or partitions are freed."""

    def read(self, tp: TopicPartition, start: int, limit: int) -> list[Message]:
        """Up to ``limit`` records of ``tp`` from offset ``start`` (caller holds the lock)."""

    def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> None:
        """Publish one record (raises ProduceError when refused)."""

    def append(self, record: StagedRecord) -> None:
        """Append a committed transaction's record, never refused (caller holds the lock)."""

    def published(self, topics: list[str]) -> None:
        """Run the publish hooks for records appended to ``topics`` (lock not held)."""

    def regroup(self, group: ConsumerGroup) -> None:
        """Give the members of ``group`` new targets (caller does not hold the lock)."""


@dataclass(eq=False)
class ConsumerGroup:
    """The coordinator's view of one queue's group. Guarded by the backend's lock.

    Attributes:
        topics: the queue's topic names or ``^patterns``.
        dead_letter_topic: where dead letters go.
        committed: partition -> next offset to read, as committed.
        notes: partition -> the commit note (failed attempts) committed with it.
        members: the live members in join order (a member that lost its partitions is out
            until its next poll).
        owners: partition -> the member that holds it now.
        pending: delivered and not done, by position: the last delivery of each.
        dead_letters: every dead letter written, oldest first.
        exactly_once: members commit outputs with offsets (see the subscription).
    """

    topics: tuple[str, ...]
    dead_letter_topic: str
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    notes: dict[TopicPartition, str] = field(default_factory=dict)
    members: list[InMemorySubscription] = field(default_factory=list)
    owners: dict[TopicPartition, InMemorySubscription] = field(default_factory=dict)
    pending: dict[Position, Message] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    exactly_once: bool = False

    def assign(self, partitions: list[TopicPartition], *, eager: bool = False) -> None:
        """Give every live member its new target; each applies it at its next poll.

        Cooperative and sticky: a member keeps what it holds up to its fair share, and only
        the rest moves. ``eager``: every member revokes everything and gets a fresh share.
        """
        if eager:
            for member in self.members:
                member.target = set()
                member.revoke_all = True
        for member, share in zip(
            self.members, balance(partitions, [m.target for m in self.members]), strict=True
        ):
            member.target = share


def balance(
    partitions: list[TopicPartition], holdings: list[set[TopicPartition]]
) -> list[set[TopicPartition]]:
    """Split ``partitions`` fairly among members holding ``holdings``, moving as few as possible.

    The first ``len(partitions) % members`` members may hold one more than the others.
    """
    if not holdings:
        return []
    base, extra = divmod(len(partitions), len(holdings))
    quotas = [base + (index < extra) for index in range(len(holdings))]
    shares: list[set[TopicPartition]] = []
    taken: set[TopicPartition] = set()
    for held, quota in zip(holdings, quotas, strict=True):
        kept = [tp for tp in partitions if tp in held and tp not in taken][:quota]
        taken.update(kept)
        shares.append(set(kept))
    free = iter(tp for tp in partitions if tp not in taken)
    for share, quota in zip(shares, quotas, strict=True):
        share.update(tp for _, tp in zip(range(quota - len(share)), free, strict=False))
    return shares
