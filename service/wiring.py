"""Building the service's parts from a :class:`~service.config.ServiceConfig`."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from service.backends.kafka import KafkaBackend
from service.backends.kafka.backend import ExactlyOnce
from service.backends.kafka.dedup import CompactedTopicCache
from service.config.model import QueueConfig, ServiceConfig, reveal
from service.consumers import Consumer, manifest_of
from service.dedup.base import DeduplicationCache
from service.dedup.memory import InMemoryCache
from service.dispatch.flood import DeadLetterLimit
from service.dispatch.retry import RetryPolicy
from service.dispatch.routing import RoutingRules
from service.dispatcher import MessageDispatcher
from service.errors import ConfigurationError
from service.schema_registry import SchemaRegistry
from service.schemas.catalog import SchemaCatalog
from service.serializers.avro import AvroSerializer
from service.serializers.json import JsonSerializer
from service.serializers.keys import key_decoder
from service.serializers.registry import SerializerRegistry

__all__ = [
    "MEMBER_INDEX_ENV",
    "build_backend",
    "build_cache",
    "build_consumers",
    "build_dispatcher",
    "build_routing",
    "build_schema_registry",
    "build_serializers",
    "declare_queue",
    "exactly_once",
]

MEMBER_INDEX_ENV = "KAFKA_DISPATCH_MEMBER_INDEX"
"""The environment variable holding a child's index under ``run --processes`` (else 0)."""


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
        exactly_once=exactly_once(queue),
    )


def exactly_once(queue: QueueConfig) -> ExactlyOnce | None:
    """The queue's transactions (None when at-least-once).

    The default transactional id is stable per member and unique among live ones:
    ``<group>.<queue>.<hostname>.<process index>`` (the index of ``run --processes``).
    """
    if queue.processing != "exactly_once":
        return None
    settings = queue.transaction
    transactional_id = settings.transactional_id or ".".join(
        (queue.group_id, queue.name, socket.gethostname(), os.environ.get(MEMBER_INDEX_ENV, "0"))
    )
    return ExactlyOnce(
        transactional_id,
        interval=settings.interval,
        max_messages=settings.max_messages,
        timeout=settings.timeout,
        transaction_timeout=settings.transaction_timeout,
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
            topic_strategies={
                topic: queue.subject_strategy
                for queue in config.queues.values()
                if queue.subject_strategy is not None
                for topic in queue.topics
            },
            type_strategies={
                manifest_of(ref.target): strategy
                for ref, strategy in config.registry.subject_strategies.items()
            },
            auto_register=config.registry.auto_register,
        )
    bindings: dict[type, str] = {dict: "json", **config.messages}
    for queue in config.queues.values():  # the types of records without routing headers
        if queue.headerless is not None:
            serializer, cls = queue.headerless
            bindings.setdefault(cls, serializer)
        for cls in queue.type_ids.values():
            bindings.setdefault(cls, queue.headerless[0] if queue.headerless else "json")
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
        # as many partitions as the input has: entries live in the input's partition number
        needed = CompactedTopicCache.input_partitions(backend, queue.topics, default=partitions)
        return CompactedTopicCache(
            backend, queue.dedup_topic, window=queue.dedup.window, partitions=needed
        )
    return None


def build_routing(queue: QueueConfig, serializers: SerializerRegistry) -> RoutingRules:
    """How ``queue`` routes records of other producers and chooses message ids.

    Raises:
        ConfigurationError: the header-less serializer is not configured, or the
            ``field:<name>`` message-id rule names a field that a class of the queue (its
            header-less type or a ``type_ids`` class) does not declare: those messages
            could never carry an id and would all fall back to their offset id.
    """
    _check_message_id_field(queue)
    headerless = None
    if queue.headerless is not None:
        name, cls = queue.headerless
        serializer = serializers.named(name, f"queues.{queue.name}.headerless.serializer")
        headerless = (serializer.identifier(), manifest_of(cls))
    return RoutingRules(
        headerless=headerless,
        message_id=queue.message_id,
        type_ids={type_id: manifest_of(cls) for type_id, cls in queue.type_ids.items()},
        sniff=serializers.sniff,
    )


def _check_message_id_field(queue: QueueConfig) -> None:
    """Refuse ``field:<name>`` when a payload class the queue names lacks that field.

    Mapping payloads (``dict``) are not checked: their fields are known only at run time,
    where a missing one falls back to the offset id.
    """
    if not queue.message_id.startswith("field:"):
        return
    name = queue.message_id[len("field:") :]
    classes = [*([queue.headerless[1]] if queue.headerless else []), *queue.type_ids.values()]
    lacking = sorted(
        {
            cls.__qualname__
            for cls in classes
            if not issubclass(cls, Mapping) and name not in _declared_fields(cls)
        }
    )
    if lacking:
        raise ConfigurationError(
            f"queues.{queue.name}.message_id: field {name!r} is not declared by "
            f"{', '.join(lacking)}, so its messages could never carry that id (a typo?)"
        )


def _declared_fields(cls: type) -> set[str]:
    """The field names of a dataclass, a pydantic model or an annotated class."""
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    model_fields = getattr(cls, "model_fields", None)
    if isinstance(model_fields, Mapping):
        return set(model_fields)
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(getattr(klass, "__annotations__", {}))
    return names


def build_consumers(queue: QueueConfig) -> list[Consumer]:
    """The queue's consumers, made by their configured factories (no network).

    Raises:
        ConfigurationError: a consumer factory fails or returns something else.
    """
    consumers: list[Consumer] = []
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
        consumers.append(consumer)
    return consumers


def build_dispatcher(
    config: ServiceConfig,
    queue: QueueConfig,
    backend: KafkaBackend,
    serializers: SerializerRegistry,
    schema_registry: SchemaRegistry | None = None,
    consumers: list[Consumer] | None = None,
) -> MessageDispatcher:
    """The queue's dispatcher with its consumers attached.

    ``consumers`` are those made already by :func:`build_consumers` (made here when ``None``).

    Raises:
        ConfigurationError: a consumer factory fails or returns something else.
    """
    if consumers is None:
        consumers = build_consumers(queue)
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
        max_in_flight_bytes=queue.max_in_flight_bytes,
        dead_letter_limit=_dead_letter_limit(queue),
        routing=build_routing(queue, serializers),
        key_decoder=key_decoder(queue.key, schema_registry),
    )
    for consumer in consumers:
        dispatcher.attach_consumer(consumer)
    return dispatcher


def _dead_letter_limit(queue: QueueConfig) -> DeadLetterLimit | None:
    limit = queue.dead_letter_limit
    if limit is None:
        return None
    return DeadLetterLimit(limit.ratio, limit.window, limit.min_messages)
