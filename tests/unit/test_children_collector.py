"""ChildrenCollector: the scrape-time values of a supervisor's children, merged (issue 16)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import ChildrenCollector, QueueMetrics, ServiceMetrics


def child_text(lag: dict[tuple[str, int], int], since: float, halted: str | None) -> str:
    """The /metrics text of a child whose queue ``q`` has these scrape-time values."""
    metrics = ServiceMetrics(CollectorRegistry())
    queue: QueueMetrics = metrics.queue("q")
    queue.lag = lambda: lag
    queue.halted = lambda: halted
    queue.last_poll -= since
    return generate_latest(metrics.registry).decode()


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_lag_is_kept_per_partition_and_the_worst_child_wins_per_queue() -> None:
    one = child_text({("t", 0): 5, ("t", 1): 7}, since=1.0, halted=None)
    two = child_text({("t", 1): 9, ("t", 2): 3}, since=40.0, halted="dead-letter limit")
    registry = CollectorRegistry()
    registry.register(ChildrenCollector(lambda: [one, two]))
    got = samples(registry)
    lag = "kafka_dispatch_consumer_lag_messages"
    assert got[(lag, (("partition", "0"), ("queue", "q"), ("topic", "t")))] == 5
    assert got[(lag, (("partition", "1"), ("queue", "q"), ("topic", "t")))] == 9
    assert got[(lag, (("partition", "2"), ("queue", "q"), ("topic", "t")))] == 3
    since = got[("kafka_dispatch_seconds_since_last_poll", (("queue", "q"),))]
    assert 40 <= since < 45
    assert got[("kafka_dispatch_queue_halted", (("queue", "q"),))] == 1


def test_no_child_answering_yields_empty_families() -> None:
    registry = CollectorRegistry()
    registry.register(ChildrenCollector(list))
    assert samples(registry) == {}
    assert b"# TYPE kafka_dispatch_consumer_lag_messages gauge" in generate_latest(registry)
