"""The message as the dispatcher sees it, independent of the backend that delivered it.

Routing information travels in three headers, set by :class:`service.Publisher`:

* ``serializer_id``: the serializer's integer identifier, ASCII decimal;
* ``manifest``: the message type name (UTF-8);
* ``message_id``: a unique id (UTF-8), the deduplication key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from service.errors import MalformedHeaderError, MissingHeaderError

__all__ = [
    "MANIFEST_HEADER",
    "MESSAGE_ID_HEADER",
    "SERIALIZER_ID_HEADER",
    "Headers",
    "Message",
    "Routing",
    "read_routing",
]

SERIALIZER_ID_HEADER = "serializer_id"
MANIFEST_HEADER = "manifest"
MESSAGE_ID_HEADER = "message_id"
_ROUTING_HEADERS = (SERIALIZER_ID_HEADER, MANIFEST_HEADER, MESSAGE_ID_HEADER)

Headers = tuple[tuple[str, bytes | None], ...]
"""Record headers in order; a name may repeat, as Kafka allows."""


@dataclass(frozen=True, slots=True)
class Message:
    """One record delivered by a backend.

    Attributes:
        topic: the topic it was read from.
        value: the payload bytes (``None`` for a Kafka tombstone).
        headers: the record headers, in order.
        key: the record key, if any.
        partition: the partition it was read from.
        offset: its offset in that partition.
        timestamp_ms: the record timestamp in milliseconds since the epoch, if known.
        attempt: the delivery attempt in this process, 1 for the first delivery.
    """

    topic: str
    value: bytes | None
    headers: Headers = ()
    key: bytes | None = None
    partition: int = 0
    offset: int = 0
    timestamp_ms: int | None = None
    attempt: int = 1

    @property
    def location(self) -> str:
        """``topic[partition]@offset``, the address used in every error text."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or ``None`` when absent."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


class Routing(NamedTuple):
    """The routing headers of a message, decoded."""

    serializer_id: int
    manifest: str
    message_id: str


def read_routing(message: Message) -> Routing:
    """Decode the routing headers of ``message`` in one pass over its headers.

    Raises:
        MissingHeaderError: a routing header is absent or empty.
        MalformedHeaderError: a routing header repeats with different values, is not UTF-8,
            or the serializer id is not a decimal integer.
    """
    raw: dict[str, bytes | None] = {}
    for name, value in message.headers:
        if name in _ROUTING_HEADERS:
            if name in raw and raw[name] != value:
                raise MalformedHeaderError(
                    f"header {name!r} appears twice with different values", message
                )
            raw[name] = value
    texts: list[str] = []
    for name in _ROUTING_HEADERS:
        value = raw.get(name)
        if not value:
            raise MissingHeaderError(
                f"header {name!r} is missing; the producer must set "
                f"{', '.join(_ROUTING_HEADERS)} (service.Publisher does)",
                message,
            )
        try:
            texts.append(value.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise MalformedHeaderError(f"header {name!r} is not UTF-8", message) from exc
    serializer_text, manifest, message_id = texts
    if not serializer_text.isascii() or not serializer_text.isdigit():
        raise MalformedHeaderError(
            f"header {SERIALIZER_ID_HEADER!r} is {serializer_text[:40]!r}, not a decimal integer",
            message,
        )
    return Routing(int(serializer_text), manifest, message_id)
