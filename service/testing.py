"""Helpers for unit-testing consumers on the in-memory backend."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from service.backends.memory import InMemoryBackend
from service.consumers import Consumer
from service.dedup.base import DeduplicationCache
from service.dispatcher import MessageDispatcher
from service.serializers.registry import SerializerRegistry

__all__ = ["link_synchronously"]


def link_synchronously(
    queue_name: str,
    consumers: Sequence[Consumer],
    serializer_registry: SerializerRegistry,
    backend: InMemoryBackend,
    cache: DeduplicationCache | None = None,
) -> MessageDispatcher:
    """Dispatch every message published to ``queue_name``'s topics as soon as it is published.

    For unit tests: after ``Publisher.publish`` returns, the consumers have run, retries
    included (the backend's virtual clock skips the backoff), unless a consumer keeps
    failing with an error that may pass, which retries for ever as on Kafka. A message
    published while the consumers run (by a consumer, on any thread) is processed by the
    loop that is running, after its publisher returns: no recursion, one loop at a time.
    Returns the dispatcher, e.g. to inspect or stop it.
    """
    dispatcher = MessageDispatcher(serializer_registry, cache=cache, backend=backend)
    for consumer in consumers:
        dispatcher.attach_consumer(consumer)
    lock = threading.Lock()
    state = {"running": False, "again": False}

    def drain(topic: str) -> None:
        if topic not in backend.topics_of(queue_name):
            return
        with lock:
            if state["running"]:
                state["again"] = True  # the running loop may have polled its last already
                return
            state["running"] = True
        try:
            again = True
            while again:
                dispatcher.consume_loop(queue_name)
                with lock:
                    again, state["again"] = state["again"], False
        finally:
            with lock:
                state["running"] = state["again"] = False

    backend.on_publish(drain)
    return dispatcher
