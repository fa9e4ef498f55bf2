"""The deduplication store contract, and the store that remembers nothing."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.backends.base import Subscription

__all__ = ["DeduplicationCache", "NullCache"]


class DeduplicationCache(ABC):
    """Remembers which ``<consumer name>.<message id>`` keys have been processed.

    The dispatcher asks ``key in cache`` before running a consumer and calls
    :meth:`store` after the consumer succeeded. Implementations raise
    :class:`service.errors.DeduplicationStoreError` when the store cannot be used; the
    dispatcher then retries the message rather than guess.

    A store that writes asynchronously (:class:`CompactedTopicCache`) follows the
    subscription (:meth:`attach`) as a listener of its assignment and as a commit gate, so
    no offset is committed before the entries of the messages below it are durable. The
    hooks have do-nothing defaults.
    """

    transactional = False
    """Whether its entries go into an exactly-once transaction (staged with the outputs), so
    that an aborted transaction leaves none behind; only such a store (or none) may serve an
    exactly-once queue."""

    @abstractmethod
    def store(
        self, key: str, value: str, expire: float | None = None, *, partition: int | None = None
    ) -> None:
        """Remember ``key`` (with ``value``) for ``expire`` seconds, or the store's default.

        ``partition`` is the input partition of the message the key belongs to; stores that
        are partitioned like their input use it.
        """

    def poll(self) -> None:  # noqa: B027 - an optional hook: nothing to serve by default
        """Serve pending write reports without waiting (called from the consuming loop)."""

    def flush(self, timeout: float) -> None:
        """Make every entry stored so far durable, waiting up to ``timeout`` seconds.

        Raises:
            DeduplicationStoreError: an entry could not be made durable.
        """
        del timeout

    def attach(self, subscription: Subscription) -> None:
        """Follow ``subscription``: listen to its assignment, gate its commits (optional)."""
        del subscription

    @property
    def is_ready(self) -> bool:
        """False while the store is restoring and cannot answer yet."""
        return True

    @abstractmethod
    def get(self, key: str, *, partition: int | None = None) -> str | None:
        """The value stored under ``key``, or ``None`` if absent or expired.

        ``partition``, when given, is the input partition of the message: a partitioned
        store looks there only.
        """

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored and not expired."""
        return isinstance(key, str) and self.get(key) is not None


class NullCache(DeduplicationCache):
    """Stores nothing: every message is new.

    The dispatcher still avoids re-running the consumers that succeeded on a message
    redelivered within the same process.
    """

    transactional = True  # it keeps nothing

    def store(
        self, key: str, value: str, expire: float | None = None, *, partition: int | None = None
    ) -> None:
        """Forget ``key`` at once."""
        del key, value, expire, partition

    def get(self, key: str, *, partition: int | None = None) -> str | None:
        """Always ``None``."""
        del key, partition
        return None
