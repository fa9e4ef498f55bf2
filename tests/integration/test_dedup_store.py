"""CompactedTopicCache as a subscription listener and commit gate, on the real broker (issue 12).

The rebalance events are called directly, in the orders a subscription produces them, so
each test pins one promise of the store without a group's timing.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer as RawConsumer

from service import DeduplicationStoreError
from service.backends.kafka import KafkaBackend
from service.backends.kafka import dedup as dedup_module
from service.backends.kafka.dedup import CompactedTopicCache, digest, held
from tests.kafka_helpers import kafka_backend, unique

pytestmark = pytest.mark.integration

IN = "input"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend(kafka_bootstrap: str) -> Iterator[KafkaBackend]:
    b = kafka_backend(kafka_bootstrap)
    yield b
    b.close()


def keys(first: int, last: int) -> list[str]:
    return [f"tests.A.{i}" for i in range(first, last)]


def store_all(cache: CompactedTopicCache, names: list[str], partition: int = 0) -> None:
    for name in names:
        cache.store(name, name, partition=partition)
    cache.wait(10)


def partitions_of(bootstrap: str, topic: str) -> int:
    consumer = RawConsumer({"bootstrap.servers": bootstrap, "group.id": unique("m")})
    try:
        return len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    finally:
        consumer.close()


# -- fault 4: a lost assignment ------------------------------------------------------------
def test_a_lost_partition_is_dropped_and_restored_when_it_comes_back(
    backend: KafkaBackend,
) -> None:
    topic = unique("dedup")
    a = CompactedTopicCache(backend, topic)
    a.on_assigned([(IN, 0)])
    store_all(a, keys(0, 20))
    a.on_lost([(IN, 0)])  # A exceeded max.poll.interval.ms
    assert len(a) == 0 and "tests.A.0" not in a
    b = CompactedTopicCache(backend, topic)  # the member that took the partition over
    b.on_assigned([(IN, 0)])
    store_all(b, keys(20, 30))  # then it dies before committing
    a.on_assigned([(IN, 0)])  # the partition comes back to A
    assert [k for k in keys(0, 30) if a.get(k, partition=0) is None] == []
    assert len(a) == 30


def test_an_assignment_without_a_revocation_before_it_still_restores(
    backend: KafkaBackend,
) -> None:
    topic = unique("dedup")
    a = CompactedTopicCache(backend, topic)
    a.on_assigned([(IN, 0)])
    store_all(a, keys(0, 5))
    b = CompactedTopicCache(backend, topic)
    b.on_assigned([(IN, 0)])
    store_all(b, keys(5, 10))
    a.on_assigned([(IN, 0)])  # no on_lost was heard: the assignment alone starts afresh
    assert [k for k in keys(0, 10) if k not in a] == []


# -- fault 5: a store during revocation --------------------------------------------------
def test_a_store_after_revocation_writes_the_entry_but_keeps_nothing_in_memory(
    backend: KafkaBackend,
) -> None:
    topic = unique("dedup")
    a = CompactedTopicCache(backend, topic)
    a.on_assigned([(IN, 0)])
    store_all(a, keys(0, 3))
    a.on_revoked([(IN, 0)])
    a.store("tests.A.late", "tests.A.late", partition=0)  # a worker still running
    a.wait(10)
    assert len(a) == 0 and a.get("tests.A.late", partition=0) is None
    b = CompactedTopicCache(backend, topic)
    b.on_assigned([(IN, 0)])
    store_all(b, keys(20, 28))
    a.on_assigned([(IN, 0)])
    missing = [k for k in [*keys(0, 3), "tests.A.late", *keys(20, 28)] if k not in a]
    assert missing == []


def test_a_dedup_partition_shared_by_two_input_topics_stays_until_both_go(
    backend: KafkaBackend,
) -> None:
    topic = unique("dedup")
    a = CompactedTopicCache(backend, topic)
    a.on_assigned([("one", 0), ("two", 0)])
    store_all(a, keys(0, 3))
    a.on_revoked([("one", 0)])
    assert "tests.A.0" in a  # still needed by two[0]
    b = CompactedTopicCache(backend, topic)
    b.on_assigned([("one", 0)])
    store_all(b, keys(10, 12))  # one[0]'s new owner
    a.on_assigned([("one", 0)])  # back: B's entries are read, A's own stay
    assert [k for k in [*keys(0, 3), *keys(10, 12)] if k not in a] == []
    a.on_lost([("one", 0), ("two", 0)])
    assert len(a) == 0


def test_a_restore_into_a_kept_partition_never_removes_what_a_worker_holds(
    backend: KafkaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """one[0] is owned while two[0] is assigned: its restore runs beside the workers of
    one[0]. The topic's old, expired record of a key must not remove the entry a worker
    holds for it (its own record lands after the end the restore reads to)."""
    topic, clock = unique("dedup"), Clock()
    old = CompactedTopicCache(backend, topic, window=60, clock=clock)
    old.on_assigned([("one", 0)])
    store_all(old, ["k", "gone"])  # expire at now + 60
    clock.now += 100
    cache = CompactedTopicCache(backend, topic, window=60, clock=clock)
    cache.on_assigned([("one", 0)])
    assert "k" not in cache and "gone" not in cache
    real = dedup_module.restore_partitions

    def worker_stores_during_the_restore(*args: Any) -> int:
        # what a worker of one[0] does while the restore reads: holds k (a lookup found it
        # absent), its record not yet in the range being read
        cache._owned.partitions[0].put(held(digest("k")), int((clock.now + 60) * 1000))
        return real(*args)

    monkeypatch.setattr(dedup_module, "restore_partitions", worker_stores_during_the_restore)
    cache.on_assigned([("two", 0)])
    assert "k" in cache and "gone" not in cache


def test_a_failed_restore_adopts_nothing_and_keeps_the_kept_partitions_entries(
    backend: KafkaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, clock = unique("dedup"), Clock()
    cache = CompactedTopicCache(backend, topic, window=60, clock=clock, partitions=3)
    cache.on_assigned([("one", 0), ("one", 1)])
    store_all(cache, ["a", "b"], partition=0)
    store_all(cache, ["c"], partition=1)
    real = dedup_module.restore_partitions

    def read_then_fail(*args: Any) -> int:
        real(*args)
        for restored in args[2].values():  # what it read must never be adopted
            restored[12345] = int((clock.now + 60) * 1000)
        raise DeduplicationStoreError("the restore failed midway")

    monkeypatch.setattr(dedup_module, "restore_partitions", read_then_fail)
    with pytest.raises(DeduplicationStoreError):
        cache.on_assigned([("two", 0), ("two", 2)])
    assert cache.is_ready and len(cache) == 3 and all(k in cache for k in "abc")
    assert sorted(cache._owned.partitions) == [0, 1]  # two[*] released, one[*] kept
    monkeypatch.setattr(dedup_module, "restore_partitions", real)
    cache.on_assigned([("two", 0), ("two", 2)])  # tried again: kept 0 merged, 2 fresh
    assert sorted(cache._owned.partitions) == [0, 1, 2] and len(cache) == 3
    cache.on_revoked([("one", 0)])
    assert "a" in cache  # still owned through two[0]
    cache.on_revoked([("two", 0)])
    assert "a" not in cache and "c" in cache


# -- expired entries leave memory while the partition stays assigned ------------------------
def test_expired_entries_are_evicted_while_the_partition_stays_assigned(
    backend: KafkaBackend,
) -> None:
    clock = Clock()
    cache = CompactedTopicCache(backend, unique("dedup"), window=60, clock=clock)
    cache.on_assigned([(IN, 0)])
    per_second, seconds, peak = 50, 240, 0
    for second in range(seconds):
        for i in range(per_second):
            name = f"tests.A.{second}.{i}"
            cache.store(name, name, partition=0)
        clock.now += 1
        cache.poll()
        peak = max(peak, len(cache))
    cache.wait(10)
    # bounded by the window (plus one bucket of eviction slack), not by the uptime
    assert peak <= per_second * 62 < per_second * seconds
    assert f"tests.A.{seconds - 1}.0" in cache
    clock.now += 62
    cache.poll()
    assert len(cache) == 0


def test_eviction_keeps_up_with_a_busy_loop_in_every_partition(backend: KafkaBackend) -> None:
    """A busy dispatcher polls once per 1000 messages: every partition still drops what
    expired (a design that looked at every key each window / 64 fell behind here, and the
    later partitions grew with the uptime)."""
    clock = Clock()
    partitions, window = 6, 64
    topic = unique("dedup")
    backend.declare_topic(topic, partitions=partitions)
    cache = CompactedTopicCache(backend, topic, window=window, clock=clock)
    cache.on_assigned([(IN, p) for p in range(partitions)])
    peak = 0
    for second in range(3 * window):  # 1000 messages a second, one poll per 1000
        for i in range(1000):
            name = f"tests.A.{second}.{i}"
            cache.store(name, name, partition=i % partitions)
        clock.now += 1
        cache.poll()
        peak = max(peak, len(cache))
    assert peak <= 1000 * (window + 2)  # a window's entries, and at most a second late
    assert f"tests.A.{3 * window - window // 2}.0" in cache
    cache.wait(30)


def test_an_expiry_longer_than_the_window_is_cut_to_the_window(backend: KafkaBackend) -> None:
    clock = Clock()
    cache = CompactedTopicCache(backend, unique("dedup"), window=60, clock=clock)
    cache.on_assigned([(IN, 0)])
    cache.store("long", "long", expire=3600, partition=0)  # the topic keeps it for 60 s only
    cache.store("short", "short", expire=5, partition=0)
    clock.now += 6
    assert "long" in cache and "short" not in cache
    clock.now += 55
    assert "long" not in cache
    cache.poll()
    assert len(cache) == 0
    cache.wait(10)


# -- a dedup topic with fewer partitions than its input -------------------------------------
def test_an_input_partition_beyond_the_dedup_topic_is_refused_naming_both_counts(
    backend: KafkaBackend,
) -> None:
    source, topic = unique("in"), unique("dedup")
    backend.declare_topic(source, partitions=3)
    cache = CompactedTopicCache(backend, topic, partitions=1)  # too few
    with pytest.raises(DeduplicationStoreError) as caught:
        cache.on_assigned([(source, 0), (source, 2)])
    text = str(caught.value)
    assert f"dedup topic {topic} has 1 partitions, but input topic {source} has 3" in text
    assert f"--alter --topic {topic} --partitions 3" in text
    assert caught.value.partitions == {2}
    assert cache.is_ready and len(cache) == 0
    cache.on_assigned([(source, 0)])  # the partitions it has still work


def test_the_dedup_topic_is_created_with_the_input_topics_partition_count(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    prefix = unique("in")
    backend.declare_topic(f"{prefix}-a", partitions=2)
    backend.declare_topic(f"{prefix}-b", partitions=5)
    count = CompactedTopicCache.input_partitions(backend, [f"{prefix}-a"])
    assert count == 2
    count = CompactedTopicCache.input_partitions(backend, [f"{prefix}-a", f"^{prefix}-.*"])
    assert count == 5
    assert CompactedTopicCache.input_partitions(backend, [unique("none")], default=4) == 4
    topic = unique("dedup")
    cache = CompactedTopicCache(backend, topic, partitions=count)
    assert partitions_of(kafka_bootstrap, topic) == 5
    cache.on_assigned([(f"{prefix}-b", 4)])


# -- refused entries keep vetoing --------------------------------------------------------
@pytest.fixture
def refusing(backend: KafkaBackend) -> CompactedTopicCache:
    """A store whose topic refuses every record (``max.message.bytes`` below a batch)."""
    topic = unique("dedup")
    backend.create_topics({topic: 2}, config={"max.message.bytes": "10"})
    cache = CompactedTopicCache(backend, topic, partitions=2)
    cache.on_assigned([(IN, 0), (IN, 1)])
    return cache


def test_a_refused_entry_vetoes_every_commit_until_its_partition_is_revoked(
    refusing: CompactedTopicCache,
) -> None:
    taken_before = refusing.ticket()
    refusing.store("tests.A.1", "tests.A.1", partition=0)
    for _ in range(2):  # reporting it does not clear it
        with pytest.raises(DeduplicationStoreError, match="refused") as caught:
            refusing.wait(10)
        assert caught.value.partitions == {0}
        with pytest.raises(DeduplicationStoreError):
            refusing.flush(1)
    with pytest.raises(DeduplicationStoreError):
        taken_before()
    with pytest.raises(DeduplicationStoreError):
        refusing.ticket()()
    refusing.on_revoked([(IN, 1)])  # another partition goes: the veto stays
    with pytest.raises(DeduplicationStoreError):
        refusing.ticket()()
    refusing.on_revoked([(IN, 0)])
    with pytest.raises(DeduplicationStoreError):  # the revocation's own commit
        refusing.wait(10)
    refusing.on_assigned([])  # the rebalance ends: the new owner redelivers
    refusing.wait(1)
    assert refusing.ticket()() is True


def test_a_refused_entry_stops_vetoing_when_its_partition_is_lost(
    refusing: CompactedTopicCache,
) -> None:
    refusing.store("tests.A.1", "tests.A.1", partition=1)
    with pytest.raises(DeduplicationStoreError) as caught:
        refusing.wait(10)
    assert caught.value.partitions == {1}
    refusing.on_lost([(IN, 1)])  # nothing of it is committed; the new owner redelivers
    refusing.wait(1)
    assert refusing.ticket()() is True


# -- writes from worker threads ------------------------------------------------------------
def test_stores_from_many_threads_are_all_counted_and_kept(backend: KafkaBackend) -> None:
    topic = unique("dedup")
    cache = CompactedTopicCache(backend, topic, partitions=3)
    cache.on_assigned([(IN, 0), (IN, 1), (IN, 2)])

    def work(n: int) -> None:
        for name in keys(n * 1000, n * 1000 + 1000):
            cache.store(name, name, partition=n % 3)
            if n % 2:
                cache.poll()  # delivery reports served on worker threads, too

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert cache.entries_written == 8000
    covering = cache.ticket()
    cache.wait(20)
    assert covering() is True
    assert cache.entries_confirmed == 8000
    assert len(cache) == 8000
    reader = CompactedTopicCache(backend, topic, partitions=3)
    reader.on_assigned([(IN, 0), (IN, 1), (IN, 2)])
    assert len(reader) == 8000
