"""Bad input, property-based (issue 9): nothing crashes, nothing is lost, nothing stays pending.

Any list of records mixing good messages (published with :class:`service.Publisher`) and bad
ones is consumed by one ``consume_loop`` on the in-memory backend. Then:

* ``consume_loop`` returned (it never raises on bad input);
* every bad record is in ``backend.dead_letters(queue)``, once, with the reason its kind
  calls for (``ErrorClass: text``, the class one of ``service.errors``);
* every good message was processed exactly once, and nothing stays pending;
* every error handed to ``on_exception`` is a ``service.errors.ServiceError``, one per bad
  record.

The consumer accepts every manifest, so an unknown manifest is decoded (and dead-lettered)
rather than skipped undecoded.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.payment_service import messages as pm
from service import (
    AvroSerializer,
    Consumer,
    InMemoryBackend,
    JsonSerializer,
    MessageDispatcher,
    Publisher,
    SchemaCatalog,
    SchemaRegistry,
    SerializerRegistry,
    ServiceError,
    UnknownSchemaError,
)
from service import errors as service_errors
from tests.payments import DoPayment, json_registry

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "bad-input"
ROUTING = ("serializer_id", "manifest", "message_id")
JSON_MANIFESTS = {"DoPayment", "OrderResponse", "payments.ExpressPayment", "dict"}
MB = 1 << 20

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class Bad:
    """A record that must be dead-lettered with ``error`` (a ``service.errors`` class name)."""

    kind: str
    value: bytes | None
    headers: Headers
    error: str


@dataclass(frozen=True)
class Good:
    """A message published with the Publisher, with extra (harmless) headers."""

    extra: Headers


Record = Bad | Good


class Recorder(Consumer):
    """Accepts every manifest and records what it processed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []

    def accepts(self, manifest: str | None) -> bool:
        return True

    def process(self, message: Any, **kwargs: Any) -> None:
        self.seen.append((kwargs["message_id"], message))


# -- strategies ----------------------------------------------------------------------------

ROUTED: Headers = (("serializer_id", b"1"), ("manifest", b"DoPayment"), ("message_id", b"m"))
FITTING = b'{"order_id":"o","amount":1}'


def with_header(name: str, value: bytes | None, headers: Headers = ROUTED) -> Headers:
    return tuple((n, value if n == name else v) for n, v in headers)


def not_utf8() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=1, max_size=30).filter(lambda b: not _decodes(b))


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def random_payload(draw: st.DrawFn) -> Bad:
    """Random bytes as a DoPayment: they never form a JSON object with exactly its fields."""
    value = draw(st.binary(max_size=300))
    return Bad("random bytes", value, ROUTED, "DeserializationError")


@st.composite
def huge_or_empty(draw: st.DrawFn) -> Bad:
    size = draw(st.sampled_from([0, 1, 4096, 65_536, MB]) | st.integers(0, MB))
    shape = draw(st.sampled_from(["random", "fill", "nested", "padded-json"]))
    if shape == "random":
        value = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    elif shape == "fill":
        value = draw(st.sampled_from([b"\x00", b"{", b"[", b" ", b"a", b"\xff", b"9"])) * size
    elif shape == "nested":  # deep enough to exhaust the JSON decoder's recursion
        value = b"[" * size + b"]" * size
        if size and draw(st.booleans()):
            value = b'{"a":' * size + b"1" + b"}" * size
    else:  # an object whose amount is a huge string (fields a type lacks are ignored)
        value = json.dumps({"order_id": "o", "amount": "x" * size}).encode()
    return Bad(f"huge/empty {shape} {size}", value, ROUTED, "DeserializationError")


def tombstone() -> st.SearchStrategy[Bad]:
    return st.just(Bad("tombstone", None, ROUTED, "MessageError"))


@st.composite
def missing_header(draw: st.DrawFn) -> Bad:
    # without message_id alone a record is fine: its id is <topic>/<partition>/<offset>
    gone = draw(st.sets(st.sampled_from(ROUTING), min_size=1).filter(lambda g: g != {"message_id"}))
    how = draw(st.sampled_from(["absent", "empty", "null"]))
    if how == "absent":
        headers = tuple((n, v) for n, v in ROUTED if n not in gone)
    else:
        headers = ROUTED
        for name in gone:
            headers = with_header(name, b"" if how == "empty" else None, headers)
    return Bad(f"missing {sorted(gone)} ({how})", FITTING, headers, "MissingHeaderError")


@st.composite
def conflicting_header(draw: st.DrawFn) -> Bad:
    name = draw(st.sampled_from(ROUTING))
    other = draw(st.binary(min_size=1, max_size=20).filter(lambda b: b != dict(ROUTED)[name]))
    twice = (*ROUTED, (name, other))
    if draw(st.booleans()):
        twice = ((name, other), *ROUTED)
    return Bad(f"{name} twice", FITTING, twice, "MalformedHeaderError")


@st.composite
def non_utf8_header(draw: st.DrawFn) -> Bad:
    name = draw(st.sampled_from(ROUTING))
    return Bad(
        f"{name} not UTF-8", FITTING, with_header(name, draw(not_utf8())), "MalformedHeaderError"
    )


@st.composite
def binary_headers(draw: st.DrawFn) -> Bad:
    """All three routing headers random bytes; the error depends on what they happen to be.

    The expectation follows the documented order: every header must be UTF-8 and the
    serializer id a decimal integer (malformed), then the id must be known, then the manifest.
    The value is bytes no serializer decodes, so even ``1``/``dict`` headers stay bad.
    """
    values = [draw(st.binary(min_size=1, max_size=24)) for _ in ROUTING]
    sid, manifest, _ = values
    text = sid.decode("utf-8", "replace")
    if not all(map(_decodes, values)) or not (text.isascii() and text.isdigit()) or len(text) > 20:
        error = "MalformedHeaderError"
    elif int(text) != 1:
        error = "UnknownSerializerError"
    elif manifest.decode() not in JSON_MANIFESTS:
        error = "UnknownManifestError"
    else:
        error = "DeserializationError"
    headers = tuple(zip(ROUTING, values, strict=True))
    return Bad("random binary headers", b"\xff\x00", headers, error)


@st.composite
def unknown_serializer(draw: st.DrawFn) -> Bad:
    sid = draw(st.integers(0, 10**20 - 1).filter(lambda n: n != 1))
    text = str(sid).zfill(draw(st.integers(0, 20)))
    return Bad(
        f"serializer {text}",
        FITTING,
        with_header("serializer_id", text.encode()),
        "UnknownSerializerError",
    )


@st.composite
def malformed_serializer(draw: st.DrawFn) -> Bad:
    text = draw(
        st.sampled_from(
            ["-1", "+1", "1.0", " 1", "1 ", "0x1", "\u0661", "1e0", "9" * 21, "9" * 5000]
        )
        | st.text(min_size=1, max_size=12).filter(lambda t: not (t.isascii() and t.isdigit()))
    )
    return Bad(
        f"serializer {text[:20]!r}",
        FITTING,
        with_header("serializer_id", text.encode()),
        "MalformedHeaderError",
    )


@st.composite
def unknown_manifest(draw: st.DrawFn) -> Bad:
    manifest = draw(st.text(min_size=1, max_size=40).filter(lambda m: m not in JSON_MANIFESTS))
    return Bad(
        f"manifest {manifest!r}",
        FITTING,
        with_header("manifest", manifest.encode()),
        "UnknownManifestError",
    )


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def json_misfit(draw: st.DrawFn) -> Bad:
    """Valid JSON that is not a DoPayment: not an object, a field missing or mistyped."""
    if draw(st.booleans()):
        payload: Any = draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
    else:
        fields = draw(st.dictionaries(st.sampled_from(["order_id", "amount"]), JSON_SCALARS))
        extra = draw(
            st.dictionaries(
                st.text(max_size=10).filter(lambda k: k not in ("order_id", "amount")),
                JSON_VALUES,
                max_size=3,
            )
        )
        amount = fields.get("amount")
        if isinstance(fields.get("order_id"), str) and type(amount) is int:
            fields["amount"] = str(amount)  # it would fit: fields it lacks are ignored
        payload = fields | extra
    value = json.dumps(payload).encode()
    return Bad(f"misfit {value[:40]!r}", value, ROUTED, "DeserializationError")


BAD = st.one_of(
    random_payload(),
    huge_or_empty(),
    tombstone(),
    missing_header(),
    conflicting_header(),
    non_utf8_header(),
    binary_headers(),
    unknown_serializer(),
    malformed_serializer(),
    unknown_manifest(),
    json_misfit(),
)

EXTRA_HEADERS = st.lists(
    st.tuples(
        st.text(max_size=10).filter(lambda n: n not in ROUTING),
        st.none() | st.binary(max_size=20),
    ),
    max_size=3,
).map(tuple)

GOOD = EXTRA_HEADERS.map(Good)
RECORDS = st.lists(st.one_of(GOOD, BAD), min_size=1, max_size=25)


# -- the properties ------------------------------------------------------------------------


def run(
    records: list[Record],
    serializers: SerializerRegistry,
    good_message: Callable[[int], object],
    partitions: int,
) -> None:
    backend = InMemoryBackend()
    backend.declare_topic(QUEUE, partitions)
    publisher = Publisher(serializers, backend)
    expected_good: list[tuple[str, object]] = []
    expected_bad: dict[bytes, Bad] = {}
    for index, record in enumerate(records):
        key = f"k{index}".encode()
        if isinstance(record, Good):
            message = good_message(index)
            message_id = f"good-{index}"
            publisher.publish(QUEUE, message, key=key, message_id=message_id, headers=record.extra)
            expected_good.append((message_id, message))
        else:
            backend.publish_raw(QUEUE, record.value, headers=record.headers, key=key)
            expected_bad[key] = record

    recorder = Recorder()
    dispatcher = MessageDispatcher(serializers, backend=backend)
    dispatcher.attach_consumer(recorder)
    errors: list[Exception] = []
    dispatcher.consume_loop(QUEUE, on_exception=errors.append)  # must not raise

    assert Counter(map(repr, recorder.seen)) == Counter(map(repr, expected_good))
    assert len(recorder.seen) == len(expected_good)  # each exactly once
    assert backend.pending(QUEUE) == []
    letters = backend.dead_letters(QUEUE)
    assert len(letters) == len(expected_bad)
    assert sorted(letter.message.key or b"" for letter in letters) == sorted(expected_bad)
    for letter in letters:
        bad = expected_bad[letter.message.key or b""]
        error_class, _, text = letter.reason.partition(": ")
        assert error_class == bad.error, (bad.kind, letter.reason[:200])
        assert isinstance(getattr(service_errors, error_class, None), type)
        assert text
        assert letter.message.value == bad.value
    assert all(isinstance(error, ServiceError) for error in errors), errors
    assert len(errors) == len(expected_bad)
    dead_topic = backend.records(f"{QUEUE}.dlq")
    assert len(dead_topic) == len(expected_bad)


@SETTINGS
@given(records=RECORDS, partitions=st.integers(1, 3))
def test_bad_json_input_is_dead_lettered_and_good_messages_are_processed_once(
    records: list[Record], partitions: int
) -> None:
    run(records, json_registry(), lambda i: DoPayment(f"o{i}", i), partitions)


# -- the same over Avro, with the registry in memory -----------------------------------------


class InMemorySchemaRegistry(SchemaRegistry):
    """Registers and serves schema texts by id without a server."""

    def __init__(self) -> None:  # no HTTP client
        self.url = "memory://"
        self._texts: dict[int, str] = {}
        self._subjects: dict[str, int] = {}

    def register(self, subject: str, schema_text: str) -> int:
        if subject not in self._subjects:
            self._subjects[subject] = len(self._subjects) + 1
            self._texts[self._subjects[subject]] = schema_text
        return self._subjects[subject]

    def schema_text(self, schema_id: int) -> str:
        try:
            return self._texts[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"the schema registry has no schema id {schema_id}") from None

    def close(self) -> None:
        pass


SCHEMAS = InMemorySchemaRegistry()  # shared: the bad records name its ids


def avro_registry() -> SerializerRegistry:
    avro = AvroSerializer(SchemaCatalog(ROOT / "schemas"), SCHEMAS)
    return SerializerRegistry(
        {
            "serializers": {"avro": avro, "json": JsonSerializer},
            "serializer_bindings": {**dict.fromkeys(pm.MESSAGE_TYPES, "avro"), dict: "json"},
        }
    )


SAMPLES = pm.sample_messages()
AVRO_MANIFESTS = [type(m).__manifest__ for m in SAMPLES]  # type: ignore[attr-defined]
_ENCODER = avro_registry()
ENCODED = [_ENCODER.serialize(m)[0] for m in SAMPLES]  # registers ids 1..4


def avro_headers(manifest: str) -> Headers:
    return (("serializer_id", b"2"), ("manifest", manifest.encode()), ("message_id", b"m"))


@st.composite
def bad_avro(draw: st.DrawFn) -> Bad:
    index = draw(st.integers(0, len(SAMPLES) - 1))
    valid, manifest = ENCODED[index], AVRO_MANIFESTS[index]
    kind = draw(st.sampled_from(["truncated", "magic", "unknown id", "random", "extra"]))
    error = "DeserializationError"
    if kind == "truncated":
        value = valid[: draw(st.integers(0, len(valid) - 1))]
    elif kind == "magic":
        value = bytes([draw(st.integers(1, 255))]) + valid[1:]
    elif kind == "unknown id":
        value = b"\x00" + draw(st.integers(5, 2**32 - 1)).to_bytes(4, "big") + valid[5:]
        error = "UnknownSchemaError"
    elif kind == "random":
        value = draw(st.binary(max_size=300))
        if (
            len(value) >= 5
            and value[0] == 0
            and int.from_bytes(value[1:5], "big") not in (1, 2, 3, 4)
        ):
            error = "UnknownSchemaError"
    else:  # bytes left over after a valid record
        value = valid + draw(st.binary(min_size=1, max_size=20))
    return Bad(f"avro {kind}", value, avro_headers(manifest), error)


@SETTINGS
@given(
    records=st.lists(st.one_of(GOOD, bad_avro()), min_size=1, max_size=20),
    partitions=st.integers(1, 3),
)
def test_bad_avro_input_is_dead_lettered_and_good_messages_are_processed_once(
    records: list[Record], partitions: int
) -> None:
    run(records, avro_registry(), lambda i: SAMPLES[i % len(SAMPLES)], partitions)
