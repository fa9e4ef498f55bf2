"""Avro with a real schema registry (Apicurio ccompat v7) and a real broker (issue 4)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import struct
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.avro import AvroSerializer as ConfluentAvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from examples.payment_service import messages as pm
from service import (
    AvroSerializer,
    Consumer,
    DeserializationError,
    JsonSerializer,
    MessageDispatcher,
    Publisher,
    SchemaCatalog,
    SchemaRegistry,
    SchemaRegistryUnavailableError,
    SerializationError,
    SerializerRegistry,
    UnknownManifestError,
    UnknownSchemaError,
)
from service.backends.kafka import KafkaBackend
from tests.kafka_helpers import kafka_backend, read_topic, unique

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "schemas"


@dataclasses.dataclass(frozen=True)
class DoPaymentV2:
    """``payments.DoPayment`` as of tests/fixtures/schemas/DoPayment.v2.avsc."""

    __manifest__: ClassVar[str] = "payments.DoPayment"
    payment_id: uuid.UUID
    order_id: uuid.UUID
    amount: pm.Money
    method: pm.PaymentMethod
    merchant_reference: str
    requested_at: datetime.datetime
    metadata: dict[str, str]
    note: str | None = None
    channel: str = "online"
    installments: int = 1


class Recorder(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def process(self, message: Any, **kwargs: Any) -> None:
        self.seen.append(message)


@pytest.fixture
def registry(schema_registry_url: str) -> Iterator[SchemaRegistry]:
    with SchemaRegistry(schema_registry_url) as client:
        yield client


@pytest.fixture
def backend(kafka_bootstrap: str) -> Iterator[KafkaBackend]:
    b = kafka_backend(kafka_bootstrap)
    yield b
    b.close()


def avro_registry(
    registry: SchemaRegistry, catalog_dir: Path = ROOT / "schemas", *classes: type
) -> SerializerRegistry:
    avro = AvroSerializer(SchemaCatalog(catalog_dir), registry)
    bound = classes or pm.MESSAGE_TYPES
    return SerializerRegistry(
        {
            "serializers": {"avro": avro, "json": JsonSerializer},
            "serializer_bindings": {**dict.fromkeys(bound, "avro"), dict: "json"},
        }
    )


def consume(
    backend: KafkaBackend,
    serializers: SerializerRegistry,
    queue: str,
    until: Callable[[Recorder], bool],
    timeout: float = 20.0,
    errors: list[Exception] | None = None,
) -> Recorder:
    recorder = Recorder()
    dispatcher = MessageDispatcher(serializers, backend=backend)
    dispatcher.attach_consumer(recorder)
    callback = errors.append if errors is not None else None
    thread = threading.Thread(
        target=dispatcher.consume_loop, args=(queue,), kwargs={"on_exception": callback}
    )
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not until(recorder) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
        thread.join(30)
    return recorder


def test_every_message_type_round_trips_exactly_through_kafka(
    backend: KafkaBackend, registry: SchemaRegistry
) -> None:
    queue = unique("avro")
    backend.declare_queue(queue)
    serializers = avro_registry(registry)
    samples = pm.sample_messages()
    publisher = Publisher(serializers, backend)
    for sample in samples:
        publisher.publish(queue, sample, key="one-partition")
    backend.flush()
    recorder = consume(backend, serializers, queue, lambda r: len(r.seen) == len(samples))
    assert recorder.seen == samples
    assert [type(m) for m in recorder.seen] == [type(m) for m in samples]


def test_value_is_confluent_wire_format_with_the_registry_id(
    backend: KafkaBackend, registry: SchemaRegistry, kafka_bootstrap: str
) -> None:
    topic = unique("wire")
    backend.declare_topic(topic)
    sample = pm.sample_messages()[1]
    Publisher(avro_registry(registry), backend).publish(topic, sample)
    backend.flush()
    [record] = read_topic(kafka_bootstrap, topic, 1)
    assert record.value is not None
    magic, schema_id = struct.unpack(">bI", record.value[:5])
    registered = registry.lookup(
        "payments.DoPayment", SchemaCatalog(ROOT / "schemas")["payments.DoPayment"].text
    )
    assert magic == 0 and registered is not None and schema_id == registered.schema_id
    assert record.header("serializer_id") == b"2"
    assert record.header("manifest") == b"payments.DoPayment"


def v2_catalog(tmp_path: Path) -> Path:
    directory = tmp_path / "schemas-v2"
    shutil.copytree(ROOT / "schemas", directory)
    shutil.copy(FIXTURES / "DoPayment.v2.avsc", directory / "DoPayment.avsc")
    return directory


def test_v1_writer_is_read_by_v2_reader_and_the_reverse(
    backend: KafkaBackend, registry: SchemaRegistry, tmp_path: Path
) -> None:
    v1 = avro_registry(registry, ROOT / "schemas", pm.DoPayment)
    v2 = avro_registry(registry, v2_catalog(tmp_path), DoPaymentV2)
    old = next(m for m in pm.sample_messages() if isinstance(m, pm.DoPayment))
    new = DoPaymentV2(
        **dataclasses.asdict(old) | {"amount": old.amount, "channel": "pos", "installments": 3}
    )
    forward, backward = unique("v1-to-v2"), unique("v2-to-v1")
    for queue in (forward, backward):
        backend.declare_queue(queue)
    Publisher(v1, backend).publish(forward, old)
    Publisher(v2, backend).publish(backward, new)
    backend.flush()
    [read_new] = consume(backend, v2, forward, lambda r: len(r.seen) == 1).seen
    assert read_new == DoPaymentV2(**dataclasses.asdict(old) | {"amount": old.amount})
    assert (read_new.channel, read_new.installments) == ("online", 1)  # the v2 defaults
    [read_old] = consume(backend, v1, backward, lambda r: len(r.seen) == 1).seen
    assert read_old == old  # v2's extra fields are skipped


def framed(schema_id: int, body: bytes) -> bytes:
    return struct.pack(">bI", 0, schema_id) + body


def test_bad_avro_input_is_dead_lettered_with_its_reason(
    backend: KafkaBackend, registry: SchemaRegistry, kafka_bootstrap: str
) -> None:
    queue = unique("bad-avro")
    backend.declare_queue(queue)
    serializers = avro_registry(registry)
    good = Publisher(serializers, backend)
    sample = pm.sample_messages()[1]
    good.publish(queue, sample, key="k")
    backend.flush()
    [valid] = read_topic(kafka_bootstrap, queue, 1)
    assert valid.value is not None

    def headers(manifest: bytes) -> tuple[tuple[str, bytes], ...]:
        return (("serializer_id", b"2"), ("manifest", manifest), ("message_id", b"m"))

    cases = [
        (framed(999_999, valid.value[5:]), b"payments.DoPayment", UnknownSchemaError),
        (valid.value[:12], b"payments.DoPayment", DeserializationError),  # truncated
        (b"\x01" + valid.value[1:], b"payments.DoPayment", DeserializationError),  # magic
        (valid.value + b"\x00\x01", b"payments.DoPayment", DeserializationError),  # extra bytes
        (valid.value, b"payments.Unbound", UnknownManifestError),
    ]
    for value, manifest, _ in cases:
        backend.publish(queue, value, key=b"k", headers=headers(manifest))
    good.publish(queue, sample, key="k")
    backend.flush()
    errors: list[Exception] = []
    recorder = consume(backend, serializers, queue, lambda r: len(r.seen) == 2, errors=errors)
    assert recorder.seen == [sample, sample]
    assert [type(e) for e in errors] == [error for _, _, error in cases]
    letters = read_topic(kafka_bootstrap, f"{queue}.dlq", len(cases))
    assert [m.header("dlq.error_class") for m in letters] == [
        error.__name__.encode() for _, _, error in cases
    ]
    assert b"magic byte" in (letters[2].header("dlq.error_text") or b"")


def test_registry_unreachable_while_consuming_is_retried_never_dead_lettered(
    backend: KafkaBackend, registry: SchemaRegistry, kafka_bootstrap: str
) -> None:
    queue = unique("sr-down")
    backend.declare_topic(queue, partitions=2)
    backend.declare_queue(queue)
    publisher = Publisher(avro_registry(registry), backend)
    for i in range(5):  # before the Avro one: its partition waits from there on
        publisher.publish(queue, {"n": i}, key=f"json-{i}")
    publisher.publish(queue, pm.sample_messages()[1], key="a")
    backend.flush()
    unreachable = avro_registry(SchemaRegistry("http://127.0.0.1:9", timeout=1))
    errors: list[Exception] = []
    recorder = consume(
        backend, unreachable, queue, lambda r: len(r.seen) >= 5, timeout=10, errors=errors
    )
    assert sorted(m["n"] for m in recorder.seen) == [0, 1, 2, 3, 4]  # other work went on
    assert errors and all(isinstance(e, SchemaRegistryUnavailableError) for e in errors)
    assert read_topic(kafka_bootstrap, f"{queue}.dlq", 1, timeout=2) == []
    healed = consume(backend, avro_registry(registry), queue, lambda r: len(r.seen) == 1)
    assert healed.seen == [pm.sample_messages()[1]]  # still there, nothing lost


def test_object_that_does_not_fit_its_schema_is_refused_and_nothing_is_sent(
    backend: KafkaBackend, registry: SchemaRegistry, kafka_bootstrap: str
) -> None:
    topic = unique("misfit")
    backend.declare_topic(topic)
    sample = pm.sample_messages()[1]
    assert isinstance(sample, pm.DoPayment)
    misfit = dataclasses.replace(sample, merchant_reference=12345)  # type: ignore[arg-type]
    publisher = Publisher(avro_registry(registry), backend)
    with pytest.raises(
        SerializationError, match=r"DoPayment\.merchant_reference: 12345 does not fit string"
    ):
        publisher.publish(topic, misfit)
    too_precise = dataclasses.replace(sample, amount=pm.Money(Decimal("1.234"), "EUR"))
    with pytest.raises(SerializationError, match=r"payments\.DoPayment\.amount\.amount: "):
        publisher.publish(topic, too_precise)
    backend.flush()
    assert read_topic(kafka_bootstrap, topic, 1, timeout=2) == []


def test_confluent_serializer_and_deserializer_interoperate(
    backend: KafkaBackend,
    schema_registry_url: str,
    registry: SchemaRegistry,
    kafka_bootstrap: str,
) -> None:
    queue = unique("interop")
    backend.declare_queue(queue)
    schema_text = SchemaCatalog(ROOT / "schemas")["payments.DoPayment"].text
    sample = pm.sample_messages()[1]
    assert isinstance(sample, pm.DoPayment)
    serializers = avro_registry(registry)
    avro = serializers.get_serializer_by_id(2)
    assert isinstance(avro, AvroSerializer)
    as_dict = avro.record_of(sample)
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        theirs = ConfluentAvroSerializer(
            client, schema_text, conf={"subject.name.strategy": lambda ctx, name: name}
        )
        value = theirs(as_dict, SerializationContext(queue, MessageField.VALUE))
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(
            queue,
            value,
            b"k",
            headers=[
                ("serializer_id", b"2"),
                ("manifest", b"payments.DoPayment"),
                ("message_id", b"c1"),
            ],
        )
        assert producer.flush(10) == 0
        recorder = consume(backend, serializers, queue, lambda r: len(r.seen) == 1)
        assert recorder.seen == [sample]

        topic = unique("ours")
        backend.declare_topic(topic)
        Publisher(serializers, backend).publish(topic, sample)
        backend.flush()
        [record] = read_topic(kafka_bootstrap, topic, 1)
        decoded = AvroDeserializer(client)(
            record.value, SerializationContext(topic, MessageField.VALUE)
        )
        assert decoded == as_dict


def test_a_schema_deleted_from_the_registry_dead_letters_with_a_clear_reason(
    backend: KafkaBackend,
    registry: SchemaRegistry,
    schema_registry_url: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    catalog_dir = tmp_path / "schemas"
    catalog_dir.mkdir()
    definition = json.loads((ROOT / "schemas" / "DoPayment.avsc").read_text())
    definition["doc"] = f"unique content {uuid.uuid4()}"  # its own schema id, nobody else's
    (catalog_dir / "DoPayment.avsc").write_text(json.dumps(definition))
    queue = unique("sr-deleted")
    backend.declare_queue(queue)
    writer = AvroSerializer(SchemaCatalog(catalog_dir), registry, subject_strategy="topic_record")
    writing = SerializerRegistry(
        {"serializers": {"avro": writer}, "serializer_bindings": {pm.DoPayment: "avro"}}
    )
    sample = next(m for m in pm.sample_messages() if isinstance(m, pm.DoPayment))
    Publisher(writing, backend).publish(queue, sample, key="k")
    backend.flush()
    subject = f"{queue}-payments.DoPayment"
    for suffix in ("", "?permanent=true"):
        request = urllib.request.Request(  # noqa: S310 - our local registry over http
            f"{schema_registry_url}/subjects/{subject}{suffix}", method="DELETE"
        )
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310 - our local registry
    errors: list[Exception] = []
    consume(
        backend,
        avro_registry(registry, catalog_dir, pm.DoPayment),
        queue,
        lambda r: bool(errors),
        errors=errors,
    )
    assert [type(e) for e in errors] == [UnknownSchemaError]
    [letter] = read_topic(kafka_bootstrap, f"{queue}.dlq", 1)
    assert letter.header("dlq.error_class") == b"UnknownSchemaError"
    assert b"has no schema id" in (letter.header("dlq.error_text") or b"")
