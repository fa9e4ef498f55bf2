"""The deduplication store contract, and the store that remembers nothing."""

from __future__ import annotations

from abc import ABC, abstractmethod

__all__ = ["DeduplicationCache", "NullCache"]


class DeduplicationCache(ABC):
    """Remembers which ``<consumer name>.<message id>`` keys have been processed.

    The dispatcher asks ``key in cache`` before running a consumer and calls
    :meth:`store` after the consumer succeeded. Implementations raise
    :class:`service.errors.DeduplicationStoreError` when the store cannot be used; the
    dispatcher then retries the message rather than guess.
    """

    @abstractmethod
    def store(self, key: str, value: str, expire: float | None = None) -> None:
        """Remember ``key`` (with ``value``) for ``expire`` seconds, or the store's default."""

    @abstractmethod
    def get(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None`` if absent or expired."""

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored and not expired."""
        return isinstance(key, str) and self.get(key) is not None


class NullCache(DeduplicationCache):
    """Stores nothing: every message is new.

    The dispatcher still avoids re-running the consumers that succeeded on a message
    redelivered within the same process.
    """

    def store(self, key: str, value: str, expire: float | None = None) -> None:
        """Forget ``key`` at once."""
        del key, value, expire

    def get(self, key: str) -> str | None:
        """Always ``None``."""
        del key
        return None
