"""Prometheus metrics of the service, registered in a given ``CollectorRegistry``.

Names follow ``<prefix>_<subject>_<unit or total>``; labels are low-cardinality only
(queue, topic, partition, consumer, outcome, error class), never a message id or key.

Under ``run --processes N`` every child keeps these collectors; prometheus-client's
multiprocess mode adds the children's counters and histograms up (gauges: summed over the
live children), and :class:`ChildrenCollector` merges the values read at scrape time.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from service.backends.base import TopicPartition
from service.dispatcher import DispatchOutcome
from service.messages import Message

__all__ = ["ChildrenCollector", "ChildrenFilesCollector", "QueueMetrics", "ServiceMetrics"]

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
            "Offset commits prepared (sync, async).",
            [*labels, "result"],
            registry=registry,
        )
        # multiprocess mode (``run --processes N``) sums gauges over the live children
        self.assigned = Gauge(
            f"{prefix}_assigned_partitions",
            "Partitions assigned.",
            labels,
            registry=registry,
            multiprocess_mode="livesum",
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
            multiprocess_mode="livesum",
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
    """The metrics of one queue: a dispatch observer, a subscription listener, a commit gate."""

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
        self.halted: Callable[[], str | None] = lambda: None
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

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Count the loss."""
        self._assigned.difference_update(partitions)
        self._metrics.assigned.labels(self.queue).set(len(self._assigned))
        self._metrics.rebalances.labels(self.queue, "lost").inc()

    # -- CommitGate (one that always passes: it only counts) ----------------------------
    def wait(self, timeout: float) -> None:
        """Count a synchronous commit."""
        del timeout
        self._metrics.commits.labels(self.queue, "sync").inc()

    def ticket(self) -> Callable[[], bool]:
        """Count an asynchronous commit; never holds it back."""
        self._metrics.commits.labels(self.queue, "async").inc()
        return _always


def _always() -> bool:
    return True


class _DynamicCollector(Collector):
    """Values read at scrape time: lag per partition, seconds since the last poll, halts."""

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
        halted = GaugeMetricFamily(
            f"{self._prefix}_queue_halted",
            "1 while the queue's dead-letter limit has halted it (restart to resume).",
            labels=["queue"],
        )
        now = time.monotonic()
        for name, queue in list(self._queues.items()):
            since.add_metric([name], now - queue.last_poll)
            halted.add_metric([name], 0.0 if queue.halted() is None else 1.0)
            for (topic, partition), behind in queue.lag().items():
                lag.add_metric([name, topic, str(partition)], behind)
        yield lag
        yield since
        yield halted


_MERGED = {  # name: (help, labels)
    "consumer_lag_messages": (
        "Messages behind the partition's end (high watermark - position).",
        ("queue", "topic", "partition"),
    ),
    "seconds_since_last_poll": (
        "Seconds since the queue's loop last polled (the stalest child).",
        ("queue",),
    ),
    "queue_halted": (
        "1 while the queue's dead-letter limit has halted it (in any child).",
        ("queue",),
    ),
}


class ChildrenCollector(Collector):
    """The values read at scrape time, merged over the children of a supervisor.

    ``scrape`` returns each live child's ``/metrics`` text, read now. Of each family
    :class:`_DynamicCollector` writes (lag, seconds since the last poll, halted) the largest
    value per label set is kept: a partition belongs to one child at a time (during a
    rebalance two may report it), the stalest loop is the one to alert on, and a queue halted
    in one child is halted. A child that does not answer adds nothing.

    Args:
        scrape: the children's metric texts.
        prefix: the metric name prefix.
    """

    def __init__(self, scrape: Callable[[], list[str]], prefix: str = "kafka_dispatch") -> None:
        self._scrape = scrape
        self._prefix = prefix

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """Nothing to check at registration (the names are not the multiprocess ones)."""
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Scrape the children and yield the merged families."""
        merged: dict[str, dict[tuple[tuple[str, str], ...], float]] = {
            f"{self._prefix}_{name}": {} for name in _MERGED
        }
        for text in self._scrape():
            for family in text_string_to_metric_families(text):
                values = merged.get(family.name)
                if values is None:
                    continue
                for sample in family.samples:
                    key = tuple(sorted(sample.labels.items()))
                    values[key] = max(values.get(key, sample.value), sample.value)
        for name, (documentation, label_names) in _MERGED.items():
            family = GaugeMetricFamily(
                f"{self._prefix}_{name}", documentation, labels=list(label_names)
            )
            for key, value in merged[f"{self._prefix}_{name}"].items():
                labels = dict(key)
                family.add_metric([labels.get(label, "") for label in label_names], value)
            yield family


class ChildrenFilesCollector(MultiProcessCollector):
    """The counters, histograms and gauges of a supervisor's children, from their files.

    prometheus-client's multiprocess collector over ``path``, read without tripping over a
    child starting or dying.

    A file a child has just created is empty for an instant, and :func:`mark_process_dead`
    may remove a dead child's gauge file between listing and reading: either would fail the
    whole scrape in the library's collector.
    """

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        super().__init__(registry, path=path)  # type: ignore[no-untyped-call]
        self._files = path

    def collect(self) -> Iterable[Metric]:
        """Merge every complete file; list them again if one vanished meanwhile."""
        for _ in range(3):
            files = []
            for name in glob.glob(os.path.join(self._files, "*.db")):
                with contextlib.suppress(FileNotFoundError):
                    if os.path.getsize(name) >= 8:  # the header: how much of it is used
                        files.append(name)
            try:
                merged = self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            except FileNotFoundError:
                continue
            return cast(Iterable[Metric], merged)
        return []
