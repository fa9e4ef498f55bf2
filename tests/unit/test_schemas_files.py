from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import inspect
import io
import json
import types
import typing
import uuid
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema
import pytest

from examples.payment_service import messages as payment_messages
from examples.payment_service.messages import MESSAGE_TYPES, sample_messages

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.avsc"))
TOP_LEVEL = [
    cls
    for _, cls in inspect.getmembers(payment_messages, inspect.isclass)
    if dataclasses.is_dataclass(cls) and "__manifest__" in vars(cls)
]
# The Python type of each Avro primitive and of each logical type, as fastavro reads them.
PRIMITIVE_TYPES: dict[str, type] = {
    "string": str,
    "int": int,
    "long": int,
    "boolean": bool,
    "float": float,
    "double": float,
    "bytes": bytes,
}
LOGICAL_TYPES: dict[str, type] = {
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
    "timestamp-millis": datetime.datetime,
    "date": datetime.date,
}


def load_json(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def parsed_schema(manifest: str) -> dict[str, Any]:
    path = SCHEMA_DIR / f"{manifest.rpartition('.')[2]}.avsc"
    parsed = fastavro.parse_schema(load_json(path))
    assert isinstance(parsed, dict)
    return parsed


def to_avro(value: Any) -> Any:
    """A dataclass instance as the dict fastavro writes: enums as their value, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_avro(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [to_avro(item) for item in value]
    if isinstance(value, dict):
        return {key: to_avro(item) for key, item in value.items()}
    return value


def named_types(schema: Any, found: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Every named type defined in a parsed schema, by full name."""
    if isinstance(schema, list):
        for branch in schema:
            named_types(branch, found)
    elif isinstance(schema, dict):
        if schema["type"] in ("record", "enum", "fixed"):
            found.setdefault(schema["name"], []).append(schema)
        for f in schema.get("fields", []):
            named_types(f["type"], found)
        for key in ("items", "values"):
            if key in schema:
                named_types(schema[key], found)
    return found


# --- the files ---------------------------------------------------------------------------------


def test_there_is_one_schema_file_per_message_type() -> None:
    assert {p.stem for p in SCHEMA_FILES} == {cls.__name__ for cls in MESSAGE_TYPES}
    assert set(TOP_LEVEL) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_file_parses_and_its_full_name_matches_the_file_name(path: Path) -> None:
    parsed = fastavro.parse_schema(load_json(path))
    loaded = fastavro.schema.load_schema(str(path))
    assert isinstance(parsed, dict) and isinstance(loaded, dict)
    assert parsed["type"] == "record"
    assert parsed["name"] == loaded["name"] == f"payments.{path.stem}"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_logical_types_sit_on_the_type_not_on_the_field(path: Path) -> None:
    # fastavro silently ignores {"name": ..., "type": "int", "logicalType": "date"}.
    for definitions in named_types(load_json(path), {}).values():
        for definition in definitions:
            for f in definition.get("fields", []):
                assert "logicalType" not in f, f"{path.name}: field {f['name']}"


def test_a_named_type_defined_in_several_files_is_defined_identically() -> None:
    definitions: dict[str, list[Any]] = {}
    for path in SCHEMA_FILES:
        named_types(fastavro.parse_schema(load_json(path)), definitions)
    assert len(definitions["payments.Money"]) == len(SCHEMA_FILES)  # Money is everywhere
    for name, found in definitions.items():
        assert all(d == found[0] for d in found), name


# --- the dataclasses mirror the schemas --------------------------------------------------------


def assert_mirrors(hint: Any, schema: Any, names: dict[str, Any], where: str) -> None:
    """``hint`` (a resolved annotation) is the Python type of Avro ``schema``."""
    if isinstance(schema, str):
        if schema in PRIMITIVE_TYPES:
            assert hint is PRIMITIVE_TYPES[schema], where
            return
        schema = names[schema]
    if isinstance(schema, list):
        assert schema[0] == "null" and len(schema) == 2, f"{where}: only [null, T] unions"
        assert typing.get_origin(hint) in (typing.Union, types.UnionType), where
        [inner] = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        assert_mirrors(inner, schema[1], names, where)
    elif "logicalType" in schema:
        assert hint is LOGICAL_TYPES[schema["logicalType"]], where
    elif schema["type"] in PRIMITIVE_TYPES:
        assert_mirrors(hint, schema["type"], names, where)
    elif schema["type"] == "array":
        assert typing.get_origin(hint) is list, where
        assert_mirrors(typing.get_args(hint)[0], schema["items"], names, f"{where}[]")
    elif schema["type"] == "map":
        assert typing.get_origin(hint) is dict, where
        key, value = typing.get_args(hint)
        assert key is str, where
        assert_mirrors(value, schema["values"], names, f"{where}{{}}")
    elif schema["type"] == "enum":
        assert issubclass(hint, enum.Enum), where
        assert hint.__name__ == schema["name"].rpartition(".")[2], where
        assert [m.name for m in hint] == schema["symbols"], where
        assert all(m.value == m.name for m in hint), where
    else:
        assert schema["type"] == "record", where
        assert_record_mirrors(hint, schema, names)


def assert_record_mirrors(cls: type, schema: dict[str, Any], names: dict[str, Any]) -> None:
    name = schema["name"]
    assert dataclasses.is_dataclass(cls), name
    assert cls.__name__ == name.rpartition(".")[2]
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields] == [f["name"] for f in schema["fields"]], name
    hints = typing.get_type_hints(cls)
    for f, avro_field in zip(fields, schema["fields"], strict=True):
        where = f"{name}.{f.name}"
        assert_mirrors(hints[f.name], avro_field["type"], names, where)
        if "default" in avro_field:
            assert f.default == avro_field["default"], where
        else:
            assert f.default is dataclasses.MISSING, where
            assert f.default_factory is dataclasses.MISSING, where


@pytest.mark.parametrize("cls", TOP_LEVEL, ids=lambda cls: cls.__name__)
def test_dataclass_mirrors_its_schema(cls: type) -> None:
    manifest = vars(cls)["__manifest__"]
    assert manifest == f"payments.{cls.__name__}"
    assert (SCHEMA_DIR / f"{cls.__name__}.avsc").is_file()
    schema = parsed_schema(manifest)
    assert schema["name"] == manifest
    assert_record_mirrors(cls, schema, schema["__named_schemas"])


# --- the samples round-trip --------------------------------------------------------------------


def test_samples_cover_every_type_once_with_optional_fields_set_and_unset() -> None:
    samples = sample_messages()
    assert [type(s) for s in samples] == list(MESSAGE_TYPES)
    optional: list[object] = []
    for sample in samples:
        assert dataclasses.is_dataclass(sample) and not isinstance(sample, type)
        optional += [
            getattr(sample, f.name) for f in dataclasses.fields(sample) if f.default is None
        ]
    assert None in optional
    assert any(value is not None for value in optional)


def assert_same(read: Any, written: Any, where: str) -> None:
    """Equal, of the very same types, and for logical types the exact representation."""
    assert type(read) is type(written), f"{where}: {type(read)} != {type(written)}"
    if isinstance(written, dict):
        assert read.keys() == written.keys(), where
        for key in written:
            assert_same(read[key], written[key], f"{where}.{key}")
    elif isinstance(written, list):
        assert len(read) == len(written), where
        for i, (r, w) in enumerate(zip(read, written, strict=True)):
            assert_same(r, w, f"{where}[{i}]")
    else:
        assert read == written, where
    if isinstance(written, decimal.Decimal):
        assert read.as_tuple() == written.as_tuple(), where  # same digits and scale
        assert read.as_tuple().exponent == -2, where
    if isinstance(written, datetime.datetime):
        assert read.tzinfo is datetime.UTC, where


@pytest.mark.parametrize("sample", sample_messages(), ids=lambda s: type(s).__name__)
def test_sample_round_trips_exactly(sample: object) -> None:
    schema = parsed_schema(vars(type(sample))["__manifest__"])
    written = to_avro(sample)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, written)
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, schema, None)
    assert buffer.read() == b""
    assert read == written
    assert_same(read, written, type(sample).__name__)


def test_fastavro_reads_logical_types_as_python_objects() -> None:
    schema = parsed_schema("payments.PaymentCompleted")
    sample = next(s for s in sample_messages() if type(s).__name__ == "PaymentCompleted")
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, to_avro(sample))
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, schema, None)
    assert isinstance(read, dict)
    assert isinstance(read["payment_id"], uuid.UUID)
    assert isinstance(read["amount"]["amount"], decimal.Decimal)
    assert read["amount"]["amount"] == decimal.Decimal("49.97")
    assert isinstance(read["completed_at"], datetime.datetime)
    assert read["completed_at"].tzinfo is datetime.UTC
    assert type(read["settlement_date"]) is datetime.date
    assert read["authorization_code"] is None


def test_fastavro_pads_decimals_to_the_schema_scale_and_rejects_a_finer_one() -> None:
    # A coarser decimal is accepted and read back at the schema's scale: equal, not identical.
    schema = fastavro.parse_schema(
        {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}
    )
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, decimal.Decimal("10.5"))
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, schema, None)
    assert read == decimal.Decimal("10.5")
    assert str(read) == "10.50"
    with pytest.raises(ValueError, match=r"[Ss]cale"):
        fastavro.schemaless_writer(io.BytesIO(), schema, decimal.Decimal("10.555"))
    with pytest.raises(ValueError, match="precision"):
        fastavro.schemaless_writer(io.BytesIO(), schema, decimal.Decimal("12345678901.00"))


def test_fastavro_truncates_timestamps_to_milliseconds() -> None:
    schema = fastavro.parse_schema({"type": "long", "logicalType": "timestamp-millis"})
    buffer = io.BytesIO()
    moment = datetime.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
    fastavro.schemaless_writer(buffer, schema, moment)
    buffer.seek(0)
    assert fastavro.schemaless_reader(buffer, schema, None) == moment.replace(microsecond=123000)
