"""The checkpoint: what may be committed, redeliveries as seeks, gates, attempts in notes."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from service.backends.checkpoint import Checkpoint
from service.errors import CommitError, DeduplicationStoreError

TP = ("orders", 0)


class Committer:
    def __init__(self) -> None:
        self.commits: list[tuple[dict[tuple[str, int], int], bool]] = []
        self.refuse = False

    def commit_offsets(self, offsets: Mapping[tuple[str, int], int], wait: bool) -> bool:
        if self.refuse:
            return False
        self.commits.append((dict(offsets), wait))
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Gate:
    def __init__(self) -> None:
        self.durable = True
        self.error: Exception | None = None

    def ticket(self) -> Callable[[], bool]:
        def check() -> bool:
            if self.error is not None:
                raise self.error
            return self.durable

        return check

    def wait(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error


def checkpoint() -> tuple[Checkpoint, Committer, Clock]:
    committer, clock = Committer(), Clock()
    cp = Checkpoint(committer, commit_every=1, clock=clock)
    cp.assign([TP])
    return cp, committer, clock


def deliver(cp: Checkpoint, *offsets: int) -> list[int]:
    return [cp.accept(TP, o) for o in offsets]


def test_out_of_order_completions_commit_only_below_the_lowest_undone() -> None:
    cp, committer, _ = checkpoint()
    assert deliver(cp, 0, 1, 2, 3) == [1, 1, 1, 1]
    for offset in (1, 3):
        cp.done(TP, offset)
    cp.commit(None, wait=True)
    assert committer.commits[-1] == ({TP: 0}, True)
    cp.done(TP, 0)
    cp.commit(None, wait=True)
    assert committer.commits[-1] == ({TP: 2}, True)
    cp.done(TP, 2)
    cp.commit(None, wait=False)
    assert committer.commits[-1] == ({TP: 4}, False)


def test_two_redeliveries_in_a_partition_keep_the_lower_one_and_skip_done_work() -> None:
    cp, committer, clock = checkpoint()
    deliver(cp, 0, 1, 2, 3)
    cp.redeliver(TP, 0, attempt=1, delay=1.0)
    cp.redeliver(TP, 1, attempt=1, delay=5.0)
    cp.done(TP, 2)  # offset 3 stays in flight
    assert cp.is_waiting(TP)
    assert deliver(cp, 4) == [0]  # fetched while waiting: not delivered
    cp.commit(None, wait=True)
    assert committer.commits[-1][0] == {TP: 0}
    assert cp.due_seeks() == []
    clock.now += 1.0
    assert cp.due_seeks() == [(TP, 0)]
    # re-read from 0: 0 is due (attempt 2); 1 is not due yet: the partition waits again
    assert deliver(cp, 0) == [2]
    assert deliver(cp, 1) == [0] and cp.is_waiting(TP)
    clock.now += 4.0
    assert cp.due_seeks() == [(TP, 1)]
    assert deliver(cp, 1, 2, 3, 4) == [2, 0, 0, 1]  # 2 done, 3 still in flight: skipped
    for offset in (0, 1, 3, 4):
        cp.done(TP, offset)
    cp.commit(None, wait=True)
    assert committer.commits[-1][0] == {TP: 5}


def test_released_work_comes_back_as_the_same_attempt() -> None:
    cp, _, _ = checkpoint()
    deliver(cp, 0, 1)
    cp.release(TP, 1, attempt=3)
    assert cp.due_seeks() == [(TP, 1)]
    assert deliver(cp, 1) == [3]


def test_stale_settles_are_ignored_and_a_reassignment_starts_afresh() -> None:
    cp, committer, _ = checkpoint()
    deliver(cp, 0, 1)
    cp.lose([TP])
    cp.done(TP, 0)
    cp.redeliver(TP, 1, attempt=1, delay=0)
    cp.commit(None, wait=True)
    assert committer.commits == []
    cp.assign([TP])
    assert not cp.is_waiting(TP)
    assert deliver(cp, 0) == [1]


def test_a_gate_holds_an_async_commit_until_durable_and_a_failing_gate_raises() -> None:
    cp, committer, _ = checkpoint()
    gate = Gate()
    cp.add_gate(gate)
    deliver(cp, 0)
    gate.durable = False
    cp.done(TP, 0)
    cp.maybe_commit()
    assert committer.commits == []  # deferred
    gate.durable = True
    cp.maybe_commit()
    assert committer.commits == [({TP: 1}, False)]
    deliver(cp, 1)
    cp.done(TP, 1)
    gate.error = DeduplicationStoreError("entry refused")
    with pytest.raises(CommitError, match="entry refused"):
        cp.maybe_commit()
    with pytest.raises(CommitError, match="entry refused"):
        cp.revoke([TP])
    assert TP not in cp.partitions  # forgotten all the same
    assert committer.commits == [({TP: 1}, False)]


def test_a_refused_commit_is_not_remembered_as_committed() -> None:
    cp, committer, _ = checkpoint()
    deliver(cp, 0)
    cp.done(TP, 0)
    committer.refuse = True
    cp.commit(None, wait=True)
    committer.refuse = False
    cp.commit(None, wait=True)
    assert committer.commits == [({TP: 1}, True)]


def test_failed_attempts_travel_in_the_commit_note_to_the_next_owner() -> None:
    cp, committer, _ = checkpoint()
    deliver(cp, 0, 1)
    cp.done(TP, 1)
    cp.redeliver(TP, 0, attempt=2, delay=10)  # the second delivery failed
    cp.commit(None, wait=True)
    note = cp.note(TP)
    assert committer.commits[-1][0] == {TP: 0} and note == "a1 0:2"
    nxt, _, _ = checkpoint()
    nxt.assign([TP], {TP: note})
    assert deliver(nxt, 0, 1) == [3, 1]
    assert nxt.note(TP) == "a1 0:2"  # kept while in flight
    nxt.done(TP, 0)
    assert nxt.note(TP) == ""
    other, _, _ = checkpoint()
    for garbage in ("garbage:1 x", "a1 0:2\u00b2", "a1 \u0660:1", "a1 0:99999999", "a1 :"):
        other.assign([TP], {TP: garbage})
        assert deliver(other, 0) == [1], garbage


def test_an_awaited_offset_gone_from_the_log_does_not_stall_the_commit() -> None:
    cp, committer, _ = checkpoint()
    deliver(cp, 0, 1, 2)
    cp.done(TP, 0)
    cp.done(TP, 2)
    cp.redeliver(TP, 1, attempt=1, delay=0)
    assert cp.due_seeks() == [(TP, 1)]
    # the re-read starts at 3: offset 1 was deleted (retention, DeleteRecords)
    assert deliver(cp, 3) == [1]
    cp.done(TP, 3)
    cp.commit(None, wait=True)
    assert committer.commits[-1][0] == {TP: 4}


def test_a_revocation_commit_leaves_the_other_partitions_done_work_due() -> None:
    """Work done before a revocation, in a partition kept, is committed by the next
    maybe_commit: the revocation's commit of its own partitions does not reset the count."""
    committer, clock = Committer(), Clock()
    cp = Checkpoint(committer, commit_every=1000, commit_interval=0.1, clock=clock)
    kept, revoked = ("orders", 2), ("orders", 0)
    cp.assign([kept, revoked])
    cp.accept(kept, 7)
    cp.accept(revoked, 3)
    clock.now += 1
    cp.done(kept, 7)  # the last message of its partition: nothing more will be done there
    cp.done(revoked, 3)
    cp.revoke([revoked])
    assert committer.commits == [({revoked: 4}, True)]
    clock.now += 1
    cp.maybe_commit()
    assert committer.commits[-1] == ({kept: 8}, False)


def test_a_failed_async_commit_is_tried_again_after_the_interval() -> None:
    """A commit the broker refuses in the background (e.g. ILLEGAL_GENERATION during a
    rebalance) carrying a partition's last work is sent again, not left for good."""
    committer, clock = Committer(), Clock()
    cp = Checkpoint(committer, commit_every=1000, commit_interval=1.0, clock=clock)
    cp.assign([TP])
    cp.accept(TP, 5)
    cp.done(TP, 5)
    clock.now += 1.5
    cp.maybe_commit()
    cp.commit_failed([TP])
    cp.maybe_commit()
    assert len(committer.commits) == 1, "not before the interval"
    clock.now += 1.5
    cp.maybe_commit()
    assert committer.commits == [({TP: 6}, False), ({TP: 6}, False)]


def test_a_commit_refused_at_once_is_tried_again_after_the_interval() -> None:
    committer, clock = Committer(), Clock()
    cp = Checkpoint(committer, commit_every=1000, commit_interval=1.0, clock=clock)
    cp.assign([TP])
    cp.accept(TP, 5)
    cp.done(TP, 5)
    clock.now += 1.5
    committer.refuse = True
    cp.maybe_commit()
    committer.refuse = False
    clock.now += 1.5
    cp.maybe_commit()
    assert committer.commits == [({TP: 6}, False)]


def test_a_revocation_keeps_the_deferred_commit_of_the_kept_partitions() -> None:
    """A commit of all partitions waits for a gate (dedup entries not confirmed yet); a
    revocation's synchronous commit in the same poll must not throw the kept ones away."""
    committer, clock, gate = Committer(), Clock(), Gate()
    cp = Checkpoint(committer, commit_every=1000, commit_interval=1.0, clock=clock)
    cp.add_gate(gate)
    kept, revoked = ("orders", 2), ("orders", 0)
    cp.assign([kept, revoked])
    cp.accept(kept, 7)
    cp.accept(revoked, 3)
    cp.done(kept, 7)
    cp.done(revoked, 3)
    clock.now += 1.5
    gate.durable = False
    cp.maybe_commit()  # deferred until the gate's ticket passes
    cp.revoke([revoked])
    assert committer.commits == [({revoked: 4}, True)]
    gate.durable = True
    cp.maybe_commit()
    assert committer.commits[-1] == ({kept: 8}, False)


def test_a_refused_commit_waits_for_the_interval_even_when_every_message_commits() -> None:
    committer, clock = Committer(), Clock()
    cp = Checkpoint(committer, commit_every=1, commit_interval=1.0, clock=clock)
    cp.assign([TP])
    cp.accept(TP, 5)
    cp.done(TP, 5)
    committer.refuse = True
    for _ in range(10):
        cp.maybe_commit()  # one refusal, then nothing until the interval passed
    committer.refuse = False
    cp.maybe_commit()
    assert committer.commits == []
    clock.now += 1.5
    cp.maybe_commit()
    assert committer.commits == [({TP: 6}, False)]


def test_a_revocation_sends_again_a_position_whose_async_commit_is_unanswered() -> None:
    """The async commit may still fail after the partition is gone: the revocation's
    synchronous commit must not count on it; once confirmed, it need not send it again."""
    committer, clock = Committer(), Clock()
    cp = Checkpoint(committer, commit_every=1, clock=clock, confirms_later=True)
    other = ("orders", 1)
    cp.assign([TP, other])
    for tp in (TP, other):
        cp.accept(tp, 3)
        cp.done(tp, 3)
    cp.maybe_commit()
    assert committer.commits == [({TP: 4, other: 4}, False)]
    cp.commit_confirmed({other: 4})
    cp.revoke([TP, other])
    assert committer.commits[-1] == ({TP: 4}, True)
