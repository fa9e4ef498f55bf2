"""JSON serializer (identifier 1) for dicts and bound dataclasses."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from service.consumers import manifest_of
from service.errors import (
    ConfigurationError,
    DeserializationError,
    SerializationError,
    UnknownManifestError,
)
from service.serializers.base import Serializer

__all__ = ["JsonSerializer"]

DICT_MANIFEST = "dict"


class JsonSerializer(Serializer):
    """Encodes dicts and dataclasses as UTF-8 JSON objects.

    A dataclass instance is written as its fields (``dataclasses.asdict``) with its class's
    manifest; it is rebuilt from that manifest if the class is bound to this serializer in the
    registry's ``serializer_bindings``. A plain ``dict`` travels with manifest ``"dict"`` and
    comes back as a dict. Any other manifest is unknown.
    """

    IDENTIFIER = 1

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}

    def identifier(self) -> int:
        """Always 1."""
        return self.IDENTIFIER

    def bind(self, cls: type) -> None:
        """Rebuild instances of dataclass ``cls`` from its manifest.

        Raises:
            ConfigurationError: ``cls`` is not a dataclass, or another bound class has the
                same manifest.
        """
        if cls is dict or cls is object:
            return
        if not dataclasses.is_dataclass(cls):
            raise ConfigurationError(
                f"JsonSerializer can only bind dataclasses or dict, not {cls.__qualname__}"
            )
        manifest = manifest_of(cls)
        other = self._classes.get(manifest)
        if other is not None and other is not cls:
            raise ConfigurationError(
                f"{cls.__qualname__} and {other.__qualname__} share the manifest {manifest!r}"
            )
        self._classes[manifest] = cls

    def manifest(self, data: Any) -> str:
        """``"dict"`` for a dict, else the manifest of the dataclass."""
        return DICT_MANIFEST if isinstance(data, dict) else manifest_of(type(data))

    def serialize(self, data: Any) -> bytes:
        """Encode a dict or dataclass instance as JSON.

        Raises:
            SerializationError: ``data`` is neither, or holds values JSON cannot represent.
        """
        if dataclasses.is_dataclass(data) and not isinstance(data, type):
            payload = dataclasses.asdict(data)
        elif isinstance(data, dict):
            payload = data
        else:
            raise SerializationError(
                f"JsonSerializer encodes dicts and dataclasses, not {type(data).__qualname__}"
            )
        try:
            return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"cannot encode {type(data).__qualname__} as JSON: {exc}"
            ) from exc

    def deserialize(self, data: bytes, manifest: str | None = None) -> Any:
        """Decode JSON bytes into the class bound to ``manifest``, or a dict for ``"dict"``.

        Raises:
            UnknownManifestError: no class is bound to ``manifest``.
            DeserializationError: the bytes are not a JSON object, or do not fit the class.
        """
        cls = None
        if manifest not in (None, DICT_MANIFEST):
            cls = self._classes.get(manifest)
            if cls is None:
                raise UnknownManifestError(
                    f"JsonSerializer has no class bound to manifest {manifest!r}; bind one "
                    "in serializer_bindings"
                )
        try:
            payload = json.loads(data.decode("utf-8"))  # RFC 8259: JSON on the wire is UTF-8
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # too deeply nested
            raise DeserializationError(f"payload is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise DeserializationError(
                f"payload is a JSON {type(payload).__name__}, expected an object"
            )
        if cls is None:
            return payload
        try:
            return cls(**payload)
        except TypeError as exc:
            raise DeserializationError(f"payload does not fit {cls.__qualname__}: {exc}") from exc
