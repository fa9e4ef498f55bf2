"""Typed JSON: bound types decoded with field types checked and converted, errors with paths."""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Literal

import pydantic
import pydantic.dataclasses
import pytest

from service import (
    ConfigurationError,
    DeserializationError,
    JsonSerializer,
    SerializationError,
    SerializerRegistry,
    UnknownManifestError,
)
from service.serializers.typed import json_codec

PAYMENT_ID = "0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b"


class Method(enum.Enum):
    CARD = "CARD"
    SEPA = "SEPA"


@dataclass(frozen=True)
class Money:
    value: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int
    price: Money


@dataclass(frozen=True)
class Payment:
    __manifest__: ClassVar[str] = "shop.Payment"

    payment_id: uuid.UUID
    amount: Money
    method: Method
    requested_at: datetime.datetime
    lines: list[Line]
    tags: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    attempt: int = 1
    channel: Literal["web", "app"] = "web"


@dataclass
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("n must be positive")


class Customer(pydantic.BaseModel):
    customer_id: uuid.UUID
    name: str
    balance: Money
    email: str | None = None


@dataclass
class Order:
    """A dataclass holding a pydantic model: pydantic decodes the whole tree."""

    order_id: str
    customer: Customer


class Unsupported:
    pass


@dataclass
class HoldsUnsupported:
    thing: Unsupported


def payment_json(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "payment_id": PAYMENT_ID,
        "amount": {"value": "49.97", "currency": "EUR"},
        "method": "CARD",
        "requested_at": "2024-05-01T12:30:16.005Z",
        "lines": [{"sku": "a", "quantity": 2, "price": {"value": 1.10, "currency": "EUR"}}],
    }
    document.update(changes)
    return document


def serializer(*classes: type) -> JsonSerializer:
    json_serializer = JsonSerializer()
    for cls in classes:
        json_serializer.bind(cls)
    return json_serializer


def decode(cls: type, document: Any) -> Any:
    return json_codec(cls).decode(json.dumps(document).encode())


# -- each type ----------------------------------------------------------------------------
def test_a_payload_becomes_the_bound_type_with_every_field_converted() -> None:
    payment = serializer(Payment).deserialize(json.dumps(payment_json()).encode(), "shop.Payment")
    assert payment == Payment(
        payment_id=uuid.UUID(PAYMENT_ID),
        amount=Money(Decimal("49.97"), "EUR"),
        method=Method.CARD,
        requested_at=datetime.datetime(2024, 5, 1, 12, 30, 16, 5000, tzinfo=datetime.UTC),
        lines=[Line("a", 2, Money(Decimal("1.10"), "EUR"))],
    )
    assert type(payment.lines[0]) is Line and type(payment.lines[0].price) is Money
    assert payment.method is Method.CARD


def test_decimals_stay_exact_from_json_numbers_and_text() -> None:
    codec = json_codec(Money)
    exact = codec.decode(b'{"value": 0.1000000000000000000000000001, "currency": "X"}')
    assert exact.value == Decimal("0.1000000000000000000000000001")
    assert str(codec.decode(b'{"value": 12.10, "currency": "X"}').value) == "12.10"
    assert str(codec.decode(b'{"value": "12.10", "currency": "X"}').value) == "12.10"


def test_optional_fields_take_their_defaults_when_absent_and_none_when_null() -> None:
    absent = decode(Payment, payment_json())
    assert (absent.note, absent.attempt, absent.tags, absent.channel) == (None, 1, {}, "web")
    given = decode(Payment, payment_json(note=None, attempt=3, tags={"k": "v"}, channel="app"))
    assert (given.note, given.attempt, given.tags, given.channel) == (None, 3, {"k": "v"}, "app")


def test_fields_the_type_does_not_declare_are_ignored() -> None:
    assert decode(Payment, payment_json(added_later="x")) == decode(Payment, payment_json())


def test_pydantic_models_are_bound_types_too() -> None:
    document = {
        "customer_id": PAYMENT_ID,
        "name": "Ada",
        "balance": {"value": "1.5", "currency": "EUR"},
    }
    json_serializer = serializer(Customer, Order)
    customer = json_serializer.deserialize(json.dumps(document).encode(), "Customer")
    assert customer == Customer(
        customer_id=uuid.UUID(PAYMENT_ID), name="Ada", balance=Money(Decimal("1.5"), "EUR")
    )
    order = json_serializer.deserialize(
        json.dumps({"order_id": "o-1", "customer": document}).encode(), "Order"
    )
    assert order == Order("o-1", customer)
    assert json_codec(Customer).engine == json_codec(Order).engine == "pydantic"
    assert json_codec(Payment).engine == "msgspec"


def test_post_init_checks_refuse_a_payload() -> None:
    with pytest.raises(DeserializationError, match="n must be positive"):
        decode(Positive, {"n": 0})


# -- bad input, named by path ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (
            payment_json(amount={"value": "1", "currency": 5}),
            "$.amount.currency: expected str, got int",
        ),
        (payment_json(payment_id="nope"), "$.payment_id: invalid UUID"),
        (payment_json(amount={"value": "ten", "currency": "E"}), "$.amount.value: invalid decimal"),
        (payment_json(amount={"value": True, "currency": "E"}), "$.amount.value: expected decimal"),
        (payment_json(method="CHEQUE"), "$.method: invalid enum value 'CHEQUE'"),
        (payment_json(requested_at="yesterday"), "$.requested_at: invalid RFC3339"),
        (payment_json(requested_at=1714566616), "$.requested_at: expected datetime, got int"),
        (payment_json(lines=[{"sku": 1}]), "$.lines[0].sku: expected str, got int"),
        (payment_json(lines=[{"sku": "a", "quantity": 1}]), "$.lines[0].price: required field"),
        (payment_json(lines="a"), "$.lines: expected array, got str"),
        (payment_json(attempt="3"), "$.attempt: expected int, got str"),
        (payment_json(attempt=1.5), "$.attempt: expected int, got float"),
        (payment_json(note=5), "$.note: expected str | null, got int"),
        (payment_json(channel="fax"), "$.channel: invalid enum value 'fax'"),
        (payment_json(tags={"k": 1}), "$.tags[...]: expected str, got int"),
        (payment_json(amount=None), "$.amount: expected object, got null"),
        ({"payment_id": PAYMENT_ID}, "$.amount: required field missing"),
        ([1, 2], "$: expected object, got array"),
    ],
)
def test_a_payload_that_does_not_fit_names_the_field_path(document: Any, problem: str) -> None:
    with pytest.raises(DeserializationError) as caught:
        serializer(Payment).deserialize(json.dumps(document).encode(), "shop.Payment")
    assert problem in str(caught.value)
    assert str(caught.value).startswith("JSON does not fit Payment: ")


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (
            {"customer_id": PAYMENT_ID, "name": 5, "balance": {"value": 1, "currency": "E"}},
            "$.name: input should be a valid string, got int",
        ),
        (
            {"customer_id": PAYMENT_ID, "name": "A", "balance": {"value": 1, "currency": 2}},
            "$.balance.currency: input should be a valid string, got int",
        ),
        ({"customer_id": PAYMENT_ID, "name": "A"}, "$.balance: required field missing"),
    ],
)
def test_pydantic_problems_are_named_the_same_way(document: Any, problem: str) -> None:
    with pytest.raises(DeserializationError, match="JSON does not fit Customer") as caught:
        decode(Customer, document)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    "payload", [b"\xff\xfe", b"{not json", b"", b'{"payment_id": "0b9e', b'{"a": 1,}']
)
@pytest.mark.parametrize("cls", [Payment, Customer])
def test_bytes_that_are_not_json_are_deserialization_errors(payload: bytes, cls: type) -> None:
    with pytest.raises(DeserializationError, match="not valid JSON"):
        json_codec(cls).decode(payload)


def test_dict_manifest_needs_a_json_object() -> None:
    assert JsonSerializer().deserialize(b'{"a": [1, null]}', "dict") == {"a": [1, None]}
    with pytest.raises(DeserializationError, match="not a JSON object"):
        JsonSerializer().deserialize(b"[1]", "dict")
    with pytest.raises(DeserializationError, match="not valid JSON"):
        JsonSerializer().deserialize(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None)


# -- encoding -----------------------------------------------------------------------------
def test_encoding_writes_what_decoding_reads() -> None:
    payment = decode(Payment, payment_json(note="n"))
    json_serializer = serializer(Payment)
    encoded = json_serializer.serialize(payment)
    assert json.loads(encoded)["amount"] == {"value": "49.97", "currency": "EUR"}
    assert json.loads(encoded)["payment_id"] == PAYMENT_ID
    assert json.loads(encoded)["method"] == "CARD"
    assert json.loads(encoded)["requested_at"] == "2024-05-01T12:30:16.005000Z"
    assert json_serializer.deserialize(encoded, json_serializer.manifest(payment)) == payment
    built = Payment(
        uuid.UUID(PAYMENT_ID),
        Money(Decimal(1), "E"),
        Method.SEPA,
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        [],
    )
    assert json.loads(json_serializer.serialize(built))["attempt"] == 1
    assert json_serializer.deserialize(json_serializer.serialize(built), "shop.Payment") == built


def test_pydantic_models_encode_by_alias_and_round_trip() -> None:
    class Aliased(pydantic.BaseModel):
        order_id: str = pydantic.Field(alias="orderId")

    json_serializer = serializer(Aliased)
    encoded = json_serializer.serialize(Aliased(orderId="o-1"))
    assert json.loads(encoded) == {"orderId": "o-1"}
    assert json_serializer.deserialize(encoded, "Aliased") == Aliased(orderId="o-1")


def test_values_without_a_json_form_are_serialization_errors() -> None:
    with pytest.raises(SerializationError, match="cannot encode"):
        JsonSerializer().serialize({"x": object()})
    with pytest.raises(SerializationError, match="not int"):
        JsonSerializer().serialize(5)


# -- binding ------------------------------------------------------------------------------
def test_header_less_json_decodes_with_the_configured_types_manifest() -> None:
    registry = SerializerRegistry(
        {"serializers": {"json": JsonSerializer}, "serializer_bindings": {Payment: "json"}}
    )
    value = json.dumps(payment_json()).encode()
    assert registry.sniff(value) is None  # JSON is never sniffed: it needs the queue's setting
    decoded = registry.deserialize_with_serializerid(value, 1, "shop.Payment")
    assert isinstance(decoded, Payment)


def test_binding_refuses_types_json_cannot_build() -> None:
    with pytest.raises(ConfigurationError, match="only bind dataclasses, pydantic models"):
        JsonSerializer().bind(int)
    with pytest.raises(ConfigurationError, match="Unsupported cannot be decoded from JSON"):
        JsonSerializer().bind(HoldsUnsupported)


def test_unbound_manifests_are_unknown() -> None:
    with pytest.raises(UnknownManifestError, match=r"'shop\.Payment'"):
        JsonSerializer().deserialize(b"{}", "shop.Payment")


@pydantic.dataclasses.dataclass
class Checked:
    n: int

    @pydantic.field_validator("n")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("n must be positive")
        return value


@dataclass
class HoldsChecked:
    checked: list[Checked]


def test_pydantic_dataclasses_run_their_validators_even_inside_a_plain_dataclass() -> None:
    assert json_codec(Checked).engine == json_codec(HoldsChecked).engine == "pydantic"
    assert decode(HoldsChecked, {"checked": [{"n": 1}]}) == HoldsChecked([Checked(1)])
    with pytest.raises(DeserializationError, match=r"\$\.checked\[0\]\.n: value error"):
        decode(HoldsChecked, {"checked": [{"n": 0}]})


@dataclass
class Picky:
    n: int

    def __post_init__(self) -> None:
        if self.n == 13:
            raise LookupError("13 is unlucky")


def test_any_exception_of_the_types_own_checks_is_a_deserialization_error() -> None:
    with pytest.raises(DeserializationError, match="raised LookupError: 13 is unlucky"):
        decode(Picky, {"n": 13})
