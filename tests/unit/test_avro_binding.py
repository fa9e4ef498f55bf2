"""Binding dataclasses to schemas/: checked at start-up, mismatches named precisely."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import pytest

from examples.payment_service import messages as pm
from service import AvroSerializer, ConfigurationError, SchemaCatalog, SchemaRegistry
from service.schemas import bind_record

ROOT = Path(__file__).resolve().parents[2]
CATALOG = SchemaCatalog(ROOT / "schemas")


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
