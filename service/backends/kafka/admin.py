"""Topic administration for the operating commands: list, create, and read topic settings.

Every confluent-kafka error is translated here (``raise ... from``) into the service's
exception tree; the admin client's librdkafka log goes to Python logging with repeats
collapsed (:mod:`service.backends.kafka.connection`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

# Defined there; confluent_kafka.admin re-exports them without declaring it (mypy --strict).
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from service.backends.kafka.connection import ConnectionWatch, librdkafka_logger
from service.backends.kafka.errors import translate
from service.errors import BrokerUnavailableError

__all__ = ["TopicAdmin", "TopicState", "WantedTopic"]


@dataclass(frozen=True)
class WantedTopic:
    """A topic as the configuration wants it.

    Attributes:
        name: the topic name.
        partitions: its partition count.
        replication_factor: its replication factor.
        config: topic settings it must have (``cleanup.policy``, ``retention.ms``).
    """

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicState:
    """An existing topic as the cluster describes it.

    Attributes:
        partitions: its partition count.
        replication_factors: the distinct replica counts of its partitions.
    """

    partitions: int
    replication_factors: frozenset[int]


class TopicAdmin:
    """An admin client with the given connection settings; every call waits ``timeout``.

    Args:
        client_config: librdkafka settings with ``bootstrap.servers`` (SASL, SSL, ...).
        timeout: seconds to wait for each answer of the brokers.
    """

    def __init__(self, client_config: Mapping[str, Any], timeout: float) -> None:
        self._timeout = timeout
        settings: dict[str, Any] = {
            **client_config,
            "error_cb": ConnectionWatch("admin").on_error,
            "logger": librdkafka_logger(),
        }
        self._admin = AdminClient(settings)

    def topics(self) -> dict[str, TopicState]:
        """The cluster's topics (those this principal may see), by name.

        Raises:
            BackendError: the brokers did not answer within ``timeout`` or refused.
        """
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            raise translate(exc, "listing topics") from exc
        return {
            name: TopicState(
                len(topic.partitions),
                frozenset(len(p.replicas) for p in topic.partitions.values()),
            )
            for name, topic in metadata.topics.items()
        }

    def create(self, missing: Sequence[WantedTopic]) -> dict[str, str]:
        """Create ``missing``; name -> ``created``, ``exists`` (lost a race) or ``failed: ...``."""
        if not missing:
            return {}
        new = [
            NewTopic(t.name, t.partitions, t.replication_factor, config=dict(t.config))
            for t in missing
        ]
        futures = self._admin.create_topics(
            new, request_timeout=self._timeout, operation_timeout=self._timeout
        )
        states: dict[str, str] = {}
        for name, future in futures.items():
            try:
                future.result(timeout=self._timeout + 5)
                states[name] = "created"
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    states[name] = "exists"
                else:
                    states[name] = f"failed: {translate(exc, 'the broker refused')}"
            except concurrent.futures.TimeoutError:
                states[name] = f"failed: no answer within {self._timeout}s"
        return states

    def settings(self, topics: Sequence[WantedTopic]) -> dict[str, dict[str, str]]:
        """The current values of the settings each of ``topics`` wants, by topic name.

        Raises:
            BackendError: the brokers refused or did not answer.
        """
        if not topics:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, t.name) for t in topics]
        futures = self._admin.describe_configs(resources, request_timeout=self._timeout)
        found: dict[str, dict[str, str]] = {}
        for topic, resource in zip(topics, resources, strict=True):
            try:
                entries = futures[resource].result(timeout=self._timeout + 5)
            except KafkaException as exc:
                raise translate(exc, f"describing topic {topic.name!r}") from exc
            except concurrent.futures.TimeoutError as exc:
                raise BrokerUnavailableError(
                    f"describing topic {topic.name!r}: no answer within {self._timeout}s"
                ) from exc
            found[topic.name] = {
                key: str(entries[key].value) for key in topic.config if key in entries
            }
        return found
