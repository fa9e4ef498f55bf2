"""PaymentService: handles orders and payment commands, publishes what happened."""

from __future__ import annotations

import datetime
import logging
from decimal import Decimal

from examples.payment_service.messages import (
    DoPayment,
    FailureReason,
    OrderResponse,
    PaymentCompleted,
    PaymentFailed,
)
from service import Publisher

__all__ = ["EVENTS_TOPIC", "LIMIT", "PaymentService"]

logger = logging.getLogger(__name__)

EVENTS_TOPIC = "payment-events"
LIMIT = Decimal("1000.00")
"""Payments above this fail with INSUFFICIENT_FUNDS (the demo's stand-in for a bank)."""


class PaymentService:
    """Charges payments and publishes ``PaymentCompleted`` or ``PaymentFailed``."""

    def __init__(self, publisher: Publisher | None) -> None:
        self.publisher = publisher
        self.orders_seen = 0
        self.completed = 0
        self.failed = 0

    def process(self, order: OrderResponse) -> None:
        """Note an order."""
        self.orders_seen += 1
        logger.info("order %s for %s %s", order.order_id, order.total.amount, order.total.currency)

    def do_payment(self, command: DoPayment) -> None:
        """Charge ``command`` and publish the outcome, keyed by order."""
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        event: PaymentCompleted | PaymentFailed
        if command.amount.amount > LIMIT:
            self.failed += 1
            event = PaymentFailed(
                payment_id=command.payment_id,
                order_id=command.order_id,
                amount=command.amount,
                reason=FailureReason.INSUFFICIENT_FUNDS,
                failed_at=now,
                metadata=dict(command.metadata),
                detail=f"above the {LIMIT} limit",
            )
        else:
            self.completed += 1
            event = PaymentCompleted(
                payment_id=command.payment_id,
                order_id=command.order_id,
                amount=command.amount,
                method=command.method,
                completed_at=now,
                settlement_date=now.date() + datetime.timedelta(days=2),
                fees=[],
                metadata=dict(command.metadata),
            )
        if self.publisher is not None:
            self.publisher.publish(EVENTS_TOPIC, event, key=str(command.order_id))
