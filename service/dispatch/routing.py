"""Routing: how a queue finds a record's serializer, manifest and message id.

Records written by :class:`service.Publisher` carry three routing headers
(``serializer_id``, ``manifest``, ``message_id``) and are routed by them. Records from other
producers are routed, in this order:

1. a ``serializer_id`` header: its ``manifest`` header is required; a missing
   ``message_id`` header is replaced by the queue's message-id rule;
2. Spring's ``__TypeId__`` header, mapped to a manifest by the queue's ``type_ids`` table
   (decoded with the queue's ``headerless`` serializer, JSON by default); with a table, a
   type id it does not name is dead-lettered, never decoded as another type;
3. the queue's ``headerless`` setting: one serializer and one type for every such record;
4. with none of these, a value in Confluent's wire format (magic byte 0 and a schema id)
   is decoded by the Avro serializer, the writer schema's full name being the manifest.

Anything else is dead-lettered with :class:`~service.errors.MissingHeaderError`, naming
what the queue would need.

The message id (the deduplication key), by the queue's ``message_id`` rule:

* ``header`` (default): the ``message_id`` header; without one, ``<topic>/<partition>/
  <offset>``, which suppresses redeliveries of the same record but not a producer's
  re-sends (a re-sent record has another offset);
* ``key``: the record key (UTF-8, else hex): re-sends and every later record with the same
  key count as duplicates within the dedup window - right for "one message per key";
* ``field:<name>``: a field of the decoded payload (an attribute, or a key of a dict):
  re-sends of the same business message are duplicates, whatever their offsets;
* ``offset``: always ``<topic>/<partition>/<offset>``: only redeliveries of the same record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.errors import ConfigurationError, MissingHeaderError
from service.messages import (
    MANIFEST_HEADER,
    MESSAGE_ID_HEADER,
    SERIALIZER_ID_HEADER,
    Message,
    read_routing,
)

__all__ = ["SPRING_TYPE_HEADER", "RoutingRules", "offset_id"]

SPRING_TYPE_HEADER = "__TypeId__"
JSON_SERIALIZER_ID = 1

Sniff = Callable[[bytes], "tuple[int, str] | None"]


def offset_id(message: Message) -> str:
    """``<topic>/<partition>/<offset>``: the id of a record that carries none."""
    return f"{message.topic}/{message.partition}/{message.offset}"


@dataclass(frozen=True, slots=True)
class RoutingRules:
    """A queue's routing rules (see the module docstring).

    Attributes:
        headerless: (serializer id, manifest) of records without routing headers.
        message_id: ``header``, ``key``, ``offset`` or ``field:<name>``.
        type_ids: Spring ``__TypeId__`` values -> manifests.
        sniff: recognises a header-less value by its bytes (Confluent Avro): returns
            (serializer id, manifest) or None.
    """

    headerless: tuple[int, str] | None = None
    message_id: str = "header"
    type_ids: Mapping[str, str] = field(default_factory=dict)
    sniff: Sniff | None = None

    def __post_init__(self) -> None:
        """Validate the message-id rule."""
        rule = self.message_id
        if rule not in ("header", "key", "offset") and not (
            rule.startswith("field:") and len(rule) > len("field:")
        ):
            raise ConfigurationError(
                f"message_id must be header, key, offset or field:<name>; got {rule!r}"
            )

    @property
    def id_from_payload(self) -> str | None:
        """The payload field the message id comes from, if the rule says so."""
        return self.message_id[6:] if self.message_id.startswith("field:") else None

    def route(self, message: Message) -> tuple[int, str, str | None]:
        """Serializer id, manifest and message id (None: take it from the payload field).

        Raises:
            MissingHeaderError: the record cannot be routed (see the module docstring).
            MalformedHeaderError: a routing header is unreadable.
        """
        if self.message_id == "header":
            try:
                return read_routing(message)  # the fast path: a record of ours
            except MissingHeaderError:
                pass
        names = {name for name, _ in message.headers}
        if SERIALIZER_ID_HEADER in names:
            serializer_id, manifest = self._from_headers(message, names)
        else:
            serializer_id, manifest = self._without_headers(message)
        return serializer_id, manifest, self._message_id(message)

    def message_id_of(self, message: Message) -> str:
        """The message id as far as the record alone tells (``field:`` rules: the offset id)."""
        return self._message_id(message) or offset_id(message)

    def payload_id(self, data: Any, message: Message) -> str:
        """The message id taken from the decoded payload's field (``field:<name>``)."""
        name = self.message_id[6:]
        value = data.get(name) if isinstance(data, dict) else getattr(data, name, None)
        if value is None or value == "":
            return offset_id(message)
        return str(value)

    def _from_headers(self, message: Message, names: set[str]) -> tuple[int, str]:
        if MANIFEST_HEADER not in names:
            raise MissingHeaderError(
                f"header {MANIFEST_HEADER!r} is missing (a {SERIALIZER_ID_HEADER!r} header is "
                "present, so the record must name its type too)",
                message,
            )
        headers = (
            message.headers
            if MESSAGE_ID_HEADER in names
            else (*message.headers, (MESSAGE_ID_HEADER, b"-"))
        )
        serializer_id, manifest, _ = read_routing(message._replace(headers=headers))
        return serializer_id, manifest

    def _without_headers(self, message: Message) -> tuple[int, str]:
        type_id = message.header(SPRING_TYPE_HEADER)
        if type_id is not None and self.type_ids:
            manifest = self.type_ids.get(type_id.decode("utf-8", "replace"))
            if manifest is not None:
                serializer = self.headerless[0] if self.headerless else JSON_SERIALIZER_ID
                return serializer, manifest
            raise MissingHeaderError(  # a type the table does not know: never guess another
                f"its {SPRING_TYPE_HEADER} {type_id!r} is not in the queue's type_ids table",
                message,
            )
        if self.headerless is not None:
            return self.headerless
        if self.sniff is not None and message.value:
            found = self.sniff(message.value)
            if found is not None:
                return found
        hint = (
            f"its {SPRING_TYPE_HEADER} {type_id!r} is not in the queue's type_ids table"
            if type_id is not None
            else "the value is not in Confluent's Avro wire format either"
        )
        raise MissingHeaderError(
            f"the record has no routing headers ({SERIALIZER_ID_HEADER}, {MANIFEST_HEADER}) "
            f"and {hint}; give the queue a 'headerless: {{serializer, type}}' setting to "
            "consume records of other producers",
            message,
        )

    def _message_id(self, message: Message) -> str | None:
        rule = self.message_id
        if rule == "header":
            raw = message.header(MESSAGE_ID_HEADER)
            if raw:
                return raw.decode("utf-8", "replace")
            return offset_id(message)
        if rule == "key":
            key = message.key
            if not key:
                return offset_id(message)
            try:
                return key.decode("utf-8")
            except UnicodeDecodeError:
                return key.hex()
        if rule == "offset":
            return offset_id(message)
        return None  # field:<name>, after decoding
