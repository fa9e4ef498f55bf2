"""KafkaBackend: queues as topics plus a consumer group, on confluent-kafka."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from service.backends.base import MessagingBackend, check_topics, default_dead_letter_topic
from service.backends.kafka.errors import TRANSIENT_CODES, translate
from service.backends.kafka.subscription import KafkaSubscription
from service.errors import BrokerUnavailableError, ConfigurationError, ProduceError
from service.messages import Headers

__all__ = ["KafkaBackend", "QueueBinding"]

logger = logging.getLogger(__name__)

# What the broker answers a CreateTopics without CREATE permission, even for an existing topic.
_NO_CREATE_CODES = frozenset(
    {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}
)


@dataclass(frozen=True, slots=True)
class QueueBinding:
    """What a queue name means on Kafka.

    Attributes:
        topics: topic names, or patterns starting with ``^``.
        group_id: the consumer group of the queue's members.
        dead_letter_topic: where messages that cannot be processed go.
    """

    topics: tuple[str, ...]
    group_id: str
    dead_letter_topic: str


class ConnectionWatch:
    """Logs broker reachability once per change of state, and remembers fatal errors."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._down = False
        self._reported: set[str] = set()
        self.fatal: KafkaError | None = None

    def on_error(self, error: KafkaError) -> None:
        """Serve as librdkafka's ``error_cb``."""
        if error.fatal() or error.code() in (
            KafkaError._AUTHENTICATION,
            KafkaError.SASL_AUTHENTICATION_FAILED,
        ):
            self.fatal = error
            logger.error("%s: %s: %s", self._name, error.name(), error.str())
        elif error.code() in TRANSIENT_CODES:
            if not self._down:
                self._down = True
                logger.warning("%s: broker unreachable, retrying: %s", self._name, error.str())
        elif error.str() not in self._reported:  # once each, until the broker answers again
            if len(self._reported) < 1000:
                self._reported.add(error.str())
            logger.warning("%s: %s: %s", self._name, error.name(), error.str())

    @property
    def is_down(self) -> bool:
        """Whether the last news was a transport error."""
        return self._down

    def reachable(self) -> None:
        """Note that the broker answered (warnings may be repeated again from now on)."""
        self._reported.clear()
        if self._down:
            self._down = False
            logger.warning("%s: broker reachable again", self._name)


class KafkaBackend(MessagingBackend):
    """Topics, consumer groups and publishing on an Apache Kafka cluster.

    Args:
        bootstrap_servers: ``host:port[,host:port...]``.
        client_config: librdkafka settings for every client (SASL, SSL, ...).
        consumer_config: librdkafka settings for consumers only (override the defaults).
        producer_config: librdkafka settings for the producer only.
        partitions: partitions of the topics this backend creates.
        replication_factor: replication factor of the topics this backend creates.
        startup_timeout: seconds to reach the brokers before failing with
            :class:`~service.errors.BrokerUnavailableError`.
        commit_every: commit asynchronously after this many messages are done...
        commit_interval: ...or after this many seconds, whichever comes first.
        dead_letter_timeout: seconds to wait for the broker to confirm a dead letter.

    Publishing is asynchronous: :meth:`publish` queues the record, and a record the broker
    refused raises :class:`~service.errors.ProduceError` from the next :meth:`publish` or
    from :meth:`flush`. Dead letters are confirmed before the message counts as done.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_config: Mapping[str, Any] | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        producer_config: Mapping[str, Any] | None = None,
        partitions: int = 1,
        replication_factor: int = 1,
        startup_timeout: float = 30.0,
        commit_every: int = 1000,
        commit_interval: float = 1.0,
        dead_letter_timeout: float = 30.0,
    ) -> None:
        if not bootstrap_servers:
            raise ConfigurationError("KafkaBackend needs bootstrap_servers, e.g. 'kafka:9092'")
        self._client_config = {"bootstrap.servers": bootstrap_servers, **(client_config or {})}
        self._consumer_config = dict(consumer_config or {})
        self._producer_config = dict(producer_config or {})
        self._partitions = partitions
        self._replication_factor = replication_factor
        self.startup_timeout = startup_timeout
        self.commit_every = commit_every
        self.commit_interval = commit_interval
        self.dead_letter_timeout = dead_letter_timeout
        self._queues: dict[str, QueueBinding] = {}
        self._producer: Producer | None = None
        self._producer_lock = threading.Lock()
        self._producer_watch = ConnectionWatch("producer")
        self._failures: list[str] = []
        self._admin: AdminClient | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The brokers this backend talks to."""
        return str(self._client_config["bootstrap.servers"])

    # -- topics and queues ------------------------------------------------------------
    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(dict(self._client_config))
        return self._admin

    def declare_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create ``topic`` unless it exists; an existing topic is left as it is.

        Raises:
            BrokerUnavailableError: the brokers did not answer within ``startup_timeout``.
            BackendError: the broker refused (e.g. no CREATE permission).
        """
        self.create_topics({topic: partitions or self._partitions})

    def create_topics(
        self, topics: Mapping[str, int], config: Mapping[str, str] | None = None
    ) -> None:
        """Create the missing ``topics`` (name -> partitions) with topic ``config``.

        An existing topic is left as it is, also when the principal may not create topics
        (no CREATE ACL) but may see it: least-privilege deployments provision them.
        """
        new = [
            NewTopic(name, partitions, self._replication_factor, config=dict(config or {}))
            for name, partitions in topics.items()
        ]
        if not new:
            return
        futures = self._admin_client().create_topics(
            new, request_timeout=self.startup_timeout, operation_timeout=self.startup_timeout
        )
        for name, future in futures.items():
            try:
                future.result(timeout=self.startup_timeout + 5)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                if code in _NO_CREATE_CODES and self._topic_exists(name):
                    # least privilege: no CREATE, but the operator provisioned the topic
                    logger.debug("topic %r exists; no CREATE permission needed", name)
                    continue
                raise translate(exc, f"creating topic {name!r}") from exc
            except TimeoutError as exc:
                raise BrokerUnavailableError(
                    f"creating topic {name!r}: no answer from {self.bootstrap_servers} "
                    f"within {self.startup_timeout}s"
                ) from exc

    def _topic_exists(self, name: str) -> bool:
        """Whether ``name`` exists and this principal may see it (DESCRIBE)."""
        try:
            metadata = self._admin_client().list_topics(
                name, timeout=min(self.startup_timeout, 10.0)
            )
        except KafkaException:
            return False
        topic = metadata.topics.get(name)
        return topic is not None and topic.error is None and bool(topic.partitions)

    def declare_queue(
        self,
        queue_name: str,
        *topics: str,
        dead_letter_topic: str | None = None,
        group_id: str | None = None,
        create: bool = True,
    ) -> None:
        """Bind ``queue_name`` to ``topics`` and consumer group ``group_id``.

        Both default to the queue name. Unless ``create`` is false, the missing named topics
        and the dead-letter topic are created (patterns are not).
        """
        check_topics(queue_name, topics)
        binding = QueueBinding(
            topics or (queue_name,),
            group_id or queue_name,
            dead_letter_topic or default_dead_letter_topic(queue_name),
        )
        self._queues[queue_name] = binding
        if create:
            named = [t for t in binding.topics if not t.startswith("^")]
            self.create_topics(dict.fromkeys([*named, binding.dead_letter_topic], self._partitions))

    def binding(self, queue_name: str) -> QueueBinding:
        """The binding of ``queue_name``: declared, or topic and group named like the queue."""
        return self._queues.get(queue_name) or QueueBinding(
            (queue_name,), queue_name, default_dead_letter_topic(queue_name)
        )

    # -- clients for other parts of the service ------------------------------------------
    def new_producer(self, overrides: Mapping[str, Any]) -> Producer:
        """A producer with this backend's connection settings plus ``overrides``."""
        return Producer({**self._client_config, **overrides})

    def new_consumer(self, overrides: Mapping[str, Any]) -> Consumer:
        """A consumer with this backend's connection settings plus ``overrides``."""
        return Consumer({**self._client_config, **overrides})

    # -- publishing -------------------------------------------------------------------
    def _producer_client(self) -> Producer:
        with self._producer_lock:
            if self._producer is None:
                config: dict[str, Any] = {
                    **self._client_config,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    "error_cb": self._producer_watch.on_error,
                    **self._producer_config,
                }
                self._producer = Producer(config)
            return self._producer

    def _on_delivery(self, error: KafkaError | None, record: KafkaMessage) -> None:
        if error is not None:
            self._failures.append(f"{record.topic()}: {error.name()}: {error.str()}")
        else:
            self._producer_watch.reachable()

    def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> None:
        """Queue one record for ``topic``; see the class docstring for when errors surface."""
        producer = self._producer_client()
        self._raise_failures()
        while True:
            try:
                producer.produce(
                    topic, value, key, headers=list(headers), on_delivery=self._on_delivery
                )
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it
            except KafkaException as exc:
                raise ProduceError(str(translate(exc, f"publishing to {topic!r}"))) from exc
        producer.poll(0)

    def publish_confirmed(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Headers,
        timeout: float,
    ) -> None:
        """Publish one record and wait until the broker confirms it.

        Raises:
            ProduceError: the broker refused it or did not confirm it within ``timeout``.
        """
        self.publish(topic, value, key=key, headers=headers)
        self.flush(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is confirmed.

        Raises:
            ProduceError: records were refused, or are still unconfirmed after ``timeout``.
        """
        if self._producer is None:
            return
        left = self._producer.flush(timeout)
        self._raise_failures()
        if left:
            raise ProduceError(
                f"{left} record(s) not confirmed by {self.bootstrap_servers} within {timeout}s"
            )

    def _raise_failures(self) -> None:
        if self._producer_watch.fatal is not None:
            error = self._producer_watch.fatal
            raise ProduceError(str(translate(error, "producer")))
        if self._failures:
            failures, self._failures = self._failures, []
            raise ProduceError(
                f"{len(failures)} record(s) refused by the broker; first: {failures[0]}"
            )

    # -- consuming --------------------------------------------------------------------
    def subscribe(self, queue_name: str) -> KafkaSubscription:
        """Join the queue's consumer group.

        Raises:
            BrokerUnavailableError: the brokers did not answer within ``startup_timeout``.
            AuthenticationError: the brokers refused the credentials.
        """
        binding = self.binding(queue_name)
        config: dict[str, Any] = {
            **self._client_config,
            "group.id": binding.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            **self._consumer_config,
        }
        return KafkaSubscription(self, queue_name, binding, config)

    def close(self) -> None:
        """Flush the producer (waiting up to ``dead_letter_timeout``)."""
        started = time.monotonic()
        if self._producer is not None:
            self.flush(max(self.dead_letter_timeout - (time.monotonic() - started), 0.1))
