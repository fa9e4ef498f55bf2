"""InMemoryCache: a bounded, expiring deduplication store inside one process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from service.dedup.base import DeduplicationCache
from service.errors import ConfigurationError

__all__ = ["InMemoryCache"]

EVICT_BUDGET = 10_000


class InMemoryCache(DeduplicationCache):
    """Keys kept in process memory; lost on restart.

    Args:
        default_expire: seconds a key lives when :meth:`store` gives none; ``None`` = forever.
        max_entries: the oldest keys are evicted beyond this many, so memory stays bounded.
        clock: monotonic time source in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        default_expire: float | None = None,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ConfigurationError(f"max_entries must be >= 1, got {max_entries}")
        self._default_expire = default_expire
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of keys held, expired ones included until evicted or looked up."""
        return len(self._entries)

    def poll(self) -> None:
        """Evict expired keys from the oldest stored on, at most ``EVICT_BUDGET`` per call.

        Keys are kept in store order, so with one expiry for all they leave in order; a key
        that lives longer than those stored after it holds them until it expires (memory
        stays bounded by ``max_entries`` regardless).
        """
        now = self._clock()
        with self._lock:
            entries = self._entries
            for _ in range(EVICT_BUDGET):
                if not entries:
                    return
                key, (_, deadline) = next(iter(entries.items()))
                if deadline is None or deadline > now:
                    return
                del entries[key]

    def store(
        self, key: str, value: str, expire: float | None = None, *, partition: int | None = None
    ) -> None:
        """Remember ``key`` until ``expire`` seconds from now (or the default)."""
        ttl = self._default_expire if expire is None else expire
        deadline = None if ttl is None else self._clock() + ttl
        with self._lock:
            self._entries[key] = (value, deadline)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def get(self, key: str, *, partition: int | None = None) -> str | None:
        """The value under ``key``, or ``None`` when absent or expired (then dropped)."""
        del partition
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            value, deadline = entry
            if deadline is not None and self._clock() >= deadline:
                del self._entries[key]
                return None
            return value
