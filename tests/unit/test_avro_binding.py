"""Binding dataclasses to schemas/ (mismatches named precisely); sniffing; subject strategies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from examples.payment_service import messages as pm
from service import (
    AvroSerializer,
    ConfigurationError,
    DeserializationError,
    JsonSerializer,
    SchemaCatalog,
    SchemaRegistry,
    SerializationError,
    SerializerRegistry,
    UnknownSchemaError,
)
from service.config import parse_config
from service.schemas import bind_record
from service.wiring import build_serializers

ROOT = Path(__file__).resolve().parents[2]
CATALOG = SchemaCatalog(ROOT / "schemas")
CONSUMER = "tests.payments:PaymentService"


@dataclasses.dataclass
class DoPaymentWrongType:
    __manifest__: ClassVar[str] = "payments.DoPayment"
    payment_id: str  # schema: uuid
    order_id: object
    amount: object
    method: object
    merchant_reference: object
    requested_at: object
    metadata: object
    note: object = None


@dataclasses.dataclass
class DoPaymentMissingField:
    __manifest__: ClassVar[str] = "payments.DoPayment"
    payment_id: object


@dataclasses.dataclass
class NotInSchemas:
    x: int


def serializer() -> AvroSerializer:
    return AvroSerializer(CATALOG, SchemaRegistry("http://127.0.0.1:9"))  # bind needs no registry


def test_every_payment_class_binds_to_its_schema() -> None:
    s = serializer()
    for cls in (pm.OrderResponse, pm.DoPayment, pm.PaymentCompleted, pm.PaymentFailed):
        s.bind(cls)


def test_type_mismatch_names_class_file_and_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        serializer().bind(DoPaymentWrongType)
    text = str(info.value)
    assert "DoPaymentWrongType" in text
    assert "schemas/DoPayment.avsc" in text
    assert "payments.DoPayment.payment_id: schema says string (uuid), class says str" in text


def test_missing_field_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"payments\.DoPayment\.order_id: the schema"):
        serializer().bind(DoPaymentMissingField)


def test_class_without_schema_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigurationError, match=r"no schema in .* defines the record .NotInSchemas."
    ):
        serializer().bind(NotInSchemas)


def test_nested_enum_symbols_must_match(tmp_path: Path) -> None:
    definition = json.loads((ROOT / "schemas" / "DoPayment.avsc").read_text())
    definition["fields"][3]["type"]["symbols"] = ["CARD", "SEPA"]
    path = tmp_path / "DoPayment.avsc"
    path.write_text(json.dumps(definition))
    with pytest.raises(ConfigurationError, match=r"payments\.DoPayment\.method: enum"):
        bind_record(pm.DoPayment, SchemaCatalog(tmp_path)["payments.DoPayment"].parsed, path)


def test_codec_round_trips_nested_values_without_a_registry() -> None:
    schema = CATALOG["payments.OrderResponse"]
    codec = bind_record(pm.OrderResponse, schema.parsed, schema.path)
    sample = next(m for m in pm.sample_messages() if isinstance(m, pm.OrderResponse))
    record = codec.to_avro(sample)
    assert isinstance(record["customer"], dict) and isinstance(record["items"][0], dict)
    assert codec.from_avro(record) == sample


def test_bad_catalog_files_are_configuration_errors(tmp_path: Path) -> None:
    (tmp_path / "Broken.avsc").write_text("{not json")
    with pytest.raises(ConfigurationError, match=r"Broken\.avsc"):
        SchemaCatalog(tmp_path)
    (tmp_path / "Broken.avsc").write_text('{"type": "record", "name": "X", "fields": [1]}')
    with pytest.raises(ConfigurationError, match=r"invalid Avro schema"):
        SchemaCatalog(tmp_path)


# -- header-less records and subject strategies (a registry double) -------------------------
class FakeRegistry:
    """The calls AvroSerializer makes, in memory: ids by (subject, schema text)."""

    def __init__(self) -> None:
        self.subjects: dict[str, list[str]] = {}
        self.texts: list[str] = []
        self.fetched: list[int] = []

    def register(self, subject: str, schema_text: str) -> int:
        if schema_text not in self.texts:
            self.texts.append(schema_text)
        self.subjects.setdefault(subject, []).append(schema_text)
        return self.texts.index(schema_text) + 1

    def schema_text(self, schema_id: int) -> str:
        self.fetched.append(schema_id)
        if not 0 < schema_id <= len(self.texts):
            raise UnknownSchemaError(f"the schema registry has no schema id {schema_id}")
        return self.texts[schema_id - 1]


def avro_with(fake: FakeRegistry, **options: Any) -> SerializerRegistry:
    avro = AvroSerializer(CATALOG, fake, **options)
    return SerializerRegistry(
        {
            "serializers": {"json": JsonSerializer, "avro": avro},
            "serializer_bindings": dict.fromkeys(pm.MESSAGE_TYPES, "avro"),
        }
    )


def test_sniff_names_the_writer_schema_of_a_confluent_framed_value() -> None:
    fake = FakeRegistry()
    serializers = avro_with(fake)
    sample = next(m for m in pm.sample_messages() if isinstance(m, pm.DoPayment))
    value, _ = serializers.serialize(sample)
    assert serializers.sniff(value) == (2, "payments.DoPayment")
    assert serializers.sniff(value) == (2, "payments.DoPayment")
    assert fake.fetched == [1]  # the writer schema is fetched once, then cached
    assert serializers.deserialize_with_serializerid(value, 2, "payments.DoPayment") == sample


@pytest.mark.parametrize("value", [b'{"a": 1}', b"", b"\x00\x00\x00", b"\x01\x00\x00\x00\x01x"])
def test_sniff_leaves_values_that_are_not_confluent_framed(value: bytes) -> None:
    fake = FakeRegistry()
    assert avro_with(fake).sniff(value) is None
    assert fake.fetched == []


def test_sniff_of_an_unknown_schema_id_is_an_unknown_schema_error() -> None:
    with pytest.raises(UnknownSchemaError, match="no schema id 77"):
        avro_with(FakeRegistry()).sniff(b"\x00\x00\x00\x00\x4dpayload")


def test_sniff_of_a_writer_schema_that_is_not_a_record_is_a_deserialization_error() -> None:
    fake = FakeRegistry()
    fake.texts.append('"string"')
    with pytest.raises(DeserializationError, match="not a record schema"):
        avro_with(fake).sniff(b"\x00\x00\x00\x00\x01\x02x")


def test_subject_strategies_by_type_then_topic_then_default() -> None:
    fake = FakeRegistry()
    serializers = avro_with(
        fake,
        subject_strategy="record",
        topic_strategies={"payments": "topic", "^legacy-.*": "topic_record"},
        type_strategies={"payments.PaymentFailed": "record"},
    )
    samples = {type(m): m for m in pm.sample_messages()}
    serializers.serialize(samples[pm.DoPayment], topic="payments")
    serializers.serialize(samples[pm.OrderResponse], topic="payments")
    serializers.serialize(samples[pm.PaymentFailed], topic="payments")
    serializers.serialize(samples[pm.DoPayment], topic="legacy-eu")
    serializers.serialize(samples[pm.DoPayment], topic="other")
    assert sorted(fake.subjects) == [
        "legacy-eu-payments.DoPayment",
        "payments-value",
        "payments.DoPayment",
        "payments.PaymentFailed",
    ]
    # one subject, two records: each keeps its own schema id
    assert len(set(fake.subjects["payments-value"])) == 2
    avro = serializers.get_serializer_by_id(2)
    assert isinstance(avro, AvroSerializer)
    assert avro.subject_for("payments.DoPayment", "payments") == "payments-value"
    assert avro.strategy_for("payments.PaymentFailed", "legacy-x") == "record"


def test_a_strategy_that_needs_the_topic_refuses_to_serialize_without_one() -> None:
    sample = next(m for m in pm.sample_messages() if isinstance(m, pm.DoPayment))
    for strategy in ("topic", "topic_record"):
        with pytest.raises(SerializationError, match=f"the {strategy} subject strategy needs"):
            avro_with(FakeRegistry(), subject_strategy=strategy).serialize(sample)


def test_unknown_strategies_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match=r"topic_strategies\['t'\] must be one of"):
        AvroSerializer(CATALOG, FakeRegistry(), topic_strategies={"t": "subject"})
    with pytest.raises(ConfigurationError, match="not a regular expression"):
        AvroSerializer(CATALOG, FakeRegistry(), topic_strategies={"^(": "topic"})


def test_configured_strategies_reach_the_avro_serializer() -> None:
    document = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9"},
        "schema_registry": {
            "url": "http://127.0.0.1:9",
            "schemas": str(ROOT / "schemas"),
            "subject_strategy": "topic_record",
            "subject_strategies": {"examples.payment_service.messages:PaymentFailed": "record"},
        },
        "messages": {"examples.payment_service.messages:DoPayment": "avro"},
        "queues": {
            "payments": {
                "topics": ["pay-a", "pay-b"],
                "consumers": [CONSUMER],
                "subject_strategy": "topic",
            },
            "other": {"consumers": [CONSUMER]},
        },
    }
    config = parse_config(document, env={})
    avro = build_serializers(config, SchemaRegistry("http://127.0.0.1:9")).get_serializer_by_id(2)
    assert isinstance(avro, AvroSerializer)
    assert avro.subject_for("payments.DoPayment", "pay-b") == "pay-b-value"
    assert avro.subject_for("payments.DoPayment", "other") == "other-payments.DoPayment"
    assert avro.subject_for("payments.PaymentFailed", "pay-a") == "payments.PaymentFailed"
    with pytest.raises(ConfigurationError, match=r"queues\.payments\.subject_strategy"):
        parse_config(
            {
                **document,
                "queues": {"payments": {"consumers": [CONSUMER], "subject_strategy": "x"}},
            },
            env={},
        )
