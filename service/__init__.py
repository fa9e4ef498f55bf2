"""A Kafka consumer service on Melange's Consumer / MessageDispatcher model.

Write consumers, attach them to a dispatcher, and run its loop on a queue::

    registry = SerializerRegistry({"serializers": {"json": JsonSerializer},
                                   "serializer_bindings": {OrderCreated: "json"}})
    dispatcher = SimpleMessageDispatcher(MyConsumer(), registry, backend=backend)
    dispatcher.consume_loop("orders")
"""

from service.backends import (
    DeadLetter,
    DeadLetterReason,
    InMemoryBackend,
    MessagingBackend,
    Subscription,
    link_synchronously,
)
from service.backends.kafka import KafkaBackend
from service.consumers import Consumer, SingleDispatchConsumer, consumer, manifest_of
from service.dedup import DeduplicationCache, InMemoryCache, NullCache
from service.dedup.kafka import CompactedTopicCache
from service.dispatcher import DispatchOutcome, MessageDispatcher, SimpleMessageDispatcher
from service.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BrokerUnavailableError,
    CommitError,
    ConfigurationError,
    ConsumerError,
    DeduplicationStoreError,
    DeserializationError,
    MalformedHeaderError,
    MessageError,
    MissingHeaderError,
    ProduceError,
    SchemaRegistryError,
    SchemaRegistryUnavailableError,
    SerializationError,
    ServiceError,
    TransientError,
    UnknownManifestError,
    UnknownSchemaError,
    UnknownSerializerError,
)
from service.messages import Message
from service.publisher import Publisher
from service.retry import RetryPolicy
from service.schema_registry import SchemaRegistry
from service.schemas.catalog import SchemaCatalog
from service.serializers import AvroSerializer, JsonSerializer, Serializer, SerializerRegistry

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "AvroSerializer",
    "BackendError",
    "BrokerUnavailableError",
    "CommitError",
    "CompactedTopicCache",
    "ConfigurationError",
    "Consumer",
    "ConsumerError",
    "DeadLetter",
    "DeadLetterReason",
    "DeduplicationCache",
    "DeduplicationStoreError",
    "DeserializationError",
    "DispatchOutcome",
    "InMemoryBackend",
    "InMemoryCache",
    "JsonSerializer",
    "KafkaBackend",
    "MalformedHeaderError",
    "Message",
    "MessageDispatcher",
    "MessageError",
    "MessagingBackend",
    "MissingHeaderError",
    "NullCache",
    "ProduceError",
    "Publisher",
    "RetryPolicy",
    "SchemaCatalog",
    "SchemaRegistry",
    "SchemaRegistryError",
    "SchemaRegistryUnavailableError",
    "SerializationError",
    "Serializer",
    "SerializerRegistry",
    "ServiceError",
    "SimpleMessageDispatcher",
    "SingleDispatchConsumer",
    "Subscription",
    "TransientError",
    "UnknownManifestError",
    "UnknownSchemaError",
    "UnknownSerializerError",
    "consumer",
    "link_synchronously",
    "manifest_of",
]
