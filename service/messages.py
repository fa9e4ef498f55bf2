"""The message as the dispatcher sees it, independent of the backend that delivered it.

Routing information travels in three headers, set by :class:`service.Publisher`:

* ``serializer_id``: the serializer's integer identifier, ASCII decimal;
* ``manifest``: the message type name (UTF-8);
* ``message_id``: a unique id (UTF-8), the deduplication key.
"""

from __future__ import annotations

from typing import Any, NamedTuple, NoReturn

from service.errors import MalformedHeaderError, MissingHeaderError

__all__ = [
    "MANIFEST_HEADER",
    "MESSAGE_ID_HEADER",
    "SERIALIZER_ID_HEADER",
    "Headers",
    "Message",
    "Record",
    "Routing",
    "read_routing",
]

SERIALIZER_ID_HEADER = "serializer_id"
MANIFEST_HEADER = "manifest"
MESSAGE_ID_HEADER = "message_id"
_ROUTING_HEADERS = (SERIALIZER_ID_HEADER, MANIFEST_HEADER, MESSAGE_ID_HEADER)

Headers = tuple[tuple[str, bytes | None], ...]
"""Record headers in order; a name may repeat, as Kafka allows."""


class Message(NamedTuple):
    """One record delivered by a backend; immutable.

    A named tuple rather than a frozen dataclass: it is built once per record on the hot
    path, and a tuple is built five times faster.

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


class Record(NamedTuple):
    """What a handler may know about the record behind the message it handles; immutable.

    Handlers receive it as ``record=`` (``Consumer.process``), or as a second parameter
    annotated ``Record`` (``@consumer`` methods).

    Attributes:
        topic: the topic it was read from.
        partition: the partition it was read from.
        offset: its offset in that partition.
        key: the record key: bytes, or decoded by the queue's key serializer.
        headers: the record headers, in order.
        timestamp_ms: the record timestamp in milliseconds since the epoch, if known.
        message_id: the message's id (the deduplication key; pass it to other systems as
            an idempotency key).
        attempt: the delivery attempt, 1 for the first delivery.
    """

    topic: str
    partition: int
    offset: int
    key: Any
    headers: Headers
    timestamp_ms: int | None
    message_id: str
    attempt: int

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or ``None`` when absent."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


Routing = tuple[int, str, str]
"""The routing headers of a message, decoded: serializer id, manifest, message id."""


_SERIALIZER_IDS: dict[bytes, int] = {}
_MANIFESTS: dict[bytes, str] = {}
_CACHE_LIMIT = 4096  # distinct header values remembered decoded; beyond, decode each time
_MAX_ID_DIGITS = 20  # int() refuses strings over 4300 digits; no real id is that long


def read_routing(message: Message) -> Routing:
    """Decode the routing headers of ``message`` in one pass over its headers.

    Raises:
        MissingHeaderError: a routing header is absent or empty.
        MalformedHeaderError: a routing header repeats with different values, is not UTF-8,
            or the serializer id is not a decimal integer of at most 20 digits.
    """
    serializer_raw = manifest_raw = message_id_raw = None
    for name, value in message.headers:
        if name == SERIALIZER_ID_HEADER:
            if serializer_raw is not None and serializer_raw != value:
                _duplicated(name, message)
            serializer_raw = value
        elif name == MANIFEST_HEADER:
            if manifest_raw is not None and manifest_raw != value:
                _duplicated(name, message)
            manifest_raw = value
        elif name == MESSAGE_ID_HEADER:
            if message_id_raw is not None and message_id_raw != value:
                _duplicated(name, message)
            message_id_raw = value
    if not serializer_raw or not manifest_raw or not message_id_raw:
        missing = next(
            n
            for n, v in zip(
                _ROUTING_HEADERS, (serializer_raw, manifest_raw, message_id_raw), strict=True
            )
            if not v
        )
        raise MissingHeaderError(
            f"header {missing!r} is missing; the producer must set "
            f"{', '.join(_ROUTING_HEADERS)} (service.Publisher does)",
            message,
        )
    serializer_id = _SERIALIZER_IDS.get(serializer_raw)
    if serializer_id is None:
        text = _text(SERIALIZER_ID_HEADER, serializer_raw, message)
        if not text.isascii() or not text.isdigit() or len(text) > _MAX_ID_DIGITS:
            raise MalformedHeaderError(
                f"header {SERIALIZER_ID_HEADER!r} is {text[:40]!r}, not a decimal integer "
                f"of at most {_MAX_ID_DIGITS} digits",
                message,
            )
        serializer_id = int(text)
        if len(_SERIALIZER_IDS) < _CACHE_LIMIT:
            _SERIALIZER_IDS[serializer_raw] = serializer_id
    manifest = _MANIFESTS.get(manifest_raw)
    if manifest is None:
        manifest = _text(MANIFEST_HEADER, manifest_raw, message)
        if len(_MANIFESTS) < _CACHE_LIMIT:
            _MANIFESTS[manifest_raw] = manifest
    return serializer_id, manifest, _text(MESSAGE_ID_HEADER, message_id_raw, message)


def _text(name: str, value: bytes, message: Message) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedHeaderError(f"header {name!r} is not UTF-8", message) from exc


def _duplicated(name: str, message: Message) -> NoReturn:
    raise MalformedHeaderError(f"header {name!r} appears twice with different values", message)
