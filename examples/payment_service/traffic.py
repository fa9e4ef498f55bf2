"""Publish sample traffic for the demo: orders and payment commands, some above the limit.

Usage: python -m examples.payment_service.traffic [--count N] [-c service.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import uuid
from decimal import Decimal

from examples.payment_service.messages import DoPayment, Money, OrderResponse, sample_messages
from service import Publisher
from service.config import load_config
from service.wiring import build_backend, build_schema_registry, build_serializers


def main() -> None:
    """Publish ``--count`` payment commands (every 5th above the limit) and a few orders."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("SERVICE_CONFIG", "examples/payment_service/service.yaml"),
    )
    args = parser.parse_args()
    config = load_config(args.config)
    backend = build_backend(config)
    publisher = Publisher(build_serializers(config, build_schema_registry(config)), backend)
    order = next(m for m in sample_messages() if isinstance(m, OrderResponse))
    command = next(m for m in sample_messages() if isinstance(m, DoPayment))
    for i in range(args.count):
        amount = Decimal("1500.00") if i % 5 == 4 else Decimal(f"{10 + i % 90}.{i % 100:02d}")
        payment = dataclasses.replace(
            command,
            payment_id=uuid.uuid4(),
            amount=Money(amount, "EUR"),
            merchant_reference=f"INV-{i:05d}",
        )
        publisher.publish("payments", payment, key=str(payment.order_id))
        if i % 20 == 0:
            publisher.publish("payments", order, key=str(order.order_id))
    backend.flush()
    print(f"published {args.count} payment commands and {(args.count + 19) // 20} orders")


if __name__ == "__main__":
    main()
