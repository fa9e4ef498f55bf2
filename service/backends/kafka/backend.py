"""KafkaBackend: queues as topics plus a consumer group, on confluent-kafka."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from service.backends.base import MessagingBackend, check_topics, default_dead_letter_topic
from service.backends.kafka.admin import TopicAdmin, WantedTopic
from service.backends.kafka.connection import ConnectionWatch, librdkafka_logger, probe_brokers
from service.backends.kafka.errors import produce_error, translate
from service.backends.kafka.subscription import KafkaSubscription
from service.backends.outputs import StagedRecord, current_outputs
from service.errors import BackendError, BrokerUnavailableError, ConfigurationError, ProduceError
from service.messages import Headers

__all__ = ["ExactlyOnce", "KafkaBackend", "QueueBinding"]

logger = logging.getLogger(__name__)

# What the broker answers a CreateTopics without CREATE permission, even for an existing topic.
_NO_CREATE_CODES = frozenset(
    {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}
)


@dataclass(frozen=True, slots=True)
class ExactlyOnce:
    """Exactly-once processing of a queue: its commits are Kafka transactions.

    Attributes:
        transactional_id: the member's stable transactional id (unique among live
            members; a restarted member reusing it aborts its predecessor's transaction,
            unless that one had been fenced onto ``<id>.<n>``: then the broker aborts it
            after ``transaction_timeout``).
        interval: seconds between transaction commits...
        max_messages: ...or this many done messages, whichever comes first.
        timeout: seconds each transactional call may take.
        transaction_timeout: the broker aborts a transaction left open this long (a
            crashed member's), so ``read_committed`` readers are not held longer.
    """

    transactional_id: str
    interval: float = 0.1
    max_messages: int = 1000
    timeout: float = 30.0
    transaction_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class QueueBinding:
    """What a queue name means on Kafka.

    Attributes:
        topics: topic names, or patterns starting with ``^``.
        group_id: the consumer group of the queue's members.
        dead_letter_topic: where messages that cannot be processed go.
        exactly_once: commit in transactions (None: at-least-once).
    """

    topics: tuple[str, ...]
    group_id: str
    dead_letter_topic: str
    exactly_once: ExactlyOnce | None = None


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
    :meth:`flush` *of the same thread*: every record is judged by its own delivery report,
    and a thread never sees another thread's refusals. :meth:`publish_confirmed` waits for
    its record's own report (dead letters are confirmed before the message counts as done).
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
        self._limits: dict[str, int | None] = {}  # max.message.bytes by topic, once read
        self._producer: Producer | None = None
        self._producer_lock = threading.Lock()
        self._producer_watch = ConnectionWatch("producer")
        self._local = threading.local()  # each publishing thread's refused records
        self._admin: AdminClient | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The brokers this backend talks to."""
        return str(self._client_config["bootstrap.servers"])

    def probe(self) -> None:
        """Return once the brokers answer; fail fast and clearly otherwise.

        Raises:
            BrokerUnavailableError: no broker answered within ``startup_timeout`` (the text
                names the servers and the cause: refused, DNS, TLS, timeout).
            AuthenticationError: the brokers refused the credentials.
        """
        probe_brokers(self._client_config, self.startup_timeout)

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
        exactly_once: ExactlyOnce | None = None,
    ) -> None:
        """Bind ``queue_name`` to ``topics`` and consumer group ``group_id``.

        Both default to the queue name. Unless ``create`` is false, the missing named topics
        and the dead-letter topic are created (patterns are not). With ``exactly_once``,
        its members commit in transactions (see :class:`ExactlyOnce`).
        """
        check_topics(queue_name, topics)
        binding = QueueBinding(
            topics or (queue_name,),
            group_id or queue_name,
            dead_letter_topic or default_dead_letter_topic(queue_name),
            exactly_once,
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
    @property
    def producer_settings(self) -> dict[str, Any]:
        """The producer-only settings (``kafka.producer``), for other producers to share."""
        return dict(self._producer_config)

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
                    "linger.ms": 5,
                    "logger": librdkafka_logger(),
                    "error_cb": self._producer_watch.on_error,
                    **self._producer_config,
                    # the service's own (settings.OWNED): dead letters rest on them
                    "enable.idempotence": True,
                    "acks": "all",
                }
                self._producer = Producer(config)
            return self._producer

    def _thread_failures(self) -> list[str]:
        failures: list[str] | None = getattr(self._local, "failures", None)
        if failures is None:
            failures = self._local.failures = []
        return failures

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        on_delivery: Callable[[KafkaError | None, KafkaMessage], None],
    ) -> Producer:
        producer = self._producer_client()
        while True:
            try:
                producer.produce(topic, value, key, headers=list(headers), on_delivery=on_delivery)
                return producer
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it
            except KafkaException as exc:
                raise produce_error(exc, f"publishing to {topic!r}") from exc

    def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> None:
        """Queue one record for ``topic``; see the class docstring for when errors surface.

        Published while a message is handled (see :mod:`service.backends.outputs`), the
        record is tied to that message: its delivery report goes to the message's outputs;
        on an exactly-once queue it is staged, and written in the transaction that commits
        the message's offset.
        """
        watch = self._producer_watch
        outputs = current_outputs()
        if outputs is not None:
            if outputs.staged is not None:  # exactly-once: written with the input's offset
                outputs.stage(StagedRecord(topic, value, key, tuple(headers)))
                return
            report = outputs.register(topic, self.serve)

            def on_output(error: KafkaError | None, record: KafkaMessage) -> None:
                if error is not None:
                    report(f"{error.name()}: {error.str()}")
                else:
                    watch.reachable()
                    report(None)

            try:
                self._produce(topic, value, key, headers, on_output).poll(0)
            except ProduceError as exc:
                report(str(exc))
                raise
            return
        self._raise_failures()
        failures = self._thread_failures()

        def on_delivery(error: KafkaError | None, record: KafkaMessage) -> None:
            if error is not None:
                failures.append(f"{record.topic()}: {error.name()}: {error.str()}")
            else:
                watch.reachable()

        self._produce(topic, value, key, headers, on_delivery).poll(0)

    def serve(self) -> None:
        """Serve the producer's delivery reports that arrived (cheap; the loop calls it)."""
        if self._producer is not None:
            self._producer.poll(0)

    def publish_confirmed(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Headers,
        timeout: float,
    ) -> None:
        """Publish one record and wait for its own delivery report.

        Raises:
            ProduceError: the broker refused it (``permanent`` when sending it again cannot
                help), or did not confirm it within ``timeout``.
        """
        report: list[KafkaError | None] = []

        def on_delivery(error: KafkaError | None, record: KafkaMessage) -> None:
            report.append(error)

        producer = self._produce(topic, value, key, headers, on_delivery)
        deadline = time.monotonic() + timeout
        while not report:
            if self._producer_watch.fatal is not None:
                raise produce_error(self._producer_watch.fatal, f"publishing to {topic!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProduceError(
                    f"publishing to {topic!r}: not confirmed by {self.bootstrap_servers} "
                    f"within {timeout:g}s"
                )
            producer.poll(min(left, 0.1))
        error = report[0]
        if error is not None:
            raise produce_error(error, f"publishing to {topic!r}")
        self._producer_watch.reachable()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is confirmed.

        Raises:
            ProduceError: records this thread published were refused, or records are still
                unconfirmed after ``timeout``.
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
            raise produce_error(error, "producer")
        failures = self._thread_failures()
        if failures:
            first, count = failures[0], len(failures)
            failures.clear()
            raise ProduceError(f"{count} record(s) refused by the broker; first: {first}")

    # -- consuming --------------------------------------------------------------------
    def subscribe(self, queue_name: str) -> KafkaSubscription:
        """Join the queue's consumer group.

        The consumer gets the service's fetch defaults (measured in docs/performance.md),
        which ``consumer_config`` (``kafka.consumer``) overrides key by key: a 10 ms fetch
        back-off instead of librdkafka's 1000 ms (a fast loop empties its prefetch queue and
        would otherwise wait out the second), and a prefetch bounded to 20,000 records per
        partition and 16 MiB in all instead of 100,000 and 64 MiB (less memory, same rate).

        Raises:
            BrokerUnavailableError: the brokers did not answer within ``startup_timeout``.
            AuthenticationError: the brokers refused the credentials.
        """
        binding = self.binding(queue_name)
        config: dict[str, Any] = {
            **self._client_config,
            "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 10,
            "queued.min.messages": 20_000,
            "queued.max.messages.kbytes": 16_384,
            **self._consumer_config,
            # the service's own (settings.OWNED): commits by hand, one group per queue
            "group.id": binding.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "partition.assignment.strategy": "cooperative-sticky",
        }
        if binding.exactly_once is not None:
            # records of aborted transactions (ours, after a rewind, or upstream) never reach
            # handlers; librdkafka's default too, but not the user's to change here
            config["isolation.level"] = "read_committed"
        self._check_dead_letter_room(binding)
        return KafkaSubscription(self, queue_name, binding, config)

    _DLQ_HEADROOM = 16 * 1024  # bytes the dlq.* headers may add to a record

    def max_message_bytes(self, topic: str) -> int | None:
        """The largest record batch ``topic`` takes (``max.message.bytes``), cached.

        None when it cannot be read (no DESCRIBE_CONFIGS, broker unreachable): unknown.
        """
        if topic in self._limits:
            return self._limits[topic]
        limit: int | None
        try:
            found = TopicAdmin(self._client_config, min(self.startup_timeout, 10.0)).settings(
                [WantedTopic(topic, 1, 1, {"max.message.bytes": ""})]
            )
            limit = int(found[topic]["max.message.bytes"])
        except (BackendError, KeyError, ValueError) as exc:
            logger.debug("max.message.bytes of %r unknown: %s", topic, exc)
            limit = None
        self._limits[topic] = limit
        return limit

    def _check_dead_letter_room(self, binding: QueueBinding) -> None:
        """Warn when the dead-letter topic takes smaller records than its input topics.

        A record too large for the dead-letter topic is dead-lettered without its payload
        (see :meth:`KafkaSubscription.dead_letter`); say so at start-up, with the numbers.
        Best effort: a principal without DESCRIBE_CONFIGS skips the check.
        """
        named = [t for t in binding.topics if not t.startswith("^")]
        wanted = [
            WantedTopic(t, 1, 1, {"max.message.bytes": ""})
            for t in [*named, binding.dead_letter_topic]
        ]
        try:
            found = TopicAdmin(self._client_config, min(self.startup_timeout, 10.0)).settings(
                wanted
            )
            limits = {t: int(v["max.message.bytes"]) for t, v in found.items()}
        except (BackendError, KeyError, ValueError) as exc:
            logger.debug("dead-letter size check skipped: %s", exc)
            return
        room = limits.pop(binding.dead_letter_topic, None)
        largest = max(limits.items(), key=lambda item: item[1], default=None)
        if room is not None and largest is not None and room < largest[1] + self._DLQ_HEADROOM:
            logger.warning(
                "dead-letter topic %r takes records up to %d bytes, input topic %r up to %d "
                "(+ ~%d of dlq.* headers): a dead letter too large for it is written without "
                "its payload (dlq.payload_dropped); raise its max.message.bytes to keep them",
                binding.dead_letter_topic,
                room,
                largest[0],
                largest[1],
                self._DLQ_HEADROOM,
            )

    def close(self) -> None:
        """Flush the producer (waiting up to ``dead_letter_timeout``)."""
        started = time.monotonic()
        if self._producer is not None:
            self.flush(max(self.dead_letter_timeout - (time.monotonic() - started), 0.1))
