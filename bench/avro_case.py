"""The Avro case: ``payments.DoPayment`` records (Confluent wire format) into the dataclass.

raw: ``consume(1000)``, headers read, fastavro's ``schemaless_reader`` with the parsed schema
cached (passed as writer and reader schema: fastavro's fastest call), and the ``DoPayment``
(with its ``Money`` and ``PaymentMethod``) built from the record; the dispatcher: the
``AvroSerializer`` with ``DoPayment`` bound, a no-op consumer.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro

from bench.timing import dispatcher_rate, raw_rate
from examples.payment_service import messages as pm
from service import (
    AvroSerializer,
    Publisher,
    SchemaCatalog,
    SchemaRegistry,
    SerializerRegistry,
)
from service.backends.kafka import KafkaBackend

ROOT = Path(__file__).resolve().parents[1]


def serializers(registry_url: str) -> SerializerRegistry:
    avro = AvroSerializer(SchemaCatalog(ROOT / "schemas"), SchemaRegistry(registry_url))
    return SerializerRegistry(
        {"serializers": {"avro": avro}, "serializer_bindings": {pm.DoPayment: "avro"}}
    )


def publish(bootstrap: str, registry_url: str, topic: str, count: int) -> None:
    """``count`` DoPayment records (~150 bytes of Avro) over 64 keys."""
    backend = KafkaBackend(bootstrap, producer_config={"linger.ms": 20})
    publisher = Publisher(serializers(registry_url), backend)
    sample = next(m for m in pm.sample_messages() if isinstance(m, pm.DoPayment))
    for i in range(count):
        publisher.publish(topic, sample, key=f"k{i % 64}", message_id=uuid.uuid4().hex)
    backend.flush(120)


def decoder() -> Callable[[bytes], pm.DoPayment]:
    """The raw loop's decoding: fastavro with a cached schema, then the dataclass."""
    schema = SchemaCatalog(ROOT / "schemas")["payments.DoPayment"].parsed
    reader, money, method, payment = (
        fastavro.schemaless_reader,
        pm.Money,
        pm.PaymentMethod,
        pm.DoPayment,
    )

    def decode(value: bytes) -> pm.DoPayment:
        stream = io.BytesIO(value)
        stream.seek(5)  # magic byte + schema id
        # the schema as both writer and reader: measured ~2x faster than reader None
        record: dict[str, Any] = reader(stream, schema, schema)  # type: ignore[assignment]
        amount = record["amount"]
        return payment(
            record["payment_id"],
            record["order_id"],
            money(amount["amount"], amount["currency"]),
            method(record["method"]),
            record["merchant_reference"],
            record["requested_at"],
            record["metadata"],
            record["note"],
        )

    return decode


def raw_loop(bootstrap: str, topic: str, count: int) -> float:
    """The raw baseline for Avro: fastavro into ``DoPayment``, as :func:`decoder`."""
    return raw_rate(bootstrap, topic, count, decoder())


def dispatcher_loop(bootstrap: str, registry_url: str, topic: str, count: int) -> float:
    """The dispatcher with the AvroSerializer and a no-op consumer."""
    return dispatcher_rate(bootstrap, topic, count, serializers(registry_url))
