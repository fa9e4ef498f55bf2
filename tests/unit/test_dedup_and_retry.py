from __future__ import annotations

import pytest

from service import ConfigurationError, InMemoryCache, NullCache, RetryPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_in_memory_cache_expires_keys() -> None:
    clock = FakeClock()
    cache = InMemoryCache(default_expire=10, clock=clock)
    cache.store("a", "1")
    cache.store("b", "2", expire=30)
    clock.now += 10
    assert "a" not in cache and cache.get("a") is None
    assert cache.get("b") == "2"
    clock.now += 20
    assert "b" not in cache


def test_in_memory_cache_poll_evicts_expired_keys_oldest_first() -> None:
    clock = FakeClock()
    cache = InMemoryCache(default_expire=10, clock=clock)
    for i in range(100):
        cache.store(f"k{i}", "v")
        clock.now += 0.1
    cache.poll()
    assert len(cache) == 100
    clock.now = 100.0 + 10 + 5  # the first 51 have expired
    cache.poll()
    assert len(cache) == 49 and "k51" in cache


def test_in_memory_cache_is_bounded_evicting_oldest() -> None:
    cache = InMemoryCache(max_entries=2)
    for key in "abc":
        cache.store(key, key)
    assert len(cache) == 2
    assert "a" not in cache and "b" in cache and "c" in cache
    with pytest.raises(ConfigurationError):
        InMemoryCache(max_entries=0)


def test_null_cache_remembers_nothing() -> None:
    cache = NullCache()
    cache.store("a", "a")
    assert "a" not in cache and cache.get("a") is None


def test_retry_policy_backoff_grows_caps_and_jitters() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_base=1, backoff_max=5, jitter=0)
    assert [policy.delay(a) for a in (1, 2, 3, 4, 5)] == [1, 2, 4, 5, 5]
    assert not policy.is_exhausted(3) and policy.is_exhausted(4)
    jittered = RetryPolicy(backoff_base=1, backoff_max=8, jitter=0.5)
    delays = {jittered.delay(3) for _ in range(50)}
    assert all(2 <= d <= 4 for d in delays) and len(delays) > 1
    assert not RetryPolicy(max_attempts=None).is_exhausted(10**6)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"backoff_base": 2, "backoff_max": 1}, {"jitter": 1.5}],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
