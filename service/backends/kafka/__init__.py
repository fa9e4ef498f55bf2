"""The Kafka backend (confluent-kafka)."""

from service.backends.kafka.backend import KafkaBackend, QueueBinding
from service.backends.kafka.subscription import KafkaSubscription

__all__ = ["KafkaBackend", "KafkaSubscription", "QueueBinding"]
