"""JSON serializer (identifier 1): dicts, and typed messages decoded field by field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.consumers import manifest_of
from service.errors import ConfigurationError, SerializationError, UnknownManifestError
from service.serializers.base import Serializer
from service.serializers.typed import (
    JsonCodec,
    decode_json_object,
    encode_json,
    is_json_bindable,
    json_codec,
)

__all__ = ["DICT_MANIFEST", "JsonSerializer"]

DICT_MANIFEST = "dict"


class JsonSerializer(Serializer):
    """Encodes dicts, dataclasses and pydantic models as UTF-8 JSON objects.

    A class bound to this serializer (the registry's ``serializer_bindings``, or
    :meth:`bind`) is rebuilt from its manifest with every field type checked and converted
    (:mod:`service.serializers.typed`: nested dataclasses, ``UUID``, ``Decimal``,
    ``datetime``, ``Enum``, lists, optional fields with defaults; pydantic models by
    pydantic). A payload that does not fit is a
    :class:`~service.errors.DeserializationError` naming the field, e.g.
    ``$.amount.currency: expected str, got int``. A plain ``dict`` travels with manifest
    ``"dict"`` and comes back as a dict. Any other manifest is unknown.

    Header-less JSON: a queue that reads records without routing headers as one configured
    type calls :meth:`deserialize` with that type's manifest (:func:`manifest_of`); the type
    must be bound here first.
    """

    IDENTIFIER = 1

    def __init__(self) -> None:
        self._codecs: dict[str, JsonCodec[Any]] = {}

    def identifier(self) -> int:
        """Always 1."""
        return self.IDENTIFIER

    def bind(self, cls: type) -> None:
        """Rebuild instances of ``cls`` from its manifest; binding a class twice is harmless.

        Raises:
            ConfigurationError: ``cls`` is not a dataclass or pydantic model, a field type
                cannot be decoded from JSON, or another bound class has the same manifest.
        """
        if cls is dict or cls is object:
            return
        if not is_json_bindable(cls):
            raise ConfigurationError(
                "JsonSerializer can only bind dataclasses, pydantic models, msgspec Structs "
                f"or dict, not {cls.__qualname__}"
            )
        manifest = manifest_of(cls)
        other = self._codecs.get(manifest)
        if other is not None and other.cls is not cls:
            raise ConfigurationError(
                f"{cls.__qualname__} and {other.cls.__qualname__} share the manifest {manifest!r}"
            )
        self._codecs[manifest] = json_codec(cls)

    def manifest(self, data: Any) -> str:
        """``"dict"`` for a dict, else the manifest of the object's class."""
        return DICT_MANIFEST if isinstance(data, dict) else manifest_of(type(data))

    def serialize(self, data: Any) -> bytes:
        """Encode a dict, dataclass or pydantic model as JSON.

        ``UUID``, ``datetime`` and ``Decimal`` values are written as text, enums by value.

        Raises:
            SerializationError: ``data`` is none of those, or holds a value JSON cannot
                represent.
        """
        if isinstance(data, dict) or is_json_bindable(type(data)):
            return encode_json(data)
        raise SerializationError(
            "JsonSerializer encodes dicts, dataclasses and pydantic models, not "
            f"{type(data).__qualname__}"
        )

    def decoder(self, manifest: str) -> Callable[[bytes], Any]:
        """The decoder of the class bound to ``manifest`` (a dict's for ``"dict"``).

        Raises:
            UnknownManifestError: no class is bound to ``manifest``.
        """
        if manifest == DICT_MANIFEST:
            return decode_json_object
        codec = self._codecs.get(manifest)
        if codec is None:
            return super().decoder(manifest)  # raises UnknownManifestError when used
        return codec.decode

    def deserialize(self, data: bytes, manifest: str | None = None) -> Any:
        """Decode JSON bytes into the class bound to ``manifest``, or a dict for ``"dict"``.

        Raises:
            UnknownManifestError: no class is bound to ``manifest``.
            DeserializationError: the bytes are not a JSON object, or do not fit the class
                (the text names the field by its JSON path).
        """
        if manifest is None or manifest == DICT_MANIFEST:
            return decode_json_object(data)
        codec = self._codecs.get(manifest)
        if codec is None:
            raise UnknownManifestError(
                f"JsonSerializer has no class bound to manifest {manifest!r}; bind one "
                "in serializer_bindings"
            )
        return codec.decode(data)
