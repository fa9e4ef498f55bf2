"""Deduplication stores."""

from service.dedup.base import DeduplicationCache, NullCache
from service.dedup.memory import InMemoryCache

__all__ = ["DeduplicationCache", "InMemoryCache", "NullCache"]
