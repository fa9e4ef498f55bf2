"""The parts of CompactedTopicCache that need no broker: expiring entries and the write ledger."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

from service import DeduplicationStoreError
from service.dedup.entries import PartitionEntries
from service.dedup.ledger import WriteLedger

SECOND = 1000


# -- PartitionEntries -----------------------------------------------------------------------
def test_entries_leave_once_their_bucket_has_passed_a_budget_at_a_time() -> None:
    entries = PartitionEntries(SECOND)
    for i in range(2500):
        entries.add(i.to_bytes(16, "big"), 10 * SECOND + i % 3)  # one bucket: [10 s, 11 s)
    entries.add(b"later".ljust(16), 20 * SECOND)
    assert entries.evict(10 * SECOND + 500, 1000) == 0  # the bucket has not passed yet
    assert entries.evict(11 * SECOND, 1000) == 1000
    assert len(entries) == 1501
    assert entries.evict(11 * SECOND, 1000) == 1000
    assert entries.evict(11 * SECOND, 1000) == 500  # less than the budget: nothing left
    assert list(entries.map) == [b"later".ljust(16)]
    assert entries.evict(21 * SECOND, 1000) == 1 and len(entries) == 0


def test_a_key_stored_again_with_a_later_expiry_survives_its_first_bucket() -> None:
    entries = PartitionEntries(SECOND)
    key = b"k" * 16
    entries.add(key, 5 * SECOND)
    entries.add(key, 50 * SECOND)
    entries.evict(10 * SECOND, 100)
    assert entries.map[key] == 50 * SECOND
    entries.evict(51 * SECOND, 100)
    assert key not in entries.map


def test_reindex_buckets_keys_written_directly() -> None:
    entries = PartitionEntries(PartitionEntries.granularity_for(60 * SECOND))
    for i in range(10):
        entries.map[i.to_bytes(16, "big")] = (i + 1) * SECOND  # a restore's fast path
    entries.reindex()
    assert entries.bucketed == 10
    entries.evict(6 * SECOND, 100)
    assert sorted(entries.map.values()) == [6000, 7000, 8000, 9000, 10000]  # 6 s: bucket [6, 7)


def test_the_bucket_width_follows_the_window() -> None:
    assert PartitionEntries.granularity_for(60 * SECOND) == SECOND
    week = 7 * 24 * 3600 * SECOND
    assert PartitionEntries.granularity_for(week) == week // 1024


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
        entries.add(i.to_bytes(16, "big"), 5 * SECOND)
    gc.collect()
    assert not gc.is_tracked(entries.map)  # never traversed by a collection
