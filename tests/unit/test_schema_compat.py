from __future__ import annotations

import copy
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.read import SchemaResolutionError

from service import ConfigurationError
from service.schemas import breaking_changes

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas"
FIXTURES = ROOT / "tests" / "fixtures" / "schemas"
ALL_SCHEMAS = sorted([*SCHEMA_DIR.glob("*.avsc"), *FIXTURES.glob("*.avsc")])

MONEY: dict[str, Any] = {
    "type": "record",
    "name": "Money",
    "fields": [
        {
            "name": "amount",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
        },
        {"name": "currency", "type": "string"},
    ],
}
METHOD: dict[str, Any] = {"type": "enum", "name": "PaymentMethod", "symbols": ["CARD", "SEPA"]}


def load(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def record(*fields: dict[str, Any], name: str = "DoPayment", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "payments", "fields": [*fields], **extra}


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def one_field(type_: Any, **extra: Any) -> dict[str, Any]:
    """A record whose only field, ``value``, has type ``type_``."""
    return record(field("value", type_, **extra))


def changes(reader_type: Any, writer_type: Any) -> list[str]:
    return breaking_changes(one_field(reader_type), one_field(writer_type))


# --- identity and the evolution fixtures ------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_every_schema_is_compatible_with_itself(path: Path) -> None:
    schema = load(path)
    assert breaking_changes(schema, schema) == []


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.avsc")), ids=lambda p: p.name)
def test_fixtures_are_valid_avro(path: Path) -> None:
    parsed = fastavro.parse_schema(load(path))
    assert isinstance(parsed, dict)
    assert parsed["name"] == "payments.DoPayment"


def test_v2_adding_fields_with_defaults_is_backward_and_forward_compatible() -> None:
    v1, v2 = load(SCHEMA_DIR / "DoPayment.avsc"), load(FIXTURES / "DoPayment.v2.avsc")
    assert breaking_changes(v2, v1) == []  # BACKWARD: the v2 reader fills the defaults
    assert breaking_changes(v1, v2) == []  # FORWARD: the v1 reader skips the new fields


def test_incompatible_fixture_names_each_offending_field() -> None:
    v1, bad = load(SCHEMA_DIR / "DoPayment.avsc"), load(FIXTURES / "DoPayment.incompatible.avsc")
    assert breaking_changes(bad, v1) == [
        "payments.DoPayment.merchant_reference: type changed from string to int",
        "payments.DoPayment.risk_score: added without a default",
    ]
    # FORWARD: an old reader skips risk_score, but still cannot read an int as a string.
    assert breaking_changes(v1, bad) == [
        "payments.DoPayment.merchant_reference: type changed from int to string"
    ]


def roundtrip(record: dict[str, Any], writer: dict[str, Any], reader: dict[str, Any]) -> Any:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(writer), record)
    buffer.seek(0)
    return fastavro.schemaless_reader(
        buffer, fastavro.parse_schema(writer), fastavro.parse_schema(reader)
    )


def test_fastavro_schema_resolution_agrees_with_the_fixture_verdicts() -> None:
    v1, v2 = load(SCHEMA_DIR / "DoPayment.avsc"), load(FIXTURES / "DoPayment.v2.avsc")
    bad = load(FIXTURES / "DoPayment.incompatible.avsc")
    payment = {
        "payment_id": "0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b",
        "order_id": "6f1c2b8e-3d4a-4f5b-9c7d-1e2f3a4b5c6d",
        "amount": {"amount": Decimal("49.97"), "currency": "EUR"},
        "method": "SEPA",
        "merchant_reference": "INV-1",
        "requested_at": 1714566615123,
        "metadata": {},
        "note": None,
    }
    read = roundtrip(payment, writer=v1, reader=v2)
    assert (read["channel"], read["installments"]) == ("online", 1)
    v2_payment = {**payment, "channel": "app", "installments": 3}
    assert "channel" not in roundtrip(v2_payment, writer=v2, reader=v1)
    with pytest.raises(SchemaResolutionError):
        roundtrip(payment, writer=v1, reader=bad)


def test_inputs_are_not_modified() -> None:
    v1, bad = load(SCHEMA_DIR / "DoPayment.avsc"), load(FIXTURES / "DoPayment.incompatible.avsc")
    before = copy.deepcopy((v1, bad))
    breaking_changes(bad, v1)
    assert (v1, bad) == before


# --- fields ----------------------------------------------------------------------------------


def test_added_field_without_default_is_breaking() -> None:
    old = record(field("order_id", "string"))
    new = record(field("order_id", "string"), field("note", ["null", "string"]))
    assert breaking_changes(new, old) == ["payments.DoPayment.note: added without a default"]


@pytest.mark.parametrize(
    ("type_", "default"),
    [
        ("string", "web"),
        ("int", 1),
        ("double", 1),
        ("boolean", False),
        (["null", "string"], None),
        (["string", "null"], "x"),
        ({"type": "map", "values": "string"}, {}),
        ({"type": "array", "items": "int"}, [1, 2]),
        (METHOD, "CARD"),
        (MONEY, {"amount": "\u0000", "currency": "EUR"}),
    ],
)
def test_added_field_with_a_valid_default_is_compatible(type_: Any, default: Any) -> None:
    old = record(field("order_id", "string"))
    new = record(field("order_id", "string"), field("extra", type_, default=default))
    assert breaking_changes(new, old) == []


@pytest.mark.parametrize(
    ("type_", "default", "expected"),
    [
        (["null", "string"], "x", "which does not match the first branch of union[null, string]"),
        (["string", "null"], None, "which does not match the first branch of union[string, null]"),
        ("int", "one", "which does not match int"),
        ("int", True, "which does not match int"),
        ("boolean", 0, "which does not match boolean"),
        (METHOD, "WALLET", "which does not match payments.PaymentMethod"),
    ],
)
def test_added_field_with_a_default_of_the_wrong_type_is_breaking(
    type_: Any, default: Any, expected: str
) -> None:
    old = record(field("order_id", "string"))
    new = record(field("order_id", "string"), field("extra", type_, default=default))
    [problem] = breaking_changes(new, old)
    assert problem.startswith(f"payments.DoPayment.extra: added with default {default!r}")
    assert expected in problem


def test_removed_field_is_compatible_because_writer_extras_are_skipped() -> None:
    old = record(field("order_id", "string"), field("note", "string"))
    assert breaking_changes(record(field("order_id", "string")), old) == []


def test_changed_field_type_names_the_field() -> None:
    old = record(field("amount", "string"))
    new = record(field("amount", "int"))
    assert breaking_changes(new, old) == [
        "payments.DoPayment.amount: type changed from string to int"
    ]


def test_field_alias_reads_a_renamed_field() -> None:
    old = record(field("amount", "long"))
    renamed = record(field("total", "long"))
    aliased = record(field("total", "long", aliases=["amount"]))
    assert breaking_changes(renamed, old) == ["payments.DoPayment.total: added without a default"]
    assert breaking_changes(aliased, old) == []


# --- primitives and promotions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
        ("null", "null"),
        ("boolean", "boolean"),
        ({"type": "int"}, "int"),
    ],
)
def test_promotions_are_compatible(writer: str, reader: str) -> None:
    assert changes(reader, writer) == []


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        ("long", "int"),
        ("float", "int"),
        ("float", "long"),
        ("double", "float"),
        ("double", "long"),
        ("int", "string"),
        ("string", "int"),
        ("boolean", "int"),
        ("null", "string"),
        ("bytes", "int"),
    ],
)
def test_demotions_and_unrelated_primitives_are_breaking(writer: str, reader: str) -> None:
    assert changes(reader, writer) == [
        f"payments.DoPayment.value: type changed from {writer} to {reader}"
    ]


# --- records ---------------------------------------------------------------------------------


def order(city_type: str, record_name: str = "Address") -> dict[str, Any]:
    address = record(field("city", city_type), name=record_name)
    del address["namespace"]  # inherits payments from the enclosing record
    customer = record(field("address", address), name="Customer")
    return record(field("customer", customer), name="OrderResponse")


def test_nested_record_change_names_the_full_field_path() -> None:
    assert breaking_changes(order("int"), order("string")) == [
        "payments.OrderResponse.customer.address.city: type changed from string to int"
    ]
    assert breaking_changes(order("long"), order("int")) == []


def test_record_name_mismatch_is_breaking() -> None:
    assert breaking_changes(order("string", "Address"), order("string", "Location")) == [
        "payments.OrderResponse.customer.address: "
        "record name changed from payments.Location to payments.Address"
    ]
    top = breaking_changes(record(name="PaymentDone"), record(name="PaymentCompleted"))
    assert top == [
        "payments.PaymentDone: record name changed from payments.PaymentCompleted "
        "to payments.PaymentDone"
    ]


def test_record_alias_reads_a_renamed_record() -> None:
    reader = order("string", "Address")
    reader["fields"][0]["type"]["fields"][0]["type"]["aliases"] = ["Location"]
    assert breaking_changes(reader, order("string", "Location")) == []


def test_dotted_name_equals_name_plus_namespace() -> None:
    dotted = {"type": "record", "name": "payments.DoPayment", "fields": []}
    assert breaking_changes(record(), dotted) == []


def test_records_match_by_unqualified_name_as_avro_resolves_them() -> None:
    # Avro's resolution (its Java and Python checkers) matches the unqualified name: a record
    # moved to another namespace still reads the old data.
    other = {"type": "record", "name": "DoPayment", "namespace": "billing", "fields": []}
    assert breaking_changes(record(), other) == []
    assert breaking_changes(record(name="Payment"), other) == [
        "payments.Payment: record name changed from billing.DoPayment to payments.Payment"
    ]


def test_an_alias_may_be_a_full_name() -> None:
    reader = order("string", "Address")
    reader["fields"][0]["type"]["fields"][0]["type"]["aliases"] = ["payments.Location"]
    assert breaking_changes(reader, order("string", "Location")) == []
    reader["fields"][0]["type"]["fields"][0]["type"]["aliases"] = ["billing.Location"]
    assert breaking_changes(reader, order("string", "Location")) == [
        "payments.OrderResponse.customer.address: "
        "record name changed from payments.Location to payments.Address"
    ]


@pytest.mark.parametrize("reader_path", ALL_SCHEMAS, ids=lambda p: p.name)
@pytest.mark.parametrize("writer_path", ALL_SCHEMAS, ids=lambda p: p.name)
def test_the_verdict_is_apache_avros(reader_path: Path, writer_path: Path) -> None:
    reader, writer = load(reader_path), load(writer_path)
    verdict = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    compatible = verdict.compatibility is SchemaCompatibilityType.compatible
    assert (breaking_changes(reader, writer) == []) == compatible


def test_named_reference_is_resolved_and_checked_at_every_use() -> None:
    old = record(field("amount", MONEY), field("fee", "Money"))
    new_money = copy.deepcopy(MONEY)
    new_money["fields"].append(field("rate", "double"))
    new = record(field("amount", new_money), field("fee", "payments.Money"))
    assert breaking_changes(new, old) == [
        "payments.DoPayment.amount.rate: added without a default",
        "payments.DoPayment.fee.rate: added without a default",
    ]


def test_recursive_record_terminates() -> None:
    def node(value_type: str) -> dict[str, Any]:
        return record(
            field("value", value_type), field("next", ["null", "Node"], default=None), name="Node"
        )

    assert breaking_changes(node("long"), node("int")) == []
    assert breaking_changes(node("int"), node("string")) == [
        "payments.Node.value: type changed from string to int"
    ]


# --- enums and fixed -------------------------------------------------------------------------


def test_enum_symbol_removed_is_breaking() -> None:
    old = {**METHOD, "symbols": ["CARD", "SEPA", "WALLET"]}
    assert changes(METHOD, old) == [
        "payments.DoPayment.value: enum symbol(s) WALLET removed from payments.PaymentMethod, "
        "which has no default"
    ]


def test_enum_default_reads_unknown_symbols_and_added_symbols_are_compatible() -> None:
    old = {**METHOD, "symbols": ["CARD", "SEPA", "WALLET"]}
    assert changes({**METHOD, "default": "CARD"}, old) == []
    assert changes(old, METHOD) == []


def test_enum_name_change_is_breaking() -> None:
    assert changes({**METHOD, "name": "Method"}, METHOD) == [
        "payments.DoPayment.value: enum name changed from payments.PaymentMethod to payments.Method"
    ]


def test_fixed_size_and_name_must_match() -> None:
    fixed = {"type": "fixed", "name": "Hash", "size": 16}
    assert changes(fixed, fixed) == []
    assert changes({**fixed, "size": 32}, fixed) == [
        "payments.DoPayment.value: fixed size changed from 16 to 32"
    ]
    assert changes({**fixed, "name": "Digest"}, fixed) == [
        "payments.DoPayment.value: fixed name changed from payments.Hash to payments.Digest"
    ]


# --- arrays and maps ---------------------------------------------------------------------------


def test_array_items_are_resolved_recursively() -> None:
    def items(quantity: str) -> dict[str, Any]:
        line = record(field("quantity", quantity), name="LineItem")
        return {"type": "array", "items": line}

    assert changes(items("long"), items("int")) == []
    assert changes(items("int"), items("long")) == [
        "payments.DoPayment.value[].quantity: type changed from long to int"
    ]


def test_map_values_are_resolved_recursively() -> None:
    def values(type_: str) -> dict[str, Any]:
        return {"type": "map", "values": type_}

    assert changes(values("bytes"), values("string")) == []
    assert changes(values("int"), values("string")) == [
        "payments.DoPayment.value{}: type changed from string to int"
    ]


def test_array_and_map_are_different_types() -> None:
    assert changes({"type": "map", "values": "string"}, {"type": "array", "items": "string"}) == [
        "payments.DoPayment.value: type changed from array<string> to map<string>"
    ]


# --- unions ----------------------------------------------------------------------------------


def test_making_a_field_optional_is_compatible() -> None:
    assert changes(["null", "string"], "string") == []
    assert changes(["null", "long"], "int") == []  # through a promotion


def test_making_an_optional_field_required_is_breaking() -> None:
    assert changes("string", ["null", "string"]) == [
        "payments.DoPayment.value: union branch null not resolvable by string"
    ]


def test_every_writer_branch_must_resolve_in_the_reader_union() -> None:
    assert changes(["null", "long", "string"], ["null", "int"]) == []
    assert changes(["null", "int"], ["null", "string"]) == [
        "payments.DoPayment.value: union branch string not resolvable by union[null, int]"
    ]


def test_writer_type_absent_from_reader_union_is_breaking() -> None:
    assert changes(["null", "string"], "int") == [
        "payments.DoPayment.value: int not resolvable by union[null, string]"
    ]


def test_union_prefers_an_exact_branch_over_a_promotion() -> None:
    date = {"type": "int", "logicalType": "date"}
    timestamp = {"type": "long", "logicalType": "timestamp-millis"}
    assert changes([timestamp, date], date) == []
    assert changes([timestamp], date) == [
        "payments.DoPayment.value: logical type changed from date to timestamp-millis"
    ]


def test_records_inside_unions_are_resolved_recursively() -> None:
    new_money = copy.deepcopy(MONEY)
    new_money["fields"].append(field("rate", "double"))
    assert changes(["null", new_money], ["null", MONEY]) == [
        "payments.DoPayment.value.rate: added without a default"
    ]
    assert changes(["null", {**MONEY, "name": "Cash"}], ["null", MONEY]) == [
        "payments.DoPayment.value: union branch payments.Money not resolvable by "
        "union[null, payments.Cash]"
    ]


# --- logical types -----------------------------------------------------------------------------


def test_logical_type_must_match() -> None:
    uuid = {"type": "string", "logicalType": "uuid"}
    assert changes(uuid, uuid) == []
    assert changes("string", uuid) == [
        "payments.DoPayment.value: logical type changed from uuid to none"
    ]
    assert changes(uuid, "string") == [
        "payments.DoPayment.value: logical type changed from none to uuid"
    ]
    micros = {"type": "long", "logicalType": "timestamp-micros"}
    millis = {"type": "long", "logicalType": "timestamp-millis"}
    assert changes(micros, millis) == [
        "payments.DoPayment.value: logical type changed from timestamp-millis to timestamp-micros"
    ]


def test_logical_types_compare_their_underlying_type() -> None:
    assert changes("int", {"type": "string", "logicalType": "uuid"}) == [
        "payments.DoPayment.value: type changed from string (uuid) to int"
    ]


def test_decimal_precision_and_scale_must_match() -> None:
    def decimal(precision: int, scale: int) -> dict[str, Any]:
        return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}

    assert changes(decimal(12, 2), decimal(12, 2)) == []
    assert changes(decimal(12, 3), decimal(12, 2)) == [
        "payments.DoPayment.value: decimal precision/scale changed from 12/2 to 12/3"
    ]
    assert changes(decimal(14, 2), decimal(12, 2)) == [
        "payments.DoPayment.value: decimal precision/scale changed from 12/2 to 14/2"
    ]


# --- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "DoPayment", "fields": []},  # no type
        {"type": "record", "fields": []},  # no name
        {"type": "record", "name": "DoPayment"},  # no fields
        one_field("Undefined"),  # a reference to a type defined nowhere
        one_field({"type": "array"}),  # no items
        one_field(42),  # not a schema at all
    ],
)
def test_malformed_schema_is_a_configuration_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        breaking_changes(bad, record())
    with pytest.raises(ConfigurationError):
        breaking_changes(one_field("string"), bad)
