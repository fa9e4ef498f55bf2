"""Prometheus metrics of the service, registered in a given ``CollectorRegistry``.

Names follow ``<prefix>_<subject>_<unit or total>``; labels are low-cardinality only
(queue, topic, partition, consumer, outcome, error class), never a message id or key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.backends.base import TopicPartition
from service.dispatcher import DispatchOutcome
from service.messages import Message

__all__ = ["QueueMetrics", "ServiceMetrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServiceMetrics:
    """Every collector of the service.

    Args:
        registry: where the collectors are registered (a fresh one per test).
        prefix: the metric name prefix.
    """

    def __init__(self, registry: CollectorRegistry, prefix: str = "kafka_dispatch") -> None:
        self.registry = registry
        labels = ["queue"]
        self.received = Counter(
            f"{prefix}_received_messages", "Messages polled.", [*labels, "topic"], registry=registry
        )
        self.processed = Counter(
            f"{prefix}_processed_messages",
            "Messages handled per consumer and outcome (success, failure, duplicate).",
            [*labels, "consumer", "outcome"],
            registry=registry,
        )
        self.settled = Counter(
            f"{prefix}_settled_messages",
            "Messages settled, by outcome (acknowledged, skipped, retried, dead_lettered).",
            [*labels, "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{prefix}_processing_duration_seconds",
            "Time to dispatch one message (decode, consumers, settle).",
            labels,
            buckets=_BUCKETS,
            registry=registry,
        )
        self.deduplicated = Counter(
            f"{prefix}_deduplicated_messages",
            "Consumer runs skipped because the message was already processed.",
            [*labels, "consumer"],
            registry=registry,
        )
        self.commits = Counter(
            f"{prefix}_commits",
            "Offset commits started (sync, async) and failed.",
            [*labels, "result"],
            registry=registry,
        )
        self.assigned = Gauge(
            f"{prefix}_assigned_partitions", "Partitions assigned.", labels, registry=registry
        )
        self.rebalances = Counter(
            f"{prefix}_rebalances",
            "Assignments and revocations.",
            [*labels, "kind"],
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{prefix}_in_flight_messages",
            "Messages polled and not yet settled.",
            labels,
            registry=registry,
        )
        self._queues: dict[str, QueueMetrics] = {}
        registry.register(_DynamicCollector(prefix, self._queues))

    def queue(self, name: str) -> QueueMetrics:
        """The metrics of queue ``name`` (created once)."""
        metrics = self._queues.get(name)
        if metrics is None:
            metrics = self._queues[name] = QueueMetrics(self, name)
        return metrics


class QueueMetrics:
    """The metrics of one queue: a dispatch observer and a subscription listener."""

    def __init__(self, metrics: ServiceMetrics, queue: str) -> None:
        self._metrics = metrics
        self.queue = queue
        self._duration = metrics.duration.labels(queue)
        self._received: dict[str, Counter] = {}
        self._settled = {o: metrics.settled.labels(queue, o.value) for o in DispatchOutcome}
        self._consumers: dict[tuple[str, str], Counter] = {}
        self._deduplicated: dict[str, Counter] = {}
        self._assigned: set[TopicPartition] = set()
        self.last_poll = time.monotonic()
        self.lag: Callable[[], Mapping[TopicPartition, int]] = dict
        self._in_flight = metrics.in_flight.labels(queue)

    # -- DispatchObserver -----------------------------------------------------------------
    def polled(self, count: int) -> None:
        """Note the poll's time (``seconds since last poll``)."""
        self.last_poll = time.monotonic()
        self._in_flight.set(0)

    def consumer_outcome(self, consumer: str, outcome: str) -> None:
        """Count one consumer outcome."""
        counter = self._consumers.get((consumer, outcome))
        if counter is None:
            counter = self._consumers[(consumer, outcome)] = self._metrics.processed.labels(
                self.queue, consumer, outcome
            )
        counter.inc()
        if outcome == "duplicate":
            dedup = self._deduplicated.get(consumer)
            if dedup is None:
                dedup = self._deduplicated[consumer] = self._metrics.deduplicated.labels(
                    self.queue, consumer
                )
            dedup.inc()

    def message_outcome(self, message: Message, outcome: DispatchOutcome, seconds: float) -> None:
        """Count the message, its outcome and its duration."""
        received = self._received.get(message.topic)
        if received is None:
            received = self._received[message.topic] = self._metrics.received.labels(
                self.queue, message.topic
            )
        received.inc()
        self._settled[outcome].inc()
        self._duration.observe(seconds)

    # -- SubscriptionListener ---------------------------------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Count the assignment."""
        self._assigned.update(partitions)
        self._metrics.assigned.labels(self.queue).set(len(self._assigned))
        self._metrics.rebalances.labels(self.queue, "assigned").inc()

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Count the revocation."""
        self._assigned.difference_update(partitions)
        self._metrics.assigned.labels(self.queue).set(len(self._assigned))
        self._metrics.rebalances.labels(self.queue, "revoked").inc()

    def before_commit(self) -> None:
        """Count a commit."""
        self._metrics.commits.labels(self.queue, "sync").inc()

    def commit_failed(self) -> None:
        """Count a failed commit."""
        self._metrics.commits.labels(self.queue, "failed").inc()

    def commit_ticket(self) -> Callable[[], bool]:
        """Count a commit; never holds it back."""
        self._metrics.commits.labels(self.queue, "async").inc()
        return _always


def _always() -> bool:
    return True


class _DynamicCollector(Collector):
    """Values read at scrape time: lag per partition and seconds since the last poll."""

    def __init__(self, prefix: str, queues: Mapping[str, QueueMetrics]) -> None:
        self._prefix = prefix
        self._queues = queues

    def collect(self) -> Iterable[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            f"{self._prefix}_consumer_lag_messages",
            "Messages behind the partition's end (high watermark - position).",
            labels=["queue", "topic", "partition"],
        )
        since = GaugeMetricFamily(
            f"{self._prefix}_seconds_since_last_poll",
            "Seconds since the queue's loop last polled.",
            labels=["queue"],
        )
        now = time.monotonic()
        for name, queue in list(self._queues.items()):
            since.add_metric([name], now - queue.last_poll)
            for (topic, partition), behind in queue.lag().items():
                lag.add_metric([name, topic, str(partition)], behind)
        yield lag
        yield since
