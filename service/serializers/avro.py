"""AvroSerializer (identifier 2): Confluent wire format with a schema registry.

Wire format of the value: magic byte ``0``, the writer schema's registry id as 4 bytes
big-endian, then the Avro binary encoding, so Confluent's deserializers, Kafka tools and
other languages read it. The ``serializer_id`` (2) and ``manifest`` (the record full name)
headers are set as for every serializer.

* Publishing: the writer schema is the local ``schemas/`` file of the message's manifest; its
  registry id is looked up, or registered when ``auto_register``, once per subject and
  record, then cached. The subject follows a strategy: ``record`` (``<record full name>``,
  the default), ``topic`` (``<topic>-value``, Confluent's default TopicNameStrategy) or
  ``topic_record`` (``<topic>-<record full name>``), chosen per message type, else per
  topic, else for the serializer (see ``docs/serializers.md``).
* Consuming: the writer schema is fetched by id (cached, bounded LRU) and resolved against
  the local reader schema of the manifest, so a v1 writer is read by a v2 reader and the
  reverse, as Avro's resolution rules allow.
* Header-less records (what Confluent's serializers write: no ``serializer_id`` or
  ``manifest`` header) are recognised by :meth:`AvroSerializer.sniff`: the magic byte and the
  schema id give the writer schema, whose full name is the manifest.
* Schemas are parsed once; a message costs one fastavro encode or decode plus the dataclass
  conversion built when the class was bound.
"""

from __future__ import annotations

import io
import json
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import fastavro

from service.consumers import manifest_of
from service.errors import (
    ConfigurationError,
    DeserializationError,
    SerializationError,
    UnknownManifestError,
)
from service.schema_registry import SchemaRegistry
from service.schemas.binding import RecordCodec, bind_record
from service.schemas.catalog import SchemaCatalog, SchemaFile, schema_from_definition
from service.schemas.misfit import locate_misfit
from service.serializers.avro_guard import zero_width_array
from service.serializers.base import Serializer

__all__ = ["SUBJECT_STRATEGIES", "AvroSerializer", "SubjectStrategy"]

SubjectStrategy = Literal["topic", "record", "topic_record"]
SUBJECT_STRATEGIES: tuple[SubjectStrategy, ...] = ("topic", "record", "topic_record")
_HEADER = struct.Struct(">bI")
_MAGIC = 0
_TOPIC_CACHE = 10_000  # topics whose pattern-matched strategy is remembered
_Plan = tuple[dict[str, Any], dict[str, Any] | None, RecordCodec]
_DECODE_ERRORS = (
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
    OverflowError,
)


class AvroSerializer(Serializer):
    """Avro with a Confluent-compatible schema registry; see the module docstring.

    Args:
        catalog: the local schemas (``schemas/``), by manifest.
        registry: the schema registry client.
        subject_strategy: ``"record"`` (subject = manifest, the default), ``"topic"``
            (subject = ``<topic>-value``) or ``"topic_record"`` (``<topic>-<manifest>``).
        topic_strategies: the strategy of the records published to a topic, by topic name;
            a name starting with ``^`` is a regular expression matched against the topic.
        type_strategies: the strategy of a message type, by manifest; it wins over the
            topic's strategy, which wins over ``subject_strategy``.
        auto_register: register a schema missing from the registry on first publish;
            otherwise publishing such a message is a ``SerializationError``.
        writer_cache_size: how many writer schemas (by id) are kept parsed.
    """

    IDENTIFIER = 2

    def __init__(
        self,
        catalog: SchemaCatalog,
        registry: SchemaRegistry,
        *,
        subject_strategy: SubjectStrategy = "record",
        topic_strategies: Mapping[str, SubjectStrategy] | None = None,
        type_strategies: Mapping[str, SubjectStrategy] | None = None,
        auto_register: bool = True,
        writer_cache_size: int = 1000,
    ) -> None:
        for where, strategy in (
            ("subject_strategy", subject_strategy),
            *((f"topic_strategies[{k!r}]", v) for k, v in (topic_strategies or {}).items()),
            *((f"type_strategies[{k!r}]", v) for k, v in (type_strategies or {}).items()),
        ):
            if strategy not in SUBJECT_STRATEGIES:
                raise ConfigurationError(
                    f"{where} must be one of {', '.join(SUBJECT_STRATEGIES)}, not {strategy!r}"
                )
        self.catalog = catalog
        self.registry = registry
        self.subject_strategy = subject_strategy
        self.auto_register = auto_register
        self._type_strategies = dict(type_strategies or {})
        self._topic_strategies: dict[str, SubjectStrategy] = {}
        self._topic_patterns: list[tuple[re.Pattern[str], SubjectStrategy]] = []
        for topic, strategy in (topic_strategies or {}).items():
            if topic.startswith("^"):
                try:
                    self._topic_patterns.append((re.compile(topic), strategy))
                except re.error as exc:
                    raise ConfigurationError(
                        f"topic_strategies: {topic!r} is not a regular expression: {exc}"
                    ) from exc
            else:
                self._topic_strategies[topic] = strategy
        self._codecs: dict[str, RecordCodec] = {}
        self._schema_ids: dict[tuple[str, str], int] = {}
        self._writers: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._plans: dict[tuple[int, str], _Plan] = {}
        self._writer_cache_size = writer_cache_size
        self._lock = threading.Lock()

    def identifier(self) -> int:
        """Always 2."""
        return self.IDENTIFIER

    def bind(self, cls: type) -> None:
        """Bind dataclass ``cls`` to the schema of its manifest, checking fields and types.

        Raises:
            ConfigurationError: no schema file has the class's manifest, or the class and
                the schema differ (the message names the class, the file and the field).
        """
        manifest = manifest_of(cls)
        schema = self.catalog.get(manifest)
        if schema is None:
            raise ConfigurationError(
                f"{cls.__qualname__}: no schema in {self.catalog.directory} defines the record "
                f"{manifest!r} (a class's manifest is its __manifest__, else its name)"
            )
        self._codecs[manifest] = bind_record(cls, schema.parsed, schema.path)

    def _codec(self, manifest: str) -> RecordCodec:
        codec = self._codecs.get(manifest)
        if codec is None:
            raise UnknownManifestError(
                f"AvroSerializer has no class bound to manifest {manifest!r}; bind one in "
                "serializer_bindings"
            )
        return codec

    def record_of(self, data: Any) -> dict[str, Any]:
        """The dict fastavro writes for ``data`` (what other Avro clients expect)."""
        record: dict[str, Any] = self._codec(manifest_of(type(data))).to_avro(data)
        return record

    # -- publishing ---------------------------------------------------------------------
    def serialize(self, data: Any) -> bytes:
        """Encode ``data`` without a topic: only for types whose strategy is ``record``.

        Raises:
            SerializationError: as :meth:`serialize_to`, and when the type's strategy needs
                the topic (use :meth:`serialize_to`, as :class:`service.Publisher` does).
        """
        return self.serialize_to("", data)

    def serialize_to(self, topic: str, data: Any) -> bytes:
        """Encode ``data`` for publishing to ``topic``, under the subject its strategy names.

        Raises:
            SerializationError: the class is not bound, a field does not fit the schema
                (the field is named), the strategy needs a topic and ``topic`` is empty, or
                the schema is not registered and ``auto_register`` is off; nothing is sent.
            SchemaRegistryError: the registry refused or could not be reached.
        """
        manifest = manifest_of(type(data))
        codec = self._codec(manifest)
        schema = self.catalog[manifest]
        record = codec.to_avro(data)
        schema_id = self._schema_id(schema, topic)
        buffer = io.BytesIO()
        buffer.write(_HEADER.pack(_MAGIC, schema_id))
        try:
            fastavro.schemaless_writer(buffer, schema.parsed, record)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise SerializationError(
                f"{type(data).__qualname__} does not fit {schema.path.name}: "
                f"{_explain(schema, record, exc)}"
            ) from exc
        return buffer.getvalue()

    def strategy_for(self, manifest: str, topic: str = "") -> SubjectStrategy:
        """The subject strategy of ``manifest`` published to ``topic``.

        The type's own strategy, else the topic's (exact name, then the first matching
        ``^`` pattern), else the serializer's ``subject_strategy``.
        """
        strategy = self._type_strategies.get(manifest)
        if strategy is None and topic:
            strategy = self._topic_strategies.get(topic)
            if strategy is None:
                strategy = next(
                    (s for pattern, s in self._topic_patterns if pattern.match(topic)), None
                )
                if strategy is not None and len(self._topic_strategies) < _TOPIC_CACHE:
                    self._topic_strategies[topic] = strategy
        return strategy or self.subject_strategy

    def subject_for(self, manifest: str, topic: str = "") -> str:
        """The registry subject of ``manifest`` published to ``topic``.

        Raises:
            SerializationError: its strategy needs the topic and ``topic`` is empty.
        """
        strategy = self.strategy_for(manifest, topic)
        if strategy == "record":
            return manifest
        if not topic:
            raise SerializationError(
                f"{manifest}: the {strategy} subject strategy needs the topic: publish with "
                "service.Publisher (or serialize_to), which passes it"
            )
        return f"{topic}-value" if strategy == "topic" else f"{topic}-{manifest}"

    def _schema_id(self, schema: SchemaFile, topic: str) -> int:
        subject = self.subject_for(schema.manifest, topic)
        # keyed by record too: under the topic strategy one subject serves several records
        schema_id = self._schema_ids.get((subject, schema.manifest))
        if schema_id is None:
            if self.auto_register:
                schema_id = self.registry.register(subject, schema.text)
            else:
                found = self.registry.lookup(subject, schema.text)
                if found is None:
                    raise SerializationError(
                        f"{schema.path.name} is not registered under subject {subject!r} and "
                        "auto_register is off: run `schemas register` first"
                    )
                schema_id = found.schema_id
            self._schema_ids[subject, schema.manifest] = schema_id
        return schema_id

    # -- consuming ----------------------------------------------------------------------
    def sniff(self, data: bytes) -> str | None:
        """The manifest of a header-less Confluent-framed value: its writer schema's full name.

        ``None`` unless ``data`` starts with the magic byte ``0`` and holds a 4-byte schema
        id (one comparison: cheap for JSON and other payloads). Otherwise the writer schema
        is fetched by id (cached, as for :meth:`deserialize`) and its record full name
        returned; :meth:`deserialize` with that manifest then decodes ``data``.

        Raises:
            UnknownSchemaError: the registry has no schema with the payload's id.
            DeserializationError: the writer schema is not a record schema.
            SchemaRegistryUnavailableError: the registry cannot be reached (may pass).
        """
        if len(data) < _HEADER.size or data[0] != _MAGIC:
            return None
        name: str = self._writer(_HEADER.unpack_from(data)[1])["name"]
        return name

    def deserialize(self, data: bytes, manifest: str | None = None) -> Any:
        """Decode Confluent-framed Avro ``data`` into the class bound to ``manifest``.

        Raises:
            UnknownManifestError: no class is bound to ``manifest``.
            DeserializationError: wrong magic byte, truncated, bytes that do not match
                the writer schema, or a writer schema with an array of zero-byte items.
            UnknownSchemaError: the registry has no schema with the payload's id.
            SchemaRegistryUnavailableError: the registry cannot be reached (may pass).
        """
        if len(data) < _HEADER.size or data[0] != _MAGIC:
            self._codec(manifest or "")  # an unknown manifest is reported first
            raise DeserializationError(
                f"not Confluent-framed Avro: expected magic byte 0 and a 4-byte schema id, got "
                f"{data[:5]!r} ({len(data)} bytes)"
            )
        schema_id = _HEADER.unpack_from(data)[1]
        plan = self._plans.get((schema_id, manifest or ""))
        if plan is None:
            plan = self._plan(schema_id, manifest or "")
        writer, reader_parsed, codec = plan
        reader = self.catalog[codec.manifest]
        stream = io.BytesIO(data)
        stream.seek(_HEADER.size)
        try:
            record = fastavro.schemaless_reader(stream, writer, reader_parsed)
        except _DECODE_ERRORS as exc:
            raise DeserializationError(
                f"payload does not decode with writer schema id {schema_id} as "
                f"{reader.manifest}: {type(exc).__name__}: {exc}"
            ) from exc
        except fastavro.read.SchemaResolutionError as exc:
            raise DeserializationError(
                f"writer schema id {schema_id} cannot be read as {reader.manifest} "
                f"({reader.path.name}): {exc}"
            ) from exc
        if stream.tell() != len(data):
            raise DeserializationError(
                f"{len(data) - stream.tell()} bytes left over after decoding with writer schema "
                f"id {schema_id}: the payload does not match that schema"
            )
        try:
            return codec.from_avro(record)
        except Exception as exc:  # policy: whatever the class's own checks raise, it refused
            raise DeserializationError(
                f"decoded {reader.manifest} does not fit {codec.cls.__qualname__}: {exc}"
            ) from exc

    def _plan(self, schema_id: int, manifest: str) -> _Plan:
        """How to decode ``schema_id`` as ``manifest``.

        With the writer schema alone when it is the local schema (no resolution work), else
        resolved against the local one.

        Raises:
            DeserializationError: the writer schema has an array of items that take no
                bytes (see :mod:`service.serializers.avro_guard`): a payload could claim
                2**40 of them and stall the decoder, so no payload of it is decoded.
        """
        codec = self._codec(manifest)
        writer = self._writer(schema_id)
        bomb = zero_width_array(writer)
        if bomb is not None:
            raise DeserializationError(
                f"writer schema id {schema_id} is refused: its array {bomb} holds items that "
                "encode to zero bytes, so a few bytes could claim billions of them"
            )
        local = self.catalog[manifest].parsed
        plan = (writer, None if _same_schema(writer, local) else local, codec)
        if len(self._plans) >= self._writer_cache_size:
            self._plans.clear()
        self._plans[(schema_id, manifest)] = plan
        return plan

    def _writer(self, schema_id: int) -> dict[str, Any]:
        with self._lock:
            writer = self._writers.get(schema_id)
            if writer is not None:
                self._writers.move_to_end(schema_id)
                return writer
        text = self.registry.schema_text(schema_id)
        try:
            definition = json.loads(text)
            writer = schema_from_definition(definition, Path(f"<registry id {schema_id}>")).parsed
        except (ValueError, ConfigurationError) as exc:
            raise DeserializationError(
                f"writer schema id {schema_id} from the registry is not a record schema: {exc}"
            ) from exc
        with self._lock:
            self._writers[schema_id] = writer
            while len(self._writers) > self._writer_cache_size:
                self._writers.popitem(last=False)
        return writer


def _same_schema(writer: Any, reader: Any) -> bool:
    """Whether two parsed schemas are the same but for documentation."""
    if isinstance(writer, dict) and isinstance(reader, dict):
        keys = (writer.keys() | reader.keys()) - {"doc", "__named_schemas"}
        return all(_same_schema(writer.get(k), reader.get(k)) for k in keys)
    if isinstance(writer, list) and isinstance(reader, list):
        return len(writer) == len(reader) and all(map(_same_schema, writer, reader))
    return bool(writer == reader)


def _explain(schema: SchemaFile, record: dict[str, Any], exc: Exception) -> str:
    return locate_misfit(record, schema.parsed) or f"{type(exc).__name__}: {exc}"
