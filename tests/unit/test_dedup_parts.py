"""The parts of CompactedTopicCache that need no broker: expiring entries and the write ledger."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

from service import DeduplicationStoreError
from service.backends.kafka.dedup import digest, held
from service.dedup.entries import PartitionEntries
from service.dedup.ledger import WriteLedger

SECOND = 1000


# -- PartitionEntries -----------------------------------------------------------------------
def test_a_sweep_evicts_expired_keys_a_budget_at_a_time_and_keeps_the_rest() -> None:
    entries = PartitionEntries(SECOND)
    for i in range(2500):
        entries.map[i] = 10 * SECOND + i % 3
    entries.map[-1] = 20 * SECOND
    assert entries.evict(10 * SECOND - 1, 1000) == 1000  # a sweep starts: nothing expired yet
    assert entries.evict(10 * SECOND - 1, 2000) == 1501  # less than the budget: sweep over
    assert len(entries) == 2501 and entries.sweeping == 0
    assert entries.evict(11 * SECOND - 2, 1000) == 0  # the next sweep is due a second later
    assert entries.evict(11 * SECOND, 1000) == 1000
    assert entries.sweeping == 1501
    assert len(entries) == 1502  # the sweep takes the last keys first: one is not expired
    assert entries.evict(11 * SECOND, 1000) == 1000
    assert entries.evict(11 * SECOND, 1000) == 501
    assert list(entries.map) == [-1]
    assert entries.evict(21 * SECOND, 1000) == 1 and len(entries) == 0
    assert entries.evict(30 * SECOND, 1000) == 0  # nothing held: no sweep


def test_a_key_stored_again_with_a_later_expiry_is_kept_until_the_later_one() -> None:
    entries = PartitionEntries(SECOND)
    entries.map[7] = 5 * SECOND
    entries.map[7] = 50 * SECOND
    entries.evict(10 * SECOND, 100)
    assert entries.map[7] == 50 * SECOND
    entries.evict(51 * SECOND, 100)
    assert 7 not in entries.map


def test_keys_added_during_a_sweep_wait_for_the_next_one_and_removed_ones_are_skipped() -> None:
    entries = PartitionEntries(SECOND)
    for i in range(10):
        entries.map[i] = SECOND
    assert entries.evict(2 * SECOND, 4) == 4  # the snapshot holds the 10 keys
    del entries.map[0]  # gone meanwhile (the partition's keys may change under a sweep)
    entries.map[100] = SECOND  # expired, but added after the snapshot
    assert entries.evict(2 * SECOND, 100) == 6
    assert list(entries.map) == [100]
    assert entries.evict(3 * SECOND, 100) == 1 and len(entries) == 0


def test_an_expired_key_leaves_at_most_one_interval_late() -> None:
    interval = PartitionEntries.interval_for(64 * 60 * SECOND)  # a minute
    entries = PartitionEntries(interval)
    entries.map[1] = 0
    entries.evict(1, 100)  # a sweep at 1 ms: the next is due a minute later
    entries.map[2] = 2  # expires right after that sweep
    now = 2
    while 2 in entries.map:
        now += SECOND
        entries.evict(now, 100)
    assert now - 2 <= interval + SECOND


def test_the_sweep_interval_follows_the_window() -> None:
    assert PartitionEntries.interval_for(60 * SECOND) == SECOND
    week = 7 * 24 * 3600 * SECOND
    assert PartitionEntries.interval_for(week) == week // 64


def test_a_held_digest_is_an_int_smaller_than_its_bytes() -> None:
    wire = digest("tests.Consumer.some-message-id")
    assert len(wire) == 16
    assert held(wire) == int.from_bytes(wire, "big")
    assert sys.getsizeof(held(wire)) < sys.getsizeof(wire)


# -- WriteLedger ------------------------------------------------------------------------
def test_a_ticket_turns_true_once_the_entries_before_it_are_confirmed() -> None:
    ledger = WriteLedger("t.dedup")
    assert ledger.ticket()() is True  # nothing written
    ledger.written(0)
    ledger.written(1)
    ticket = ledger.ticket()
    ledger.written(1)  # after the ticket: not covered
    ledger.confirmed(0, None)
    assert ticket() is False
    ledger.confirmed(1, None)
    assert ticket() is True
    assert ledger.pending() == {1: 1}


def test_counts_stay_exact_with_many_writer_threads() -> None:
    ledger = WriteLedger("t.dedup")

    def work(partition: int) -> None:
        for _ in range(20_000):
            ledger.written(partition % 2)
            ledger.confirmed(partition % 2, None)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert ledger.totals == (160_000, 160_000)
    assert ledger.pending() == {}


def test_a_refusal_vetoes_until_its_partition_is_revoked_and_the_rebalance_ends() -> None:
    ledger = WriteLedger("t.dedup")
    before = ledger.ticket()
    for n in range(3):
        ledger.written(0)
        ledger.confirmed(0, f"t.dedup[0]: MSG_SIZE_TOO_LARGE ({n})")
    with pytest.raises(DeduplicationStoreError, match=r"3 dedup entries .* \(0\)"):
        ledger.check()  # counted, and the first reason kept (not every one)
    for check in (before, ledger.ticket(), ledger.check, ledger.check):
        with pytest.raises(DeduplicationStoreError, match="MSG_SIZE_TOO_LARGE") as caught:
            check()
        assert caught.value.partitions == {0}
    ledger.retire([1])  # another partition revoked: no change
    ledger.end_rebalance()
    with pytest.raises(DeduplicationStoreError):
        ledger.check()
    ledger.retire([0])
    with pytest.raises(DeduplicationStoreError):  # still covers the revocation's commit
        ledger.ticket()()
    ledger.end_rebalance()
    ledger.check()
    assert ledger.ticket()() is True


def test_a_refusal_is_dropped_when_its_partition_is_lost_and_others_stay() -> None:
    ledger = WriteLedger("t.dedup")
    for partition in (0, 1):
        ledger.written(partition)
        ledger.confirmed(partition, f"t.dedup[{partition}]: refused")
    ledger.forget([0])
    with pytest.raises(DeduplicationStoreError) as caught:
        ledger.check()
    assert caught.value.partitions == {1}


def test_the_entries_cost_the_garbage_collector_nothing() -> None:
    entries = PartitionEntries(SECOND)
    for i in range(1000):
        entries.map[held(i.to_bytes(16, "big"))] = 5 * SECOND
    gc.collect()
    assert not gc.is_tracked(entries.map)  # never traversed by a collection
