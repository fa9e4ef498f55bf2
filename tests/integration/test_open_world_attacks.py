"""Attacks on the open-world work (issue 13), on the real broker and registry.

A reviewer's tests: records written by producers that know nothing of this project and do
not mean well (plain confluent-kafka, Confluent's ``AvroSerializer`` under each subject
strategy, schemas the service never saw, bytes that only look like JSON or Avro, keys that
do not decode), and handlers that misbehave (``async def`` that raises, hangs, is cancelled,
returns odd awaitables). The service runs in-process (:class:`service.runner.ServiceRunner`
built from a config document, as ``kafka-dispatch run`` builds it). Every bad record must
end as a dead letter naming its reason, every good one must reach its handler, the group
must commit past all of them, and no queue loop may end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from service import Consumer, Record, SingleDispatchConsumer, consumer
from service.config import parse_config
from service.errors import ConfigurationError
from service.runner import ServiceRunner
from service.schema_registry import SchemaRegistry
from tests.integration.test_open_world_serializers import (
    FIXTURES,
    ROOT,
    ours,
    produce_like_a_stranger,
    samples,
    schema_text,
)
from tests.kafka_helpers import committed, kafka_backend, read_topic, unique

pytestmark = pytest.mark.integration
HERE = "tests.integration.test_open_world_attacks"

# -- what the handlers saw, by topic (the service runs in this process) -------------------
SEEN: dict[str, list[tuple[str, Any, Record]]] = defaultdict(list)
_SEEN_LOCK = threading.Lock()


def seen(topic: str, consumer_name: str | None = None) -> list[tuple[str, Any, Record]]:
    with _SEEN_LOCK:
        return [s for s in SEEN[topic] if consumer_name in (None, s[0])]


def note(name: str, message: Any, record: Record) -> None:
    with _SEEN_LOCK:
        SEEN[record.topic].append((name, message, record))


# -- message types bound to JSON ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Amount:
    units: Decimal
    currency: str


@dataclasses.dataclass(frozen=True)
class Charge:
    charge_id: UUID
    amount: Amount
    at: datetime.datetime
    tags: list[str]
    ref: str
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Refund:
    refund_id: str
    units: int


def charge(ref: str, **overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "charge_id": str(uuid4()),
        "amount": {"units": "10.25", "currency": "EUR"},
        "at": "2026-12-01T10:00:00Z",
        "tags": ["a"],
        "ref": ref,
    }
    document.update(overrides)
    return document


# -- handlers -------------------------------------------------------------------------------
class Recorder(Consumer):
    """Records every message with its record."""

    def process(self, message: Any, **kwargs: Any) -> None:
        note("sync", message, kwargs["record"])


class AsyncRecorder(Consumer):
    """``async def``: awaits, then records."""

    async def process(self, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0.005)
        note("async", message, kwargs["record"])


class AsyncMisbehaving(Consumer):
    """``async def`` whose behaviour the record's ``ref`` chooses.

    ``raise``: raises ValueError; ``cancel``: the coroutine is cancelled; ``hang``: never
    returns (until the test releases it); ``foreign``: awaits a future of another event loop;
    anything else: records.
    """

    RELEASE = threading.Event()

    async def process(self, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        ref = message.ref
        if ref.startswith("raise"):
            raise ValueError(f"handler refused {ref}")
        if ref.startswith("cancel"):
            raise asyncio.CancelledError(f"cancelled {ref}")
        if ref.startswith("hang"):
            while not self.RELEASE.is_set():
                await asyncio.sleep(0.05)
        if ref.startswith("foreign"):
            other = asyncio.new_event_loop()
            try:
                await other.create_future()
            finally:
                other.close()
        note("async", message, kwargs["record"])


class _Awaitable:
    """Not a coroutine: an object with ``__await__`` that records when awaited."""

    def __init__(self, message: Any, record: Record) -> None:
        self.message, self.record = message, record

    def __await__(self) -> Any:
        yield from asyncio.sleep(0).__await__()
        note("awaitable", self.message, self.record)


class ReturnsAwaitable(Consumer):
    """A plain ``def`` that returns a non-coroutine awaitable: it must be awaited."""

    def process(self, message: Any, **kwargs: Any) -> Any:
        return _Awaitable(message, kwargs["record"])


class AsyncGeneratorHandler(Consumer):
    """``async def`` with a ``yield``: calling it runs nothing. It must not be acknowledged
    as handled without its body running."""

    async def process(self, message: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        note("asyncgen", message, kwargs["record"])
        yield None


class Dispatching(SingleDispatchConsumer):
    """``@consumer`` handlers: an async one with the record, a sync one without."""

    @consumer
    async def on_charge(self, message: Charge, record: Record) -> None:
        await asyncio.sleep(0.001)
        note("on_charge", message, record)

    @consumer
    def on_refund(self, message: Refund) -> None:
        raise AssertionError("no refund is sent")


# -- running the service --------------------------------------------------------------------
def document(
    bootstrap: str,
    queue: str,
    consumers: list[str],
    *,
    registry_url: str | None = None,
    messages: dict[str, str] | None = None,
    partitions: int = 1,
    **queue_extra: Any,
) -> dict[str, Any]:
    queue_config = {
        "consumers": [f"{HERE}:{c}" for c in consumers],
        "retry": {"max_attempts": 2, "backoff_base": "0.05s", "backoff_max": "0.2s"},
    } | queue_extra
    doc: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": partitions,
            "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        },
        "queues": {queue: queue_config},
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "15s"},
    }
    if registry_url:
        doc["schema_registry"] = {"url": registry_url, "schemas": str(ROOT / "schemas")}
    if messages:
        doc["messages"] = messages
    return doc


@contextmanager
def running(doc: dict[str, Any]) -> Iterator[ServiceRunner]:
    runner = ServiceRunner(parse_config(doc, env={}))
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()
        stopped = runner.wait(30)
        runner.close()
        assert stopped, "the service did not stop within 30 s"


def loop_errors(runner: ServiceRunner) -> list[BaseException]:
    return [loop.error for loop in runner.loops if loop.error is not None]


def wait_until(check: Callable[[], bool], timeout: float, runner: ServiceRunner) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert not loop_errors(runner), f"a queue loop ended: {loop_errors(runner)!r}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def all_committed(
    bootstrap: str, queue: str, count: int, partitions: int = 1
) -> Callable[[], bool]:
    return lambda: sum(max(o, 0) for o in committed(bootstrap, queue, queue, partitions)) >= count


def new_queue(bootstrap: str, partitions: int = 1) -> str:
    queue = unique("attack")
    backend = kafka_backend(bootstrap, partitions=partitions)
    backend.declare_queue(queue)
    backend.close()
    return queue


def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]],
    **config: Any,
) -> None:
    """Write ``(key, value, headers)`` records in order with a plain producer."""
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    for key, value, headers in records:
        producer.produce(topic, value, key, headers=headers)
    assert producer.flush(20) == 0


def dead_letter_list(
    bootstrap: str, queue: str, count: int, timeout: float = 15
) -> list[dict[str, str]]:
    """The dead letters of ``queue``: their headers as text."""
    letters = read_topic(bootstrap, f"{queue}.dlq", count, timeout=timeout)
    return [
        {k: v.decode("utf-8", "replace") for k, v in letter.headers if v is not None}
        for letter in letters
    ]


def dead_letters(
    bootstrap: str, queue: str, count: int, timeout: float = 15
) -> dict[int, dict[str, str]]:
    """The dead letters of a one-partition ``queue`` by original offset."""
    return {
        int(h["dlq.original_offset"]): h for h in dead_letter_list(bootstrap, queue, count, timeout)
    }


@pytest.fixture
def registry(schema_registry_url: str) -> Iterator[SchemaRegistry]:
    with SchemaRegistry(schema_registry_url) as client:
        yield client


@pytest.fixture
def confluent(schema_registry_url: str) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        yield client


AVRO_MESSAGES = dict.fromkeys(
    [f"examples.payment_service.messages:{name}" for name in ("DoPayment", "OrderResponse")],
    "avro",
)
JSON_MESSAGES = {f"{HERE}:Charge": "json", f"{HERE}:Refund": "json"}


# == Avro from strangers ==================================================================
@pytest.mark.parametrize("strategy", ["topic", "record", "topic_record"])
def test_stranger_avro_under_each_strategy_with_evolved_unknown_and_foreign_schemas(
    strategy: str,
    kafka_bootstrap: str,
    schema_registry_url: str,
    registry: SchemaRegistry,
    confluent: SchemaRegistryClient,
) -> None:
    """v1 and v2 writers decode to the v1 classes; an unknown schema id, a writer with the
    same record name but incompatible field types, a JSON Schema id behind the magic byte,
    and a truncated body are dead-lettered each with its reason."""
    queue = new_queue(kafka_bootstrap)
    avro = ours(registry).get_serializer_by_id(2)
    do_payment = samples()[0]
    record = avro.record_of(do_payment)
    v1 = json.loads((ROOT / "schemas" / "DoPayment.avsc").read_text())
    v2 = json.loads(schema_text(FIXTURES / "DoPayment.v2.avsc"))
    v2_record = record | {
        f["name"]: f["default"] for f in v2["fields"] if "default" in f and f["name"] not in record
    }
    produce_like_a_stranger(
        kafka_bootstrap,
        confluent,
        queue,
        strategy,
        [(json.dumps(v1), record), (json.dumps(v2), v2_record)],
    )  # offsets 0, 1
    # the same record name with amount's currency an int: another writer, cannot resolve
    foreign = json.loads(json.dumps(v1))
    money = next(f for f in foreign["fields"] if f["name"] == "amount")
    money["type"]["fields"] = [
        {"name": "amount", "type": "string"},
        {"name": "currency", "type": "int"},
    ]
    foreign_id = confluent.register_schema(
        unique("foreign-value"), Schema(json.dumps(foreign), "AVRO")
    )
    json_schema_id = confluent.register_schema(
        unique("jsonschema-value"),
        Schema(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}), "JSON"),
    )
    first = read_topic(kafka_bootstrap, queue, 1)[0].value
    assert first is not None
    produce(
        kafka_bootstrap,
        queue,
        [
            (b"unknown", struct.pack(">bI", 0, 2**31 - 11) + b"\x02x", None),  # 2
            (b"foreign", struct.pack(">bI", 0, foreign_id) + b"\x0610.5\x06", None),  # 3
            (b"jsonschema", struct.pack(">bI", 0, json_schema_id) + b'{"a":"b"}', None),  # 4
            (b"truncated", first[:12], None),  # 5
            (b"again", first, None),  # 6: the loop still works
        ],
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        registry_url=schema_registry_url,
        messages=AVRO_MESSAGES,
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 7), 60, runner)
    got = seen(queue)
    assert [r.offset for _, _, r in got] == [0, 1, 6]
    assert [m for _, m, _ in got] == [do_payment] * 3
    letters = dead_letters(kafka_bootstrap, queue, 4)
    assert sorted(letters) == [2, 3, 4, 5]
    assert letters[2]["dlq.error_class"] == "UnknownSchemaError"
    assert str(2**31 - 11) in letters[2]["dlq.error_text"]
    assert letters[3]["dlq.error_class"] == "DeserializationError"
    assert str(foreign_id) in letters[3]["dlq.error_text"]
    assert letters[4]["dlq.error_class"] == "DeserializationError"
    assert "not a record schema" in letters[4]["dlq.error_text"]
    assert letters[5]["dlq.error_class"] == "DeserializationError"


def test_avro_magic_byte_on_a_headerless_json_topic_is_dead_lettered_not_sniffed(
    kafka_bootstrap: str, schema_registry_url: str
) -> None:
    """With ``headerless: json``, a Confluent-framed value is JSON that does not parse."""
    queue = new_queue(kafka_bootstrap)
    produce(
        kafka_bootstrap,
        queue,
        [
            (b"k0", json.dumps(charge("ok-0")).encode(), None),
            (b"k1", struct.pack(">bI", 0, 1) + b"\x02x", None),
            (b"k2", json.dumps(charge("ok-2")).encode(), None),
        ],
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        registry_url=schema_registry_url,
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 3), 60, runner)
    assert [m.ref for _, m, _ in seen(queue)] == ["ok-0", "ok-2"]
    [letter] = dead_letters(kafka_bootstrap, queue, 1).values()
    assert letter["dlq.error_class"] == "DeserializationError"
    assert "not valid JSON" in letter["dlq.error_text"]


def test_a_registry_that_cannot_be_reached_holds_stranger_avro_and_avro_keys_back(
    kafka_bootstrap: str,
    schema_registry_url: str,
    registry: SchemaRegistry,
    confluent: SchemaRegistryClient,
) -> None:
    """Sniffing needs the registry: while it is down, header-less Avro records (one with an
    Avro key, one with a plain key) must be neither dead-lettered nor committed; with the
    registry back (a restart), the one with the Avro key is consumed and the other is
    dead-lettered for its key."""
    queue = new_queue(kafka_bootstrap)
    avro = ours(registry).get_serializer_by_id(2)
    sample = samples()[0]
    produce_like_a_stranger(
        kafka_bootstrap,
        confluent,
        queue,
        "topic",
        [
            (
                json.dumps(json.loads((ROOT / "schemas" / "DoPayment.avsc").read_text())),
                avro.record_of(sample),
            )
        ],
    )
    key_schema = confluent.register_schema(
        unique("down-key"), Schema(json.dumps({"type": "string"}), "AVRO")
    )
    first = read_topic(kafka_bootstrap, queue, 1)[0].value
    produce(kafka_bootstrap, queue, [(struct.pack(">bI", 0, key_schema) + b"\x02k", first, None)])
    down = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        registry_url="http://127.0.0.1:9/apis/ccompat/v7",
        messages=AVRO_MESSAGES,
        key="avro",
    )
    with running(down) as runner:
        time.sleep(8)
        assert not loop_errors(runner)
        assert max(committed(kafka_bootstrap, queue, queue)) <= 0  # nothing done
    assert read_topic(kafka_bootstrap, f"{queue}.dlq", 1, timeout=2) == []
    assert seen(queue) == []
    up = json.loads(json.dumps(down))
    up["schema_registry"]["url"] = schema_registry_url
    with running(up) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 2), 60, runner)
    got = [(r.offset, r.key, m == sample) for _, m, r in seen(queue)]
    assert got == [(1, "k", True)], got
    # offset 0 has the stranger's plain key b"k0": with the registry back, its key is judged
    [letter] = dead_letters(kafka_bootstrap, queue, 1).values()
    assert "key is not in Confluent's Avro wire format" in letter["dlq.error_text"]


def test_headerless_avro_of_another_record_is_dead_lettered(
    kafka_bootstrap: str,
    schema_registry_url: str,
    registry: SchemaRegistry,
    confluent: SchemaRegistryClient,
) -> None:
    """``headerless: {serializer: avro, type: DoPayment}``, and a stranger writes an
    OrderResponse: the writer's record name is not the configured type's."""
    queue = new_queue(kafka_bootstrap)
    avro = ours(registry).get_serializer_by_id(2)
    do_payment, order = samples()
    catalog_dir = ROOT / "schemas"
    produce_like_a_stranger(
        kafka_bootstrap,
        confluent,
        queue,
        "record",
        [
            ((catalog_dir / "OrderResponse.avsc").read_text(), avro.record_of(order)),
            ((catalog_dir / "DoPayment.avsc").read_text(), avro.record_of(do_payment)),
        ],
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        registry_url=schema_registry_url,
        messages=AVRO_MESSAGES,
        headerless={
            "serializer": "avro",
            "type": "examples.payment_service.messages:DoPayment",
        },
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 2), 60, runner)
    assert [(r.offset, m) for _, m, r in seen(queue)] == [(1, do_payment)]
    [letter] = dead_letters(kafka_bootstrap, queue, 1).values()
    assert letter["dlq.error_class"] == "DeserializationError", letter


def _zigzag(number: int) -> bytes:
    """An Avro long."""
    value = (number << 1) ^ (number >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@pytest.mark.parametrize("items", [3, 2**40], ids=["control", "bomb"])
def test_an_avro_bomb_from_a_stranger_does_not_stall_the_queue(
    items: int,
    kafka_bootstrap: str,
    schema_registry_url: str,
    registry: SchemaRegistry,
    confluent: SchemaRegistryClient,
    tmp_path: Any,
) -> None:
    """A stranger registers ``payments.DoPayment`` with one more field, an array of nulls,
    and writes a record whose array claims 2**40 items: 9 bytes on the wire, and fastavro
    loops over every item (nulls take no bytes, so it never runs out of input) while
    skipping the field the reader does not know. The record must be dead-lettered (or the
    loop at least stay alive and the next record flow); here ``run`` is stuck for hours.
    Runs ``kafka-dispatch run`` as a subprocess: the decode holds the GIL."""
    import os
    import subprocess
    import sys

    queue = new_queue(kafka_bootstrap)
    avro = ours(registry).get_serializer_by_id(2)
    sample = samples()[0]
    body = avro.serialize(sample)[5:]
    writer = json.loads((ROOT / "schemas" / "DoPayment.avsc").read_text())
    writer["fields"].append(
        {"name": "pad", "type": {"type": "array", "items": "null"}, "default": []}
    )
    bomb_id = confluent.register_schema(unique("bomb-value"), Schema(json.dumps(writer), "AVRO"))
    bomb = struct.pack(">bI", 0, bomb_id) + body + _zigzag(items) + _zigzag(0)
    good = struct.pack(">bI", 0, bomb_id) + body + _zigzag(0)
    produce(kafka_bootstrap, queue, [(b"bomb", bomb, None), (b"good", good, None)])
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        registry_url=schema_registry_url,
        messages=AVRO_MESSAGES,
    )
    config = tmp_path / "c.json"
    config.write_text(json.dumps(doc))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "run", "-c", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 40
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            done = sum(max(o, 0) for o in committed(kafka_bootstrap, queue, queue))
            if done == 2:
                break
            time.sleep(1)
    finally:
        proc.kill()
        proc.wait(10)
    assert done == 2, f"committed {done} of 2 after 40 s: the decode of a 9-byte array is stuck"


# == hostile JSON ==========================================================================
BAD_JSON: list[tuple[str, bytes, str]] = [
    # (name, value, what the dead letter's text must contain)
    (
        "wrong type nested",
        json.dumps(charge("x", amount={"units": "1", "currency": 7})).encode(),
        "$.amount.currency",
    ),
    (
        "missing nested",
        json.dumps(charge("x", amount={"units": "1"})).encode(),
        "$.amount.currency",
    ),
    ("bad uuid", json.dumps(charge("x", charge_id="nope")).encode(), "$.charge_id"),
    ("bad datetime", json.dumps(charge("x", at="yesterday")).encode(), "$.at"),
    (
        "bad decimal",
        json.dumps(charge("x", amount={"units": "ten", "currency": "E"})).encode(),
        "$.amount.units",
    ),
    ("list of ints", json.dumps(charge("x", tags=[1, 2])).encode(), "$.tags[0]"),
    ("null", b"null", "expected object"),
    ("array", b"[1,2]", "expected object"),
    ("string", b'"hello"', "expected object"),
    ("empty", b"", "not valid JSON"),
    ("truncated", b'{"charge_id": "', "not valid JSON"),
    ("latin-1", json.dumps(charge("x")).encode()[:-2] + b'\xe9"}', "not valid JSON"),
    ("deep nesting", b'{"extra":' + b"[" * 200_000 + b"]" * 200_000 + b"}", "not valid JSON"),
    ("utf-16", json.dumps(charge("x")).encode("utf-16"), "not valid JSON"),
    (
        "NaN units",
        b'{"charge_id":"'
        + str(uuid4()).encode()
        + b'","amount":{"units":NaN,"currency":"E"},'
        + b'"at":"2026-12-01T10:00:00Z","tags":[],"ref":"n"}',
        "not valid JSON",
    ),
]


def test_hostile_json_is_dead_lettered_with_the_field_path_and_good_json_still_flows(
    kafka_bootstrap: str,
) -> None:
    queue = new_queue(kafka_bootstrap)
    good = [
        json.dumps(charge("good-extra", unexpected={"deep": [1, {"x": None}]})).encode(),
        json.dumps(charge("good-note", note=None)).encode(),
        json.dumps(
            charge("good-bigint", tags=[], amount={"units": 10**30, "currency": "E"})
        ).encode(),
    ]
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = []
    for index, (_, value, _) in enumerate(BAD_JSON):
        records.append((f"bad-{index}".encode(), value, None))
        records.append((b"good", good[index % len(good)], None))
    produce(kafka_bootstrap, queue, records)
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        messages=JSON_MESSAGES,
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, len(records)), 90, runner)
    got = seen(queue)
    assert [r.offset for _, _, r in got] == list(range(1, len(records), 2))
    assert all(isinstance(m, Charge) and isinstance(m.amount, Amount) for _, m, _ in got)
    big = next(m for _, m, _ in got if m.ref == "good-bigint")
    assert big.amount.units == Decimal(10**30)
    letters = dead_letters(kafka_bootstrap, queue, len(BAD_JSON))
    problems = []
    for index, (name, _, expected) in enumerate(BAD_JSON):
        letter = letters.get(2 * index)
        if letter is None:
            problems.append(f"{name}: no dead letter")
        elif (
            letter["dlq.error_class"] != "DeserializationError"
            or expected not in letter["dlq.error_text"]
        ):
            problems.append(f"{name}: {letter['dlq.error_class']}: {letter['dlq.error_text']}")
    assert not problems, "\n".join(problems)


def test_a_huge_undecodable_record_is_dead_lettered_even_when_the_dead_letter_is_too_big(
    kafka_bootstrap: str,
) -> None:
    """1 MB of bad JSON (the broker's limit) cannot travel with dlq.* headers added."""
    queue = new_queue(kafka_bootstrap)
    huge = b'{"ref": "' + b"x" * 1_040_000 + b'", "units": "not an int"}'
    produce(
        kafka_bootstrap,
        queue,
        [(b"huge", huge, None), (b"k", json.dumps(charge("after")).encode(), None)],
        **{"message.max.bytes": 1_048_576},
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        messages=JSON_MESSAGES,
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 2), 60, runner)
    assert [m.ref for _, m, _ in seen(queue)] == ["after"]
    [letter] = dead_letters(kafka_bootstrap, queue, 1).values()
    assert letter["dlq.error_class"] == "DeserializationError"
    assert int(letter.get("dlq.payload_size", len(huge))) == len(huge)


# == keys =====================================================================================
def test_keys_that_do_not_decode_are_dead_lettered_naming_the_key(
    kafka_bootstrap: str, schema_registry_url: str, confluent: SchemaRegistryClient
) -> None:
    """``key: string`` with Latin-1 and ``key: avro`` with JSON, unknown ids and a key that
    does not fit its writer schema; two queues, one run."""
    text_queue, avro_queue = new_queue(kafka_bootstrap), new_queue(kafka_bootstrap)
    value = json.dumps(charge("v")).encode()
    produce(
        kafka_bootstrap,
        text_queue,
        [(b"caf\xe9", value, None), ("café".encode(), value, None), (None, value, None)],
    )
    key_schema = confluent.register_schema(
        unique("keys-key"),
        Schema(
            json.dumps(
                {"type": "record", "name": "K", "fields": [{"name": "id", "type": "string"}]}
            ),
            "AVRO",
        ),
    )
    good_key = struct.pack(">bI", 0, key_schema) + b"\x04ab"
    produce(
        kafka_bootstrap,
        avro_queue,
        [
            (b'{"id": "json"}', value, None),  # 0: not Confluent-framed
            (struct.pack(">bI", 0, 2**31 - 13) + b"\x02x", value, None),  # 1: unknown id
            (struct.pack(">bI", 0, key_schema) + b"\x40ab", value, None),  # 2: too short
            (struct.pack(">bI", 0, key_schema) + b"\x04ab" + b"tail", value, None),  # 3: extra
            (good_key, value, None),  # 4
        ],
    )
    doc = document(
        kafka_bootstrap,
        text_queue,
        ["Recorder"],
        registry_url=schema_registry_url,
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
        key="string",
        message_id="key",
    )
    doc["queues"][avro_queue] = doc["queues"][text_queue] | {"key": "avro", "message_id": "offset"}
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, text_queue, 3), 60, runner)
        wait_until(all_committed(kafka_bootstrap, avro_queue, 5), 60, runner)
    assert [(r.offset, r.key) for _, _, r in seen(text_queue)] == [(1, "café"), (2, None)]
    [text_letter] = dead_letters(kafka_bootstrap, text_queue, 1).values()
    assert text_letter["dlq.error_class"] == "DeserializationError"
    assert "key is not UTF-8" in text_letter["dlq.error_text"]
    got = seen(avro_queue)
    letters = dead_letters(kafka_bootstrap, avro_queue, 4)
    summary = {o: (h["dlq.error_class"], h["dlq.error_text"]) for o, h in letters.items()}
    assert [(r.offset, r.key) for _, _, r in got] == [(4, {"id": "ab"})], summary
    assert sorted(letters) == [0, 1, 2, 3], summary
    assert "wire format" in letters[0]["dlq.error_text"]
    assert letters[1]["dlq.error_class"] == "UnknownSchemaError"
    assert letters[2]["dlq.error_class"] == "DeserializationError"
    # a key with bytes left over after its schema is not that schema's key
    assert letters[3]["dlq.error_class"] == "DeserializationError", summary


# == Spring __TypeId__ ===============================================================
def test_spring_type_ids_unknown_missing_and_garbled(kafka_bootstrap: str) -> None:
    """With a ``type_ids`` table and no ``headerless``: an unknown, a missing and a
    non-UTF-8 ``__TypeId__`` are each dead-lettered with MissingHeaderError."""
    queue = new_queue(kafka_bootstrap)
    value = json.dumps(charge("spring")).encode()
    produce(
        kafka_bootstrap,
        queue,
        [
            (None, value, [("__TypeId__", b"com.acme.Charge")]),  # 0
            (None, value, [("__TypeId__", b"com.acme.Unknown")]),  # 1
            (None, value, None),  # 2
            (None, value, [("__TypeId__", b"com.acme.\xff")]),  # 3
            (None, b'{"refund_id": "r", "units": 3}', [("__TypeId__", b"com.acme.Refund")]),
        ],
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        type_ids={"com.acme.Charge": f"{HERE}:Charge", "com.acme.Refund": f"{HERE}:Refund"},
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 5), 60, runner)
    assert [(r.offset, type(m).__name__) for _, m, r in seen(queue)] == [
        (0, "Charge"),
        (4, "Refund"),
    ]
    letters = dead_letters(kafka_bootstrap, queue, 3)
    assert sorted(letters) == [1, 2, 3]
    assert {h["dlq.error_class"] for h in letters.values()} == {"MissingHeaderError"}
    assert "com.acme.Unknown" in letters[1]["dlq.error_text"]


def test_an_unknown_spring_type_id_is_not_decoded_as_the_headerless_type(
    kafka_bootstrap: str,
) -> None:
    """A queue with both ``type_ids`` and ``headerless``: a record whose ``__TypeId__``
    names a type missing from the table is another type (Spring said so); decoding it as
    the ``headerless`` type hands the handler the wrong class. Here the unknown type's JSON
    happens to fit ``Charge``: it must be dead-lettered, not delivered as a Charge."""
    queue = new_queue(kafka_bootstrap)
    value = json.dumps(charge("really-a-chargeback")).encode()
    produce(
        kafka_bootstrap,
        queue,
        [
            (None, value, [("__TypeId__", b"com.acme.Charge")]),
            (None, value, [("__TypeId__", b"com.acme.Chargeback")]),
            (None, value, None),  # no type id at all: the headerless type, as documented
        ],
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        type_ids={"com.acme.Charge": f"{HERE}:Charge"},
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 3), 60, runner)
    assert [r.offset for _, _, r in seen(queue)] == [0, 2]
    [letter] = dead_letters(kafka_bootstrap, queue, 1, timeout=5).values()
    assert "com.acme.Chargeback" in letter["dlq.error_text"]


# == message_id field:<name> ==========================================================
def test_message_id_from_a_field_missing_null_or_not_a_string(kafka_bootstrap: str) -> None:
    """``field:note`` with compacted dedup: equal values deduplicate whatever their type's
    text; a missing or null field falls back to the record's offset id (documented)."""
    queue = new_queue(kafka_bootstrap)
    values = [
        charge("a", note="n-1"),  # 0
        charge("b", note="n-1"),  # 1: duplicate of 0 (same field)
        charge("c"),  # 2: missing -> offset id
        charge("d", note=None),  # 3: null -> offset id
        charge("e", note=""),  # 4: empty -> offset id
    ]
    produce(kafka_bootstrap, queue, [(None, json.dumps(v).encode(), None) for v in values])
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
        message_id="field:note",
        dedup={"kind": "compacted", "window": "1h"},
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 5), 60, runner)
    got = [(m.ref, r.message_id) for _, m, r in seen(queue)]
    assert got == [
        ("a", "n-1"),
        ("c", f"{queue}/0/2"),
        ("d", f"{queue}/0/3"),
        ("e", f"{queue}/0/4"),
    ]


def test_message_id_field_that_the_type_does_not_declare_is_refused_at_start_up(
    kafka_bootstrap: str,
) -> None:
    """``field:nmae`` (a typo) can never give an id: every message would silently fall back
    to its offset id and re-sends would run twice. A typo must be a configuration error."""
    queue = new_queue(kafka_bootstrap)
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
        message_id="field:nmae",
    )
    try:
        runner = ServiceRunner(parse_config(doc, env={}))
    except ConfigurationError as exc:
        assert "nmae" in str(exc)
        return
    runner.start()  # (ServiceRunner.close() before start() blocks forever: HealthServer)
    runner.stop()
    runner.wait(30)
    runner.close()
    pytest.fail("message_id: field:nmae was accepted although Charge has no field 'nmae'")


# == async handlers =========================================================================
@pytest.mark.parametrize("hanging", [False, True], ids=["no-hang", "one-key-hangs"])
def test_async_handlers_that_raise_are_cancelled_or_await_foreign_futures_are_dead_lettered(
    kafka_bootstrap: str, hanging: bool
) -> None:
    """Mixed with a sync consumer, concurrency 4, key lanes, 3 partitions: a coroutine that
    raises, one that is cancelled and one that awaits another loop's future are retried,
    then dead-lettered naming the consumer. With ``one-key-hangs``, one more key's coroutine
    hangs: only that key may wait (issue 13: "a slow one does not block other keys"),
    the others' retries and dead letters must still happen while it hangs."""
    queue = new_queue(kafka_bootstrap, partitions=3)
    AsyncMisbehaving.RELEASE.clear()
    bad = ["raise-1", "cancel-1", "foreign-1"]
    refs = bad + (["hang-1"] if hanging else []) + [f"ok-{i}" for i in range(12)]
    produce(
        kafka_bootstrap,
        queue,
        [(ref.encode(), json.dumps(charge(ref)).encode(), None) for ref in refs],
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["AsyncMisbehaving", "Recorder"],
        partitions=3,
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
        concurrency=4,
        ordering="key",
        message_id="key",
    )
    try:
        with running(doc) as runner:
            wait_until(lambda: len(seen(queue, "async")) >= 12, 60, runner)
            started = time.monotonic()
            deadline = started + 40
            letters: dict[int, dict[str, str]] = {}
            while len(letters) < 3 and time.monotonic() < deadline:
                letters = {
                    i: h for i, h in enumerate(dead_letter_list(kafka_bootstrap, queue, 3, 1))
                }
            summary = f"after {time.monotonic() - started:.0f} s, dead letters: " + " | ".join(
                f"{h['dlq.original_partition']}@{h['dlq.original_offset']} {h['dlq.error_text']}"
                for h in letters.values()
            )
            assert len(letters) == 3, summary
            AsyncMisbehaving.RELEASE.set()
            wait_until(all_committed(kafka_bootstrap, queue, len(refs), 3), 60, runner)
    finally:
        AsyncMisbehaving.RELEASE.set()
    texts = " | ".join(h["dlq.error_class"] + " " + h["dlq.error_text"] for h in letters.values())
    assert "raise-1" in texts and "Cancelled" in texts and "loop" in texts, texts
    assert all(h["dlq.attempts"] == "2" for h in letters.values()), texts
    assert all("AsyncMisbehaving" in h["dlq.failing_consumers"] for h in letters.values()), texts


def test_async_single_dispatch_with_record_and_a_non_coroutine_awaitable(
    kafka_bootstrap: str,
) -> None:
    queue = new_queue(kafka_bootstrap)
    produce(
        kafka_bootstrap,
        queue,
        [(f"k{i}".encode(), json.dumps(charge(f"r{i}")).encode(), None) for i in range(5)],
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["Dispatching", "ReturnsAwaitable", "AsyncRecorder"],
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
        concurrency=2,
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 5), 60, runner)
    for name in ("on_charge", "awaitable", "async"):
        got = seen(queue, name)
        assert sorted(r.offset for _, _, r in got) == list(range(5)), name
    assert all(r.key == f"k{r.offset}".encode() for _, _, r in seen(queue, "on_charge"))


def test_an_async_generator_handler_is_not_acknowledged_without_running(
    kafka_bootstrap: str,
) -> None:
    """``async def process`` with a ``yield`` returns an async generator: not awaitable, so
    the dispatcher takes the call as a success and commits the message although the
    handler's body never ran - the silent loss issue 13 set out to make impossible."""
    queue = new_queue(kafka_bootstrap)
    produce(kafka_bootstrap, queue, [(b"k", json.dumps(charge("gen")).encode(), None)])
    doc = document(
        kafka_bootstrap,
        queue,
        ["AsyncGeneratorHandler"],
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
    )
    with running(doc) as runner:
        wait_until(all_committed(kafka_bootstrap, queue, 1), 60, runner)
    ran = [m.ref for _, m, _ in seen(queue, "asyncgen")]
    letters = dead_letters(kafka_bootstrap, queue, 1, timeout=3)
    assert ran == ["gen"] or letters, "committed, but the handler body never ran"
