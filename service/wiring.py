"""Building the service's parts from a :class:`~service.config.ServiceConfig`."""

from __future__ import annotations

from pathlib import Path

from service.backends.kafka import KafkaBackend
from service.config.model import QueueConfig, ServiceConfig, reveal
from service.consumers import Consumer
from service.dedup.base import DeduplicationCache
from service.dedup.kafka import CompactedTopicCache
from service.dedup.memory import InMemoryCache
from service.dispatcher import MessageDispatcher
from service.errors import ConfigurationError
from service.retry import RetryPolicy
from service.schema_registry import SchemaRegistry
from service.schemas.catalog import SchemaCatalog
from service.serializers.avro import AvroSerializer
from service.serializers.json import JsonSerializer
from service.serializers.registry import SerializerRegistry

__all__ = [
    "build_backend",
    "build_cache",
    "build_dispatcher",
    "build_schema_registry",
    "build_serializers",
    "declare_queue",
]


def build_backend(config: ServiceConfig) -> KafkaBackend:
    """The Kafka backend, with every queue's binding declared (no topic is created)."""
    kafka = config.kafka
    backend = KafkaBackend(
        kafka.bootstrap_servers,
        client_config=reveal(kafka.client),
        consumer_config=reveal(kafka.consumer),
        producer_config=reveal(kafka.producer),
        partitions=kafka.partitions,
        replication_factor=kafka.replication_factor,
        startup_timeout=kafka.startup_timeout,
    )
    for queue in config.queues.values():
        declare_queue(backend, queue, create=False)
    return backend


def declare_queue(backend: KafkaBackend, queue: QueueConfig, create: bool) -> None:
    """Bind ``queue`` on ``backend``; with ``create``, create its missing topics too."""
    backend.declare_queue(
        queue.name,
        *queue.topics,
        dead_letter_topic=queue.dead_letter_topic,
        group_id=queue.group_id,
        create=create,
    )


def build_schema_registry(config: ServiceConfig) -> SchemaRegistry | None:
    """The schema registry client, if one is configured."""
    registry = config.registry
    if registry is None:
        return None
    auth = None
    if registry.username:
        auth = (registry.username, registry.password.reveal() if registry.password else "")
    return SchemaRegistry(registry.url, basic_auth=auth, ssl=reveal(registry.ssl))


def build_serializers(
    config: ServiceConfig, schema_registry: SchemaRegistry | None
) -> SerializerRegistry:
    """JSON (id 1) always, Avro (id 2) when a registry is configured; the message bindings."""
    serializers: dict[str, object] = {"json": JsonSerializer()}
    if config.registry is not None and schema_registry is not None:
        serializers["avro"] = AvroSerializer(
            SchemaCatalog(Path(config.registry.schemas)),
            schema_registry,
            subject_strategy=config.registry.subject_strategy,
            auto_register=config.registry.auto_register,
        )
    bindings: dict[type, str] = {dict: "json", **config.messages}
    return SerializerRegistry(
        {"serializers": serializers, "serializer_bindings": bindings}  # type: ignore[typeddict-item]
    )


def build_cache(
    backend: KafkaBackend, queue: QueueConfig, partitions: int
) -> DeduplicationCache | None:
    """The queue's deduplication store, or ``None``."""
    if queue.dedup.kind == "memory":
        return InMemoryCache(default_expire=queue.dedup.window)
    if queue.dedup.kind == "compacted":
        return CompactedTopicCache(
            backend, queue.dedup_topic, window=queue.dedup.window, partitions=partitions
        )
    return None


def build_dispatcher(
    config: ServiceConfig,
    queue: QueueConfig,
    backend: KafkaBackend,
    serializers: SerializerRegistry,
) -> MessageDispatcher:
    """The queue's dispatcher with its consumers attached.

    Raises:
        ConfigurationError: a consumer factory fails or returns something else.
    """
    retry = RetryPolicy(queue.retry.max_attempts, queue.retry.backoff_base, queue.retry.backoff_max)
    dispatcher = MessageDispatcher(
        serializers,
        cache=build_cache(backend, queue, config.kafka.partitions),
        backend=backend,
        always_ack=queue.always_ack,
        retry=retry,
        concurrency=queue.concurrency,
        ordering=queue.ordering,
        max_in_flight=queue.max_in_flight,
    )
    for index, (factory, path) in enumerate(
        zip(queue.consumers, queue.consumer_paths, strict=True)
    ):
        where = f"queues.{queue.name}.consumers[{index}]"
        try:
            consumer = factory()
        except Exception as exc:  # user code: report where, then stop
            raise ConfigurationError(
                f"{where}: {path!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(consumer, Consumer):
            raise ConfigurationError(
                f"{where}: {path!r} made a {type(consumer).__name__}, not a Consumer"
            )
        dispatcher.attach_consumer(consumer)
    return dispatcher
