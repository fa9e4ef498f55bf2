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
)
from service.backends.kafka import KafkaBackend
from service.backends.kafka.dedup import CompactedTopicCache
from service.consumers import Consumer, SingleDispatchConsumer, consumer, manifest_of
from service.dedup import DeduplicationCache, InMemoryCache, NullCache
from service.dispatch.flood import DeadLetterLimit
from service.dispatch.retry import RetryPolicy
from service.dispatcher import DispatchOutcome, MessageDispatcher, SimpleMessageDispatcher
from service.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BrokerUnavailableError,
    CommitError,
    ConfigurationError,
    ConsumerError,
    DeadLetterRefusedError,
    DeduplicationStoreError,
    DeserializationError,
    MalformedHeaderError,
    MessageError,
    MessageRejected,
    MissingHeaderError,
    ProduceError,
    SchemaRegistryError,
    SchemaRegistryUnavailableError,
    SerializationError,
    ServiceError,
    TransactionAbortedError,
    TransientError,
    UnknownManifestError,
    UnknownSchemaError,
    UnknownSerializerError,
)
from service.messages import Message, Record
from service.publisher import Publisher
from service.schema_registry import SchemaRegistry
from service.schemas.catalog import SchemaCatalog
from service.serializers import AvroSerializer, JsonSerializer, Serializer, SerializerRegistry
from service.testing import link_synchronously

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
    "DeadLetterLimit",
    "DeadLetterReason",
    "DeadLetterRefusedError",
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
    "MessageRejected",
    "MessagingBackend",
    "MissingHeaderError",
    "NullCache",
    "ProduceError",
    "Publisher",
    "Record",
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
    "TransactionAbortedError",
    "TransientError",
    "UnknownManifestError",
    "UnknownSchemaError",
    "UnknownSerializerError",
    "consumer",
    "link_synchronously",
    "manifest_of",
]
