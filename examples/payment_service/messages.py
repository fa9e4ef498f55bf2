"""The payment domain of ``schemas/*.avsc`` as dataclasses, field for field.

Each top-level class names its record in ``__manifest__``. Avro types map to Python as:
record -> dataclass, enum -> ``enum.Enum`` (member name = value = symbol), ``["null", T]`` ->
``T | None = None``, array -> ``list``, map -> ``dict[str, ...]``, timestamp-millis ->
tz-aware UTC ``datetime.datetime``, decimal -> ``decimal.Decimal``, uuid -> ``uuid.UUID``,
date -> ``datetime.date``. Fields are in schema order.
"""

from __future__ import annotations

import datetime
import enum
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

UTC = datetime.UTC


class PaymentMethod(enum.Enum):
    """``payments.PaymentMethod``."""

    CARD = "CARD"
    SEPA = "SEPA"
    WALLET = "WALLET"


class FailureReason(enum.Enum):
    """``payments.FailureReason``; its Avro default is ``UNKNOWN``."""

    UNKNOWN = "UNKNOWN"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    CARD_DECLINED = "CARD_DECLINED"
    FRAUD_SUSPECTED = "FRAUD_SUSPECTED"
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"


@dataclass(frozen=True)
class Money:
    """``payments.Money``: ``amount`` is decimal(12, 2)."""

    amount: Decimal
    currency: str


@dataclass(frozen=True)
class Address:
    """``payments.Address``."""

    line1: str
    city: str
    postal_code: str
    country: str
    line2: str | None = None


@dataclass(frozen=True)
class Customer:
    """``payments.Customer``."""

    customer_id: uuid.UUID
    name: str
    billing_address: Address
    email: str | None = None


@dataclass(frozen=True)
class LineItem:
    """``payments.LineItem``."""

    sku: str
    description: str
    quantity: int
    unit_price: Money


@dataclass(frozen=True)
class OrderResponse:
    """An order was accepted and awaits payment."""

    __manifest__: ClassVar[str] = "payments.OrderResponse"

    order_id: uuid.UUID
    customer: Customer
    items: list[LineItem]
    total: Money
    created_at: datetime.datetime
    metadata: dict[str, str]
    delivery_date: datetime.date | None = None


@dataclass(frozen=True)
class DoPayment:
    """A command: charge the customer for an order."""

    __manifest__: ClassVar[str] = "payments.DoPayment"

    payment_id: uuid.UUID
    order_id: uuid.UUID
    amount: Money
    method: PaymentMethod
    merchant_reference: str
    requested_at: datetime.datetime
    metadata: dict[str, str]
    note: str | None = None


@dataclass(frozen=True)
class PaymentCompleted:
    """An event: the payment of an order was captured."""

    __manifest__: ClassVar[str] = "payments.PaymentCompleted"

    payment_id: uuid.UUID
    order_id: uuid.UUID
    amount: Money
    method: PaymentMethod
    completed_at: datetime.datetime
    settlement_date: datetime.date
    fees: list[Money]
    metadata: dict[str, str]
    authorization_code: str | None = None


@dataclass(frozen=True)
class PaymentFailed:
    """An event: the payment of an order was refused or could not be attempted."""

    __manifest__: ClassVar[str] = "payments.PaymentFailed"

    payment_id: uuid.UUID
    order_id: uuid.UUID
    amount: Money
    reason: FailureReason
    failed_at: datetime.datetime
    metadata: dict[str, str]
    detail: str | None = None
    retry_after: datetime.datetime | None = None


MESSAGE_TYPES: tuple[type, ...] = (OrderResponse, DoPayment, PaymentCompleted, PaymentFailed)


def sample_messages() -> list[object]:
    """One fully populated instance of every top-level type, in ``MESSAGE_TYPES`` order.

    Decimals carry exactly the schema's scale (2) and timestamps whole milliseconds in UTC, so
    each sample survives an Avro round trip unchanged. Optional fields are set in some samples
    and left ``None`` in others.
    """
    order_id = uuid.UUID("6f1c2b8e-3d4a-4f5b-9c7d-1e2f3a4b5c6d")
    payment_id = uuid.UUID("0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b")
    price = Money(Decimal("19.99"), "EUR")
    total = Money(Decimal("49.97"), "EUR")
    return [
        OrderResponse(
            order_id=order_id,
            customer=Customer(
                customer_id=uuid.UUID("a3bb189e-8bf9-3888-9912-ace4e6543002"),
                name="Ada Lovelace",
                billing_address=Address(
                    line1="12 St James's Square",
                    city="London",
                    postal_code="SW1Y 4JH",
                    country="GB",
                    line2="Flat 3",
                ),
                email=None,
            ),
            items=[
                LineItem("SKU-001", "Analytical engine manual", 2, price),
                LineItem("SKU-002", "Punched cards (100)", 1, Money(Decimal("9.99"), "EUR")),
            ],
            total=total,
            created_at=datetime.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC),
            metadata={"source": "web", "campaign": "spring"},
            delivery_date=datetime.date(2024, 5, 6),
        ),
        DoPayment(
            payment_id=payment_id,
            order_id=order_id,
            amount=total,
            method=PaymentMethod.CARD,
            merchant_reference="INV-2024-0001",
            requested_at=datetime.datetime(2024, 5, 1, 12, 30, 16, 5000, tzinfo=UTC),
            metadata={},
            note="Leave at the door",
        ),
        PaymentCompleted(
            payment_id=payment_id,
            order_id=order_id,
            amount=total,
            method=PaymentMethod.WALLET,
            completed_at=datetime.datetime(2024, 5, 1, 12, 30, 18, 999000, tzinfo=UTC),
            settlement_date=datetime.date(2024, 5, 3),
            fees=[Money(Decimal("0.75"), "EUR"), Money(Decimal("0.10"), "EUR")],
            metadata={"provider": "acme-pay"},
            authorization_code=None,
        ),
        PaymentFailed(
            payment_id=uuid.UUID("5e4d3c2b-1a09-4f8e-b7d6-c5b4a3928170"),
            order_id=order_id,
            amount=Money(Decimal("9999999999.99"), "USD"),
            reason=FailureReason.INSUFFICIENT_FUNDS,
            failed_at=datetime.datetime(2024, 5, 2, 8, 0, 0, 1000, tzinfo=UTC),
            metadata={"provider": "acme-pay", "attempt": "2"},
            detail="card issuer declined: 51",
            retry_after=datetime.datetime(2024, 5, 2, 9, 0, tzinfo=UTC),
        ),
    ]
