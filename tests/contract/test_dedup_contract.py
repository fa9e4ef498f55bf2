"""The DeduplicationCache contract, run on NullCache, InMemoryCache and CompactedTopicCache."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass

import pytest

from service import DeduplicationCache, InMemoryCache, NullCache
from service.backends.kafka.dedup import CompactedTopicCache
from tests.kafka_helpers import kafka_backend, unique


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Store:
    cache: DeduplicationCache
    clock: Clock
    remembers: bool


@pytest.fixture(params=["null", "memory", "compacted"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    clock = Clock()
    if request.param == "null":
        yield Store(NullCache(), clock, remembers=False)
    elif request.param == "memory":
        yield Store(InMemoryCache(default_expire=60, clock=clock), clock, remembers=True)
    else:
        backend = kafka_backend(request.getfixturevalue("kafka_bootstrap"))
        cache = CompactedTopicCache(backend, unique("dedup"), window=60, clock=clock)
        cache.on_assigned([("input", 0)])  # as its subscription would: it owns partition 0
        yield Store(cache, clock, remembers=True)
        cache.flush(10)
        backend.close()


def test_a_stored_key_is_remembered_and_made_durable(store: Store) -> None:
    store.cache.store("tests.A.m1", "tests.A.m1", partition=0)
    store.cache.flush(10)  # raises if an entry could not be made durable
    assert ("tests.A.m1" in store.cache) is store.remembers
    assert (store.cache.get("tests.A.m1") is not None) is store.remembers
    assert "tests.A.other" not in store.cache
    assert store.cache.get("tests.A.other") is None


def test_keys_expire_after_the_default_or_given_time(store: Store) -> None:
    store.cache.store("short", "short", expire=5, partition=0)
    store.cache.store("default", "default", partition=0)
    store.cache.flush(10)
    store.clock.now += 6
    assert "short" not in store.cache
    assert ("default" in store.cache) is store.remembers
    store.clock.now += 60
    assert "default" not in store.cache


def test_flush_with_nothing_pending_returns(store: Store) -> None:
    store.cache.flush(0.1)
    store.cache.poll()


def test_is_ready_when_not_restoring(store: Store) -> None:
    assert store.cache.is_ready


def test_poll_evicts_expired_keys_from_memory(store: Store) -> None:
    for i in range(50):
        store.cache.store(f"tests.A.{i}", f"tests.A.{i}", partition=0)
    store.cache.flush(10)
    store.cache.poll()
    held = len(store.cache) if isinstance(store.cache, Sized) else 0
    assert held == (50 if store.remembers else 0)
    store.clock.now += 62  # the window, and the store's eviction slack (a second)
    store.cache.poll()
    assert (len(store.cache) if isinstance(store.cache, Sized) else 0) == 0
