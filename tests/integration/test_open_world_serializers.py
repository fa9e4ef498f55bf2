"""Records of producers that know nothing of this service, on the real broker and registry.

Plain confluent-kafka with Confluent's own ``AvroSerializer`` writes, under each subject
strategy, records without any of our headers; ``SerializerRegistry.sniff`` recognises them
and the Avro serializer decodes them into the bound classes. The reverse direction (our
``topic`` strategy read by Confluent's ``AvroDeserializer``) is checked too.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.avro import AvroSerializer as ConfluentAvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from examples.payment_service import messages as pm
from service import (
    AvroSerializer,
    Consumer,
    MessageDispatcher,
    Publisher,
    SchemaCatalog,
    SchemaRegistry,
    SerializerRegistry,
    UnknownSchemaError,
    manifest_of,
)
from service.backends.kafka import KafkaBackend
from service.dispatch.routing import RoutingRules
from tests.integration.test_avro import DoPaymentV2
from tests.kafka_helpers import kafka_backend, read_topic, unique

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "schemas"
STRATEGIES: dict[str, Callable[..., Any]] = {
    "topic": topic_subject_name_strategy,
    "record": record_subject_name_strategy,
    "topic_record": topic_record_subject_name_strategy,
}


@pytest.fixture
def registry(schema_registry_url: str) -> Iterator[SchemaRegistry]:
    with SchemaRegistry(schema_registry_url) as client:
        yield client


@pytest.fixture
def confluent(schema_registry_url: str) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        yield client


@pytest.fixture
def backend(kafka_bootstrap: str) -> Iterator[KafkaBackend]:
    b = kafka_backend(kafka_bootstrap)
    yield b
    b.close()


def ours(registry: SchemaRegistry, catalog: Path = ROOT / "schemas", **options: Any) -> Any:
    avro = AvroSerializer(SchemaCatalog(catalog), registry, **options)
    return SerializerRegistry(
        {
            "serializers": {"avro": avro},
            "serializer_bindings": dict.fromkeys(pm.MESSAGE_TYPES, "avro"),
        }
    )


def samples() -> list[Any]:
    """A DoPayment, then an OrderResponse."""
    by_type = {type(m): m for m in pm.sample_messages()}
    return [by_type[pm.DoPayment], by_type[pm.OrderResponse]]


def produce_like_a_stranger(
    bootstrap: str,
    confluent: SchemaRegistryClient,
    topic: str,
    strategy: str,
    records: list[tuple[str, dict[str, Any]]],
) -> None:
    """Write ``(schema text, record dict)`` pairs as a plain Confluent producer: no headers."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for index, (schema_text, record) in enumerate(records):
        serializer = ConfluentAvroSerializer(
            confluent, schema_text, conf={"subject.name.strategy": STRATEGIES[strategy]}
        )
        value = serializer(record, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, value, f"k{index}".encode())
    assert producer.flush(10) == 0


def schema_text(path: Path) -> str:
    return json.dumps(json.loads(path.read_text()))


@pytest.mark.parametrize("strategy", ["topic", "record", "topic_record"])
def test_confluent_avro_without_headers_is_sniffed_and_decoded_to_the_bound_classes(
    strategy: str,
    backend: KafkaBackend,
    registry: SchemaRegistry,
    confluent: SchemaRegistryClient,
    kafka_bootstrap: str,
) -> None:
    topic = unique(f"stranger-{strategy}")
    backend.declare_topic(topic)
    serializers = ours(registry)
    avro = serializers.get_serializer_by_id(2)
    catalog = SchemaCatalog(ROOT / "schemas")
    # one record type per topic under TopicNameStrategy (one subject per topic)
    sent = samples()[:1] if strategy == "topic" else samples()
    produce_like_a_stranger(
        kafka_bootstrap,
        confluent,
        topic,
        strategy,
        [(catalog[manifest_of(type(m))].text, avro.record_of(m)) for m in sent],
    )
    records = read_topic(kafka_bootstrap, topic, len(sent))
    assert [r.headers for r in records] == [()] * len(sent)  # nothing of ours on the wire
    decoded = []
    for record in records:
        assert record.value is not None
        found = serializers.sniff(record.value)
        assert found is not None
        serializer_id, manifest = found
        assert (serializer_id, manifest) == (2, manifest_of(type(sent[len(decoded)])))
        decoded.append(serializers.deserialize_with_serializerid(record.value, *found))
    assert decoded == sent


def test_an_evolved_writer_is_resolved_against_the_local_reader(
    backend: KafkaBackend,
    registry: SchemaRegistry,
    confluent: SchemaRegistryClient,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    topic = unique("stranger-v2")
    shutil.copy(FIXTURES / "DoPayment.v2.avsc", tmp_path / "DoPayment.avsc")
    backend.declare_topic(topic)
    sample = samples()[0]
    assert isinstance(sample, pm.DoPayment)
    v2 = DoPaymentV2(**{f.name: getattr(sample, f.name) for f in dataclasses.fields(sample)})
    v2_avro = AvroSerializer(SchemaCatalog(tmp_path), registry)
    v2_avro.bind(DoPaymentV2)
    produce_like_a_stranger(
        kafka_bootstrap,
        confluent,
        topic,
        "topic",
        [(schema_text(FIXTURES / "DoPayment.v2.avsc"), v2_avro.record_of(v2))],
    )
    [record] = read_topic(kafka_bootstrap, topic, 1)
    assert record.value is not None
    reader = ours(registry)  # the local schema is v1
    found = reader.sniff(record.value)
    assert found == (2, "payments.DoPayment")
    assert reader.deserialize_with_serializerid(record.value, *found) == sample


def test_a_schema_id_the_registry_does_not_know_is_an_unknown_schema_error(
    registry: SchemaRegistry,
) -> None:
    value = struct.pack(">bI", 0, 2**31 - 7) + b"\x02x"
    with pytest.raises(UnknownSchemaError, match=f"no schema id {2**31 - 7}"):
        ours(registry).sniff(value)


class Recorder(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, str]] = []

    def process(self, message: Any, **kwargs: Any) -> None:
        self.seen.append((message, kwargs["message_id"]))


def test_the_dispatcher_consumes_what_a_stranger_wrote_under_topic_name_strategy(
    backend: KafkaBackend,
    registry: SchemaRegistry,
    confluent: SchemaRegistryClient,
    kafka_bootstrap: str,
) -> None:
    queue = unique("stranger-queue")
    backend.declare_queue(queue)
    serializers = ours(registry)
    sample = samples()[0]
    catalog = SchemaCatalog(ROOT / "schemas")
    record = serializers.get_serializer_by_id(2).record_of(sample)
    produce_like_a_stranger(
        kafka_bootstrap,
        confluent,
        queue,
        "topic",
        [(catalog["payments.DoPayment"].text, record)] * 2,
    )
    recorder = Recorder()
    dispatcher = MessageDispatcher(
        serializers, backend=backend, routing=RoutingRules(sniff=serializers.sniff)
    )
    dispatcher.attach_consumer(recorder)
    thread = threading.Thread(target=dispatcher.consume_loop, args=(queue,))
    thread.start()
    deadline = time.monotonic() + 20
    try:
        while len(recorder.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
        thread.join(30)
    assert recorder.seen == [(sample, f"{queue}/0/0"), (sample, f"{queue}/0/1")]


def test_our_topic_strategy_is_read_by_confluents_deserializer(
    backend: KafkaBackend,
    registry: SchemaRegistry,
    confluent: SchemaRegistryClient,
    kafka_bootstrap: str,
) -> None:
    topic = unique("ours-topic")
    backend.declare_topic(topic)
    serializers = ours(registry, subject_strategy="topic")
    sample = samples()[0]
    Publisher(serializers, backend).publish(topic, sample)
    backend.flush()
    [record] = read_topic(kafka_bootstrap, topic, 1)
    assert confluent.get_latest_version(f"{topic}-value").schema.schema_str
    decoded = AvroDeserializer(confluent)(
        record.value, SerializationContext(topic, MessageField.VALUE)
    )
    assert decoded == serializers.get_serializer_by_id(2).record_of(sample)
