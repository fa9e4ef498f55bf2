"""The Avro case: raw ``consume(1000)`` + fastavro decode vs the dispatcher, same records."""

from __future__ import annotations

import io
import uuid
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


def raw_loop(bootstrap: str, topic: str, count: int) -> float:
    """The raw baseline for Avro: fastavro decode of each value with a cached schema."""
    schema = SchemaCatalog(ROOT / "schemas")["payments.DoPayment"].parsed

    def decode(value: bytes) -> Any:
        stream = io.BytesIO(value)
        stream.seek(5)
        return fastavro.schemaless_reader(stream, schema, None)

    return raw_rate(bootstrap, topic, count, decode)


def dispatcher_loop(bootstrap: str, registry_url: str, topic: str, count: int) -> float:
    """The dispatcher with the AvroSerializer and a no-op consumer."""
    return dispatcher_rate(bootstrap, topic, count, serializers(registry_url))
