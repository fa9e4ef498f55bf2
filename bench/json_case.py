"""The JSON case: ~200-byte JSON records decoded into :class:`bench.records.Order`.

Every contender reads the headers and decodes each value into the same frozen dataclass:

* raw: confluent-kafka ``consume(1000)`` and msgspec's typed decoder (the fastest way we
  know to get a checked ``Order`` out of JSON bytes; ``Order(**json.loads(v))`` is slower);
* the dispatcher: ``JsonSerializer`` with ``Order`` bound, a no-op consumer;
* Quix Streams (:mod:`bench.quix_case`): its JSON deserializer, then ``Order(**value)``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
from confluent_kafka import Producer

from bench.records import MANIFEST, Order
from bench.timing import dispatcher_rate, raw_rate
from service import JsonSerializer, SerializerRegistry

KEYS = 64


def serializers() -> SerializerRegistry:
    return SerializerRegistry(
        {"serializers": {"json": JsonSerializer}, "serializer_bindings": {Order: "json"}}
    )


def publish(bootstrap: str, topic: str, count: int) -> None:
    """``count`` JSON ``Order`` records (~200 bytes) over ``KEYS`` keys, with routing headers."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    body: dict[str, Any] = {"order_id": "", "amount": 0, "currency": "EUR", "note": "x" * 120}
    for i in range(count):
        body["order_id"], body["amount"] = f"order-{i:08d}", i
        headers = [
            ("serializer_id", b"1"),
            ("manifest", MANIFEST.encode()),
            ("message_id", uuid.uuid4().hex.encode()),
        ]
        while True:
            try:
                producer.produce(topic, json.dumps(body).encode(), f"k{i % KEYS}", headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise SystemExit("publishing did not complete")


def raw_loop(bootstrap: str, topic: str, count: int, config: dict[str, Any] | None = None) -> float:
    """The raw baseline: msgspec's typed decoder into ``Order`` (``config`` overrides
    :data:`bench.settings.RAW_CONSUMER`)."""
    return raw_rate(bootstrap, topic, count, msgspec.json.Decoder(Order).decode, config)


def dispatcher_loop(
    bootstrap: str, topic: str, count: int, consumer_config: dict[str, Any] | None = None
) -> float:
    """The dispatcher with ``Order`` bound to the JsonSerializer and a no-op consumer."""
    return dispatcher_rate(bootstrap, topic, count, serializers(), consumer_config=consumer_config)
