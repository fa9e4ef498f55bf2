"""The serializer contract: objects to bytes and back, named by an integer identifier."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from service.consumers import manifest_of

__all__ = ["Serializer"]


class Serializer(ABC):
    """Turns message objects into bytes and back.

    The :meth:`identifier` travels with every message (header ``serializer_id``) and selects
    the serializer on the consuming side, so it must be unique and must never change.
    """

    @abstractmethod
    def identifier(self) -> int:
        """The unique, stable integer identifying this serializer on the wire."""

    def manifest(self, data: Any) -> str:
        """The manifest (type name) written with ``data``; :func:`manifest_of` its class."""
        return manifest_of(type(data))

    @abstractmethod
    def serialize(self, data: Any) -> bytes:
        """Encode ``data``.

        Raises:
            SerializationError: ``data`` cannot be encoded by this serializer.
        """

    def serialize_to(self, topic: str, data: Any) -> bytes:
        """Encode ``data`` for publishing to ``topic``; :meth:`serialize` unless overridden.

        Serializers whose encoding depends on the topic (Avro's topic-record subject
        strategy) override it.
        """
        return self.serialize(data)

    @abstractmethod
    def deserialize(self, data: bytes, manifest: str | None = None) -> Any:
        """Decode ``data`` written with type ``manifest``.

        Raises:
            UnknownManifestError: the serializer knows no type named ``manifest``.
            DeserializationError: the bytes do not decode.
        """

    def decoder(self, manifest: str) -> Callable[[bytes], Any]:
        """``deserialize`` for one ``manifest``, looked up once (the dispatcher caches it).

        The default binds :meth:`deserialize`; a serializer may return its per-type decoder
        directly, raising what :meth:`deserialize` raises.

        Raises:
            UnknownManifestError: the serializer knows no type named ``manifest``.
        """
        return functools.partial(self.deserialize, manifest=manifest)

    def sniff(self, data: bytes) -> str | None:
        """The manifest of ``data`` when its framing shows this serializer wrote it, else ``None``.

        Called for records that carry no routing headers (see
        :meth:`SerializerRegistry.sniff <service.serializers.registry.SerializerRegistry.sniff>`).
        Only self-describing formats recognise anything (Avro's Confluent framing); the
        default recognises nothing. It must be cheap when it answers ``None``.

        Raises:
            SerializationError: ``data`` is framed for this serializer but unusable (for
                Avro: an unknown schema id); the message is dead-lettered with it.
            SchemaRegistryError: a registry needed to tell cannot answer (may pass).
        """
        del data
        return None

    def bind(self, cls: type) -> None:
        """Learn that instances of ``cls`` are serialized by this serializer.

        The registry calls it for every class bound to this serializer in its
        ``serializer_bindings``; serializers that rebuild typed objects from a manifest
        (such as :class:`JsonSerializer`) record the class. Others ignore it.
        """
        del cls
