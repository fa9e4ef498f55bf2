"""The record type of the JSON cases, shared by every contender.

Kept free of service imports: the Quix Streams baseline imports it from its own virtual
environment (Quix pins an older confluent-kafka than the service).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

MANIFEST = "bench.Order"


@dataclass(frozen=True, slots=True)
class Order:
    """~200 bytes of JSON: what every JSON contender decodes each value into."""

    __manifest__: ClassVar[str] = MANIFEST

    order_id: str
    amount: int
    currency: str
    note: str
