"""SerializerRegistry: which serializer writes a type, and which reads an identifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from service.errors import ConfigurationError, SerializationError, UnknownSerializerError
from service.serializers.base import Serializer

__all__ = ["SerializerConfig", "SerializerRegistry"]


class SerializerConfig(TypedDict, total=False):
    """Melange's registry configuration shape."""

    serializers: Mapping[str, type[Serializer] | Serializer]
    serializer_bindings: Mapping[type, str]
    default: str


class SerializerRegistry:
    """Holds the serializers by name and by identifier, and the type bindings.

    Args:
        config: ``serializers`` (name -> Serializer class or instance), ``serializer_bindings``
            (Python type -> serializer name; the most specific class in an object's MRO
            wins) and optionally ``default`` (the name used for unbound types).

    Raises:
        ConfigurationError: two serializers share an identifier, or a binding or the default
            names a serializer that is not configured.
    """

    def __init__(self, config: SerializerConfig) -> None:
        self._by_name: dict[str, Serializer] = {}
        self._by_id: dict[int, Serializer] = {}
        for name, entry in config.get("serializers", {}).items():
            serializer = entry() if isinstance(entry, type) else entry
            other = self._by_id.get(serializer.identifier())
            if other is not None:
                raise ConfigurationError(
                    f"serializers {name!r} and {type(other).__qualname__} share identifier "
                    f"{serializer.identifier()}"
                )
            self._by_name[name] = serializer
            self._by_id[serializer.identifier()] = serializer
        self._bindings: dict[type, Serializer] = {}
        for cls, name in config.get("serializer_bindings", {}).items():
            serializer = self._named(name, f"serializer_bindings[{cls.__qualname__}]")
            serializer.bind(cls)
            self._bindings[cls] = serializer
        default = config.get("default")
        self._default = None if default is None else self._named(default, "default")
        self._resolved: dict[type, Serializer] = {}
        self._sniffers = tuple(
            s for s in self._by_id.values() if type(s).sniff is not Serializer.sniff
        )

    def named(self, name: str, where: str) -> Serializer:
        """The serializer configured as ``name``.

        Raises:
            ConfigurationError: there is none; the text starts with ``where``.
        """
        return self._named(name, where)

    def _named(self, name: str, where: str) -> Serializer:
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigurationError(
                f"{where} names serializer {name!r}, which is not among the configured "
                f"serializers {sorted(self._by_name)}"
            ) from None

    def get_serializer_by_id(self, serializer_id: int) -> Serializer:
        """The serializer with identifier ``serializer_id``.

        Raises:
            UnknownSerializerError: none is registered under it.
        """
        try:
            return self._by_id[serializer_id]
        except KeyError:
            raise UnknownSerializerError(
                f"no serializer has identifier {serializer_id}; known: {sorted(self._by_id)}"
            ) from None

    def find_serializer_for(self, data: Any) -> Serializer:
        """The serializer bound to the most specific class of ``data``, else the default.

        Raises:
            SerializationError: no binding matches and there is no default.
        """
        cls = type(data)
        serializer = self._resolved.get(cls)
        if serializer is None:
            serializer = next(
                (self._bindings[k] for k in cls.__mro__ if k in self._bindings), self._default
            )
            if serializer is None:
                raise SerializationError(
                    f"no serializer is bound to {cls.__qualname__} and no default is set"
                )
            self._resolved[cls] = serializer
        return serializer

    def serialize(self, data: Any, topic: str = "") -> tuple[bytes, Serializer]:
        """Encode ``data`` with :meth:`find_serializer_for`; returns the bytes and serializer.

        Args:
            data: the message object.
            topic: the topic it will be published to; needed by Avro types whose subject
                strategy is ``topic`` or ``topic_record``
                (:meth:`Serializer.serialize_to`).
        """
        serializer = self.find_serializer_for(data)
        payload = serializer.serialize_to(topic, data) if topic else serializer.serialize(data)
        return payload, serializer

    def sniff(self, value: bytes) -> tuple[int, str] | None:
        """The serializer id and manifest of a record value that carries no routing headers.

        The dispatch side calls it for a record without a ``serializer_id`` header, before
        any per-queue ``headerless`` configuration. Each serializer that recognises a framing
        is asked in registration order (today only Avro: the Confluent magic byte ``0`` and a
        4-byte schema id, the manifest being the writer schema's full name). The answer then
        routes as headers would: ``accepts(manifest)`` chooses the consumers, and
        ``deserialize_with_serializerid(value, serializer_id, manifest)`` decodes it.

        Returns:
            ``(serializer id, manifest)``, or ``None`` when no serializer recognises the
            value (for instance JSON, whose first byte is never ``0``).

        Raises:
            UnknownSchemaError: Confluent-framed, but the registry has no schema with its id
                (a :class:`~service.errors.MessageError`: dead-letter the record).
            DeserializationError: Confluent-framed, but the writer schema is not a record.
            SchemaRegistryUnavailableError: the registry cannot answer now (may pass:
                redeliver after a backoff, never dead-letter).
        """
        for serializer in self._sniffers:
            manifest = serializer.sniff(value)
            if manifest is not None:
                return serializer.identifier(), manifest
        return None

    def deserialize_with_serializerid(
        self, data: bytes, serializer_id: int, manifest: str | None = None
    ) -> Any:
        """Decode ``data`` with the serializer registered under ``serializer_id``."""
        return self.get_serializer_by_id(serializer_id).deserialize(data, manifest=manifest)
