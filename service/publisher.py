"""Publisher: serialize an object and publish it with its routing headers."""

from __future__ import annotations

import uuid
from typing import Any

from service.backends.base import MessagingBackend
from service.messages import (
    MANIFEST_HEADER,
    MESSAGE_ID_HEADER,
    SERIALIZER_ID_HEADER,
    Headers,
)
from service.serializers.registry import SerializerRegistry

__all__ = ["Publisher"]

_ROUTING_NAMES = frozenset((SERIALIZER_ID_HEADER, MANIFEST_HEADER, MESSAGE_ID_HEADER))


class Publisher:
    """Publishes message objects to topics.

    Args:
        serializer_registry: chooses the serializer by the object's type.
        backend: where the records go.
    """

    def __init__(self, serializer_registry: SerializerRegistry, backend: MessagingBackend) -> None:
        self._registry = serializer_registry
        self._backend = backend

    def publish(
        self,
        topic: str,
        data: Any,
        key: str | bytes | None = None,
        message_id: str | None = None,
        headers: Headers | None = None,
    ) -> str:
        """Serialize ``data`` and publish it to ``topic``.

        The record carries the ``serializer_id``, ``manifest`` and ``message_id`` headers
        after any extra ``headers`` given. ``message_id`` is a random UUID when absent;
        publish the same id twice to let deduplication drop the second copy.

        Returns:
            The message id.

        Raises:
            SerializationError: ``data`` cannot be serialized.
            ProduceError: the backend did not accept the record.
        """
        serializer = self._registry.find_serializer_for(data)
        payload = serializer.serialize_to(topic, data)
        message_id = message_id or uuid.uuid4().hex
        routing: Headers = (
            (SERIALIZER_ID_HEADER, str(serializer.identifier()).encode()),
            (MANIFEST_HEADER, serializer.manifest(data).encode()),
            (MESSAGE_ID_HEADER, message_id.encode()),
        )
        extra = tuple(
            (name, value) for name, value in (headers or ()) if name not in _ROUTING_NAMES
        )
        encoded_key = key.encode() if isinstance(key, str) else key
        self._backend.publish(topic, payload, key=encoded_key, headers=extra + routing)
        return message_id
