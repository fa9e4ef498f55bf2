"""The Avro case: raw ``consume(1000)`` + fastavro decode vs the dispatcher, same records."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import Consumer as RawConsumer

from bench.timing import dispatcher_rate
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
    schema = SchemaCatalog(ROOT / "schemas")["payments.DoPayment"].parsed
    consumer = RawConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen, started = 0, None
    while seen < count:
        for record in consumer.consume(1000, 1.0):
            if record.error() is not None:
                continue
            if started is None:
                started = time.perf_counter()
            record.headers()
            stream = io.BytesIO(record.value())  # type: ignore[arg-type]
            stream.seek(5)
            fastavro.schemaless_reader(stream, schema, None)
            seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return count / elapsed


def dispatcher_loop(bootstrap: str, registry_url: str, topic: str, count: int) -> float:
    """The dispatcher with the AvroSerializer and a no-op consumer."""
    return dispatcher_rate(bootstrap, topic, count, serializers(registry_url))
