"""Typed JSON, property-based: a wrong type anywhere is dead-lettered once, with its path.

Records mixing good messages and copies of a valid document with one field given a value of
a wrong JSON type are consumed by one ``consume_loop`` on the in-memory backend. Then:

* ``consume_loop`` returned (nothing crashes on bad input);
* each bad record is dead-lettered exactly once, with ``DeserializationError`` and a text
  naming the mutated field by its JSON path (``$.lines[1].price.currency: ...``);
* each good message was processed exactly once; nothing stays pending.

Once over a dataclass tree decoded by msgspec, once over a pydantic model.
"""

from __future__ import annotations

import copy
import datetime
import enum
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import (
    Consumer,
    InMemoryBackend,
    JsonSerializer,
    MessageDispatcher,
    Publisher,
    SerializerRegistry,
    ServiceError,
)

QUEUE = "typed-json"
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
Path = tuple[str | int, ...]


class Method(enum.Enum):
    CARD = "CARD"
    SEPA = "SEPA"


@dataclass(frozen=True)
class Money:
    value: Decimal
    currency: str


@dataclass(frozen=True)
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
    note: str | None = None
    attempt: int = 1


class Customer(pydantic.BaseModel):
    __manifest__: ClassVar[str] = "shop.Customer"

    customer_id: uuid.UUID
    name: str
    balance: Money
    tags: list[str]
    email: str | None = None


def payment(index: int) -> Payment:
    return Payment(
        payment_id=uuid.UUID(int=index + 1),
        amount=Money(Decimal("49.97"), "EUR"),
        method=Method.CARD,
        requested_at=datetime.datetime(2024, 5, 1, 12, 30, index % 60, tzinfo=datetime.UTC),
        lines=[Line("a", 1, Money(Decimal("1.10"), "EUR")), Line("b", 2, Money(Decimal(3), "X"))],
        note="n",
        attempt=2,
    )


def customer(index: int) -> Customer:
    return Customer(
        customer_id=uuid.UUID(int=index + 1),
        name=f"c{index}",
        balance=Money(Decimal("1.5"), "EUR"),
        tags=["a", "b"],
    )


# -- wrong values, per expected type -------------------------------------------------------
LISTS = st.lists(st.integers(), max_size=2)
OBJECTS = st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
NUMBERS = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
NOT_STR = NUMBERS | st.booleans() | st.none() | LISTS | OBJECTS
NOT_INT = (
    st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
    | LISTS
    | OBJECTS
)
NONSENSE = st.text(alphabet="xyz!? ", min_size=1, max_size=8)  # never a number, date or UUID


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _is_decimal(text: str) -> bool:
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True


WRONG: dict[str, st.SearchStrategy[Any]] = {
    "str": NOT_STR,
    "int": NOT_INT,
    "uuid": NOT_STR.filter(lambda v: v is not None) | st.text().filter(lambda t: not _is_uuid(t)),
    "decimal": st.booleans() | st.none() | LISTS | OBJECTS | NONSENSE,
    "datetime": NUMBERS | st.booleans() | st.none() | LISTS | OBJECTS | NONSENSE,
    "enum": st.text().filter(lambda t: t not in ("CARD", "SEPA")) | NUMBERS | st.none() | LISTS,
    "optional str": NUMBERS | st.booleans() | LISTS | OBJECTS,
    "list": NOT_STR.filter(lambda v: not isinstance(v, list)) | st.text(max_size=4),
    "object": NOT_STR.filter(lambda v: not isinstance(v, dict)) | st.text(max_size=4),
}
assert all(not _is_decimal(t) for t in ("x", "?", "z !"))

PAYMENT_LEAVES: list[tuple[Path, str]] = [
    (("payment_id",), "uuid"),
    (("amount",), "object"),
    (("amount", "value"), "decimal"),
    (("amount", "currency"), "str"),
    (("method",), "enum"),
    (("requested_at",), "datetime"),
    (("lines",), "list"),
    *(((("lines", i, "sku"), "str")) for i in (0, 1)),
    *(((("lines", i, "quantity"), "int")) for i in (0, 1)),
    *(((("lines", i, "price", "currency"), "str")) for i in (0, 1)),
    (("note",), "optional str"),
    (("attempt",), "int"),
]
# pydantic models are lax by default ("1" is an int): only the types it never converts
CUSTOMER_LEAVES: list[tuple[Path, str]] = [
    (("customer_id",), "uuid"),
    (("name",), "str"),
    (("balance", "currency"), "str"),
    (("tags", 0), "str"),
    (("tags", 1), "str"),
    (("email",), "optional str"),
]


def json_path(path: Path) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def mutated(document: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    node: Any = changed
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return changed


@dataclass(frozen=True)
class Wrong:
    path: Path
    value: Any


def records(leaves: list[tuple[Path, str]]) -> st.SearchStrategy[list[Wrong | None]]:
    """Lists of good messages (None) and documents with one wrong leaf."""
    wrong = st.sampled_from(leaves).flatmap(
        lambda leaf: WRONG[leaf[1]].map(lambda value: Wrong(leaf[0], value))
    )
    return st.lists(st.none() | wrong, min_size=1, max_size=15)


class Recorder(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []

    def process(self, message: Any, **kwargs: Any) -> None:
        self.seen.append((kwargs["message_id"], message))


def run(plan: list[Wrong | None], cls: type, build: Any) -> None:
    serializers = SerializerRegistry(
        {"serializers": {"json": JsonSerializer}, "serializer_bindings": {cls: "json"}}
    )
    backend = InMemoryBackend()
    backend.declare_topic(QUEUE, 2)
    publisher = Publisher(serializers, backend)
    manifest = cls.__manifest__
    document = json.loads(serializers.serialize(build(0))[0])
    expected_good: list[tuple[str, Any]] = []
    expected_bad: dict[bytes, str] = {}
    for index, item in enumerate(plan):
        key = f"k{index}".encode()
        if item is None:
            message = build(index)
            publisher.publish(QUEUE, message, key=key, message_id=f"good-{index}")
            expected_good.append((f"good-{index}", message))
            continue
        value = json.dumps(mutated(document, item.path, item.value)).encode()
        headers = (
            ("serializer_id", b"1"),
            ("manifest", manifest.encode()),
            ("message_id", f"bad-{index}".encode()),
        )
        backend.publish_raw(QUEUE, value, headers=headers, key=key)
        expected_bad[key] = json_path(item.path)

    recorder = Recorder()
    dispatcher = MessageDispatcher(serializers, backend=backend)
    dispatcher.attach_consumer(recorder)
    errors: list[Exception] = []
    dispatcher.consume_loop(QUEUE, on_exception=errors.append)  # must not raise

    assert Counter(map(repr, recorder.seen)) == Counter(map(repr, expected_good))
    assert backend.pending(QUEUE) == []
    letters = backend.dead_letters(QUEUE)
    assert sorted(letter.message.key or b"" for letter in letters) == sorted(expected_bad)
    for letter in letters:
        path = expected_bad[letter.message.key or b""]
        assert letter.reason.startswith(
            f"DeserializationError: JSON does not fit {cls.__qualname__}: {path}: "
        ), (path, letter.reason[:300])
    assert len(errors) == len(expected_bad)
    assert all(isinstance(error, ServiceError) for error in errors)


@SETTINGS
@given(plan=records(PAYMENT_LEAVES))
def test_a_wrong_type_in_a_dataclass_tree_is_dead_lettered_once_with_its_path(
    plan: list[Wrong | None],
) -> None:
    run(plan, Payment, payment)


@SETTINGS
@given(plan=records(CUSTOMER_LEAVES))
def test_a_wrong_type_in_a_pydantic_model_is_dead_lettered_once_with_its_path(
    plan: list[Wrong | None],
) -> None:
    run(plan, Customer, customer)
