"""The seed's two PaymentConsumer variants, and the factory the config names."""

from __future__ import annotations

import os
from typing import Any

from examples.payment_service.messages import DoPayment, OrderResponse
from examples.payment_service.service import PaymentService
from service import Consumer, Publisher, SingleDispatchConsumer, consumer
from service.config import load_config
from service.wiring import build_backend, build_schema_registry, build_serializers

__all__ = ["DraftPaymentConsumer", "PaymentConsumer", "make_payment_consumer"]


class DraftPaymentConsumer(Consumer):
    """``Consumer`` with ``process`` and ``accepts`` (the seed's consumer_draft.py)."""

    def __init__(self, payment_service: PaymentService) -> None:
        super().__init__()
        self.payment_service = payment_service

    def process(self, message: Any, **kwargs: Any) -> None:
        """Route by type."""
        if isinstance(message, OrderResponse):
            self.payment_service.process(message)
        elif isinstance(message, DoPayment):
            self.payment_service.do_payment(message)

    def accepts(self, manifest: str) -> bool:
        """Orders and payment commands."""
        return manifest in ["payments.OrderResponse", "payments.DoPayment"]


class PaymentConsumer(SingleDispatchConsumer):
    """``SingleDispatchConsumer`` with one method per message class (the seed's consumer.py)."""

    def __init__(self, payment_service: PaymentService) -> None:
        super().__init__()
        self.payment_service = payment_service

    @consumer
    def consume_order_response(self, event: OrderResponse) -> None:
        """Note the order."""
        self.payment_service.process(event)

    @consumer
    def consume_do_payment(self, command: DoPayment) -> None:
        """Charge the payment."""
        self.payment_service.do_payment(command)


def make_payment_consumer() -> PaymentConsumer:
    """The consumer ``service.yaml`` names: it publishes events with the same config."""
    config = load_config(os.environ.get("SERVICE_CONFIG", "examples/payment_service/service.yaml"))
    publisher = Publisher(
        build_serializers(config, build_schema_registry(config)), build_backend(config)
    )
    return PaymentConsumer(PaymentService(publisher))
