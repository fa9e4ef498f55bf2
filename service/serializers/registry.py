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

    def serialize(self, data: Any) -> tuple[bytes, Serializer]:
        """Encode ``data`` with :meth:`find_serializer_for`; returns the bytes and serializer."""
        serializer = self.find_serializer_for(data)
        return serializer.serialize(data), serializer

    def deserialize_with_serializerid(
        self, data: bytes, serializer_id: int, manifest: str | None = None
    ) -> Any:
        """Decode ``data`` with the serializer registered under ``serializer_id``."""
        return self.get_serializer_by_id(serializer_id).deserialize(data, manifest=manifest)
