"""Key decoders: how a queue's record keys reach handlers as ``record.key``.

* ``bytes`` (default): as they are;
* ``string``: UTF-8 text;
* ``json``: any JSON value;
* ``avro``: Confluent's wire format (magic byte 0, a 4-byte schema id, Avro binary), decoded
  with the writer schema from the registry into plain Python values (dicts, lists...).

A key that does not decode (including one with bytes left over after its schema, or whose
schema has an array of zero-byte items, see :mod:`service.serializers.avro_guard`) fails its
message with :class:`~service.errors.DeserializationError` (dead-lettered: retrying cannot
help).
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastavro import parse_schema, schemaless_reader

from service.errors import ConfigurationError, DeserializationError
from service.schema_registry import SchemaRegistry
from service.serializers.avro_guard import zero_width_array

__all__ = ["KeyDecoder", "key_decoder"]

KeyDecoder = Callable[[bytes], Any]

_MAGIC = 0


def key_decoder(kind: str, registry: SchemaRegistry | None = None) -> KeyDecoder | None:
    """The decoder for ``kind`` (``bytes`` gives None: keys stay bytes).

    Raises:
        ConfigurationError: an unknown kind, or ``avro`` without a schema registry.
    """
    if kind == "bytes":
        return None
    if kind == "string":
        return _string
    if kind == "json":
        return _json
    if kind == "avro":
        if registry is None:
            raise ConfigurationError("key: avro needs schema_registry.url")
        return _AvroKeys(registry)
    raise ConfigurationError(f"key must be bytes, string, json or avro; got {kind!r}")


def _string(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeserializationError(f"the record key is not UTF-8: {exc}") from exc


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DeserializationError(f"the record key is not JSON: {exc}") from exc


class _AvroKeys:
    """Confluent-framed Avro keys, writer schemas fetched by id and kept (bounded)."""

    def __init__(self, registry: SchemaRegistry, cache_size: int = 256) -> None:
        self._registry = registry
        self._schemas: OrderedDict[int, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __call__(self, raw: bytes) -> Any:
        if len(raw) < 5 or raw[0] != _MAGIC:
            raise DeserializationError("the record key is not in Confluent's Avro wire format")
        schema_id = int.from_bytes(raw[1:5], "big")
        schema = self._schema(schema_id)
        stream = io.BytesIO(raw)
        stream.seek(5)
        try:
            key = schemaless_reader(stream, schema, None)
        except (EOFError, ValueError, IndexError, UnicodeDecodeError, OverflowError) as exc:
            raise DeserializationError(
                f"the record key does not decode with schema id {schema_id}: {exc}"
            ) from exc
        if stream.tell() != len(raw):
            raise DeserializationError(
                f"the record key has {len(raw) - stream.tell()} bytes left over after decoding "
                f"with schema id {schema_id}: it is not a key of that schema"
            )
        return key

    def _schema(self, schema_id: int) -> Any:
        with self._lock:
            schema = self._schemas.get(schema_id)
        if schema is not None:
            return schema
        text = self._registry.schema_text(schema_id)
        named: dict[str, Any] = {}
        try:
            schema = parse_schema(json.loads(text), named_schemas=named)
        except (ValueError, TypeError, KeyError) as exc:
            raise DeserializationError(
                f"key schema id {schema_id} from the registry does not parse: {exc}"
            ) from exc
        bomb = zero_width_array(schema, named)
        if bomb is not None:
            raise DeserializationError(
                f"key schema id {schema_id} is refused: its array {bomb} holds items that "
                "encode to zero bytes, so a few bytes could claim billions of them"
            )
        with self._lock:
            self._schemas[schema_id] = schema
            while len(self._schemas) > self._cache_size:
                self._schemas.popitem(last=False)
        return schema
