"""The seed's payment domain, as plain dataclasses for unit tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service import (
    Consumer,
    InMemoryBackend,
    JsonSerializer,
    Publisher,
    SerializerRegistry,
    SingleDispatchConsumer,
    consumer,
)


@dataclass
class OrderResponse:
    order_id: str
    amount: int


@dataclass
class DoPayment:
    order_id: str
    amount: int


@dataclass
class ExpressPayment(DoPayment):
    """A subclass: dispatch resolves it through the MRO to DoPayment's handler."""

    __manifest__ = "payments.ExpressPayment"


class PaymentService:
    """Records what it was asked to do."""

    def __init__(self) -> None:
        self.processed: list[OrderResponse] = []
        self.payments: list[DoPayment] = []

    def process(self, message: OrderResponse) -> None:
        self.processed.append(message)

    def do_payment(self, message: DoPayment) -> None:
        self.payments.append(message)


class DraftPaymentConsumer(Consumer):
    """The seed's examples/payment_service/consumer_draft.py."""

    def __init__(self, payment_service: PaymentService):
        super().__init__()
        self.payment_service = payment_service

    def process(self, message: Any, **kwargs: Any) -> None:
        if isinstance(message, OrderResponse):
            self.payment_service.process(message)
        elif isinstance(message, DoPayment):
            self.payment_service.do_payment(message)

    def accepts(self, manifest: str | None) -> bool:
        return manifest in ["OrderResponse", "DoPayment"]


class PaymentConsumer(SingleDispatchConsumer):
    """The seed's examples/payment_service/consumer.py."""

    def __init__(self, payment_service: PaymentService):
        super().__init__()
        self.payment_service = payment_service

    @consumer
    def consume_order_response(self, event: OrderResponse) -> None:
        self.payment_service.process(event)

    @consumer
    def consume_do_payment(self, command: DoPayment) -> None:
        self.payment_service.do_payment(command)


def json_registry() -> SerializerRegistry:
    return SerializerRegistry(
        {
            "serializers": {"json": JsonSerializer},
            "serializer_bindings": {
                OrderResponse: "json",
                DoPayment: "json",
                ExpressPayment: "json",
                dict: "json",
            },
        }
    )


def publisher(backend: InMemoryBackend) -> Publisher:
    return Publisher(json_registry(), backend=backend)
