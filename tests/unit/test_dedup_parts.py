"""The parts of CompactedTopicCache that need no broker: expiring entries and the write ledger."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

from service import DeduplicationStoreError
from service.backends.kafka.dedup import digest, held
from service.dedup.entries import OwnedPartitions, PartitionEntries
from service.dedup.ledger import WriteLedger

SECOND = 1000


# -- PartitionEntries -----------------------------------------------------------------------
def test_the_oldest_entries_leave_while_expired_a_budget_at_a_time() -> None:
    entries = PartitionEntries()
    for i in range(2500):
        entries.put(i, (10 + i // 1000) * SECOND)  # written in order of expiry: 10, 11, 12 s
    entries.put(-1, 20 * SECOND)
    assert entries.evict(10 * SECOND - 1, 1000) == 0  # the oldest is not expired yet
    assert entries.evict(11 * SECOND, 700) == 700
    assert entries.evict(11 * SECOND, 1000) == 1000  # 10 s and 11 s: 2000 in all
    assert entries.evict(11 * SECOND, 1000) == 300  # less than the budget: none left due
    assert len(entries) == 501
    assert entries.evict(12 * SECOND, 1000) == 500
    assert list(entries.map) == [-1]
    assert entries.evict(21 * SECOND, 1000) == 1 and len(entries) == 0
    assert entries.evict(30 * SECOND, 1000) == 0


def test_a_key_written_again_moves_behind_the_others_with_its_later_expiry() -> None:
    entries = PartitionEntries()
    entries.put(7, 5 * SECOND)
    entries.put(8, 6 * SECOND)
    entries.put(7, 50 * SECOND)  # again, later: not left at its first place
    assert list(entries.map) == [8, 7]
    assert entries.evict(10 * SECOND, 100) == 1
    assert entries.map == {7: 50 * SECOND}
    entries.evict(51 * SECOND, 100)
    assert len(entries) == 0


def test_an_entry_out_of_order_holds_up_only_until_it_expires() -> None:
    entries = PartitionEntries()
    entries.map[1] = 30 * SECOND  # a restore read this key twice: its first place, later expiry
    entries.map[2] = 10 * SECOND
    assert entries.evict(20 * SECOND, 100) == 0  # 2 is expired but waits behind 1
    assert entries.evict(30 * SECOND, 100) == 2


def test_eviction_gives_each_partition_its_turn() -> None:
    owned = OwnedPartitions()
    numbers, _ = owned.take({("in", 0), ("in", 1)})
    targets = {number: owned.partitions[number] for number in numbers}
    for number, entries in targets.items():
        for i in range(5000):
            entries.put(number * 10_000 + i, SECOND)
    # 3000 a call: partition 0 has more than that to drop, yet partition 1 gets its turn
    assert owned.evict(2 * SECOND, 3000) == 3000
    assert owned.evict(2 * SECOND, 3000) == 3000
    assert {number: len(entries) for number, entries in targets.items()} == {0: 2000, 1: 2000}
    assert owned.evict(2 * SECOND, 10_000) == 4000 and len(owned) == 0


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
    entries = PartitionEntries()
    for i in range(1000):
        entries.map[held(i.to_bytes(16, "big"))] = 5 * SECOND
    gc.collect()
    assert not gc.is_tracked(entries.map)  # never traversed by a collection


def test_a_fresh_partition_adopts_the_restored_map_as_it_is() -> None:
    owned = OwnedPartitions()
    owned.take({("in", 0)})
    restored = {1: 5 * SECOND, 2: 6 * SECOND}
    owned.adopt(0, restored)
    assert owned.maps[0] is restored and owned.partitions[0].map is restored
    owned.partitions[0].put(3, 7 * SECOND)  # writers and lookups see the same map
    assert owned.maps[0] == {1: 5 * SECOND, 2: 6 * SECOND, 3: 7 * SECOND}


def test_a_kept_partition_keeps_its_live_entries_and_the_later_expiry() -> None:
    owned = OwnedPartitions()
    owned.take({("one", 0)})
    live = owned.partitions[0]
    live.put(2, 5 * SECOND)
    live.put(1, 50 * SECOND)  # a worker's entry, newer than the topic's record of key 1
    numbers, fresh = owned.take({("two", 0)})
    assert numbers == [0] and fresh == [] and owned.partitions[0] is live
    # the restore read key 2 with a later expiry (another member wrote it again), key 1
    # with an earlier one, and keys 3 and 4: chunks of 2 keys per hold of the lock
    owned.adopt(0, {1: 10 * SECOND, 2: 20 * SECOND, 3: 30 * SECOND, 4: 40 * SECOND}, chunk=2)
    assert live.map == {1: 50 * SECOND, 2: 20 * SECOND, 3: 30 * SECOND, 4: 40 * SECOND}
    assert list(live.map) == [1, 2, 3, 4]  # 2 moved behind 1: the map stays in expiry order
    assert owned.maps[0] is live.map


def test_a_partition_released_during_its_restore_adopts_nothing() -> None:
    owned = OwnedPartitions()
    owned.take({("in", 0)})
    owned.release({("in", 0)})
    owned.adopt(0, {1: SECOND})
    assert owned.maps == {} and len(owned) == 0
