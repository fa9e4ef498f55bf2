"""Exactly-once on the real broker: outputs, dead letters and offsets in one transaction."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException

from service import Consumer, MessageDispatcher, Publisher, RetryPolicy
from service.backends.kafka import KafkaBackend
from service.backends.kafka.backend import ExactlyOnce
from service.backends.kafka.transactions import Transaction
from service.backends.outputs import StagedRecord
from service.errors import TransactionAbortedError
from tests.integration.test_service_run import Service, publish, wait_for
from tests.kafka_helpers import committed, kafka_backend, read_topic, unique
from tests.payments import DoPayment, json_registry

pytestmark = pytest.mark.integration


class Forward(Consumer):
    """One output per input; the input whose amount is ``oversized`` gets a huge output."""

    def __init__(self, publisher: Publisher, topic: str, oversized: int = -1) -> None:
        super().__init__()
        self._publisher, self._topic, self._oversized = publisher, topic, oversized
        self.runs: Counter[int] = Counter()

    def process(self, message: Any, **kwargs: Any) -> None:
        self.runs[message.amount] += 1
        order = "x" * 200_000 if message.amount == self._oversized else message.order_id
        self._publisher.publish(
            self._topic, DoPayment(order, message.amount), message_id=f"out-{message.amount}"
        )


def eos_queue(backend: KafkaBackend, queue: str, **options: Any) -> None:
    backend.declare_queue(queue, exactly_once=ExactlyOnce(f"{queue}.tx", **options))


def run_until(dispatcher: MessageDispatcher, queue: str, done: Any, timeout: float) -> None:
    """Consume ``queue`` on a thread until ``done()``; the loop must not have raised."""
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            dispatcher.consume_loop(queue)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        wait_for(lambda: done() or errors, timeout)
    finally:
        dispatcher.stop()
        thread.join(30)
    assert not errors, errors
    assert not thread.is_alive()


def forwarding(
    backend: KafkaBackend, output: str, oversized: int
) -> tuple[MessageDispatcher, Forward]:
    """A dispatcher running Forward (one output per input; ``oversized`` too large), two
    attempts 50 ms apart before a dead letter."""
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=2, backoff_base=0.05, backoff_max=0.05, jitter=0),
    )
    forward = Forward(Publisher(json_registry(), backend), output, oversized=oversized)
    dispatcher.attach_consumer(forward)
    return dispatcher, forward


def dead_letters(bootstrap: str, queue: str) -> list[Any]:
    """The records of ``queue``'s dead-letter topic (up to 5)."""
    return read_topic(bootstrap, f"{queue}.dlq", 5, timeout=5)


def amounts_in(records: list[Any]) -> list[int]:
    return [json.loads(record.value or b"{}")["amount"] for record in records]


def amounts_of(bootstrap: str, topic: str, count: int, **client: Any) -> Counter[int]:
    records = read_topic(bootstrap, topic, count, timeout=10, client=client or None)
    return Counter(json.loads(record.value or b"{}")["amount"] for record in records)


def test_outputs_and_offsets_commit_together(kafka_bootstrap: str) -> None:
    queue = unique("eos")
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap)
    eos_queue(backend, queue)
    backend.declare_topic(output)
    publish(backend, queue, 200)
    dispatcher = MessageDispatcher(json_registry(), backend=backend, concurrency=4)
    forward = Forward(Publisher(json_registry(), backend), output)
    dispatcher.attach_consumer(forward)
    run_until(dispatcher, queue, lambda: committed(kafka_bootstrap, queue, queue) == [200], 60)
    assert amounts_of(kafka_bootstrap, output, 250) == Counter(range(200))  # each once
    # nothing aborted either: a read_uncommitted reader sees the same records
    raw = amounts_of(kafka_bootstrap, output, 250, **{"isolation.level": "read_uncommitted"})
    assert raw == Counter(range(200))
    backend.close()


def test_a_refused_output_aborts_rewinds_then_dead_letters_only_its_input(
    kafka_bootstrap: str,
) -> None:
    queue = unique("eos-refused")
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap)
    eos_queue(backend, queue)
    backend.create_topics({output: 1}, config={"max.message.bytes": "100000"})
    publish(backend, queue, 60)
    dispatcher, forward = forwarding(backend, output, oversized=30)
    run_until(dispatcher, queue, lambda: committed(kafka_bootstrap, queue, queue) == [60], 90)
    # every other input's output exactly once, though the aborted transactions ran some twice
    assert amounts_of(kafka_bootstrap, output, 80) == Counter(set(range(60)) - {30})
    assert forward.runs[30] >= 2 and max(forward.runs.values()) >= 2
    dead = dead_letters(kafka_bootstrap, queue)
    assert amounts_in(dead) == [30]
    reason = dict(dead[0].headers)["dlq.error_text"] or b""
    assert output.encode() in reason and b"MSG_SIZE_TOO_LARGE" in reason
    backend.close()


class CommittedUnreadable:
    """A consumer whose ``committed()`` times out on the calls numbered in ``failing``."""

    def __init__(self, consumer: Any, subscription: Any, failing: set[int]) -> None:
        self._consumer, self._subscription, self._failing = consumer, subscription, failing
        self.calls = 0
        self.reachable_when_retried: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def committed(self, partitions: Any, timeout: float = -1) -> Any:
        self.calls += 1
        if self.calls - 1 in self._failing:  # a retry after a failed read
            self.reachable_when_retried.append(self._subscription.broker_reachable)
        if self.calls in self._failing:
            error = KafkaError(KafkaError._TIMED_OUT, "Failed to get committed offsets")
            raise KafkaException(error)
        return self._consumer.committed(partitions, timeout=timeout)


def test_a_rewind_waits_out_unreadable_committed_offsets(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The committed offsets time out twice after an abort (a broker freeze, a moving
    coordinator): the partitions wait, readiness says the broker is down, nothing stops,
    and every output is still written once."""
    queue = unique("eos-unreadable")
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap)
    eos_queue(backend, queue)
    backend.create_topics({output: 1}, config={"max.message.bytes": "100000"})
    publish(backend, queue, 40)
    flaky: list[CommittedUnreadable] = []
    subscribe = backend.subscribe

    def subscribe_flaky(name: str) -> Any:
        subscription = subscribe(name)
        # call 1 reads the notes at assignment; 2 is the rewind after the abort, 3 its retry
        flaky.append(CommittedUnreadable(subscription._consumer, subscription, {2, 3}))
        subscription._consumer = flaky[-1]
        return subscription

    backend.subscribe = subscribe_flaky  # type: ignore[method-assign]
    dispatcher, _ = forwarding(backend, output, oversized=20)
    with caplog.at_level("WARNING", logger="service.backends.kafka.subscription"):
        run_until(dispatcher, queue, lambda: committed(kafka_bootstrap, queue, queue) == [40], 90)
    assert flaky[0].calls >= 4
    assert flaky[0].reachable_when_retried[:2] == [False, False]
    assert "committed offsets are unreadable for now" in caplog.text
    assert amounts_of(kafka_bootstrap, output, 60) == Counter(set(range(40)) - {20})
    assert amounts_in(dead_letters(kafka_bootstrap, queue)) == [20]
    backend.close()


def test_a_fenced_member_commits_nothing_and_restarts_under_a_new_id(
    kafka_bootstrap: str,
) -> None:
    topic = unique("fenced")
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_topic(topic)
    group = KafkaConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique("g")})
    tid = unique("tx")
    older = Transaction(backend.new_producer, tid, timeout=10)
    older.stage((topic, 0), 0, [StagedRecord(topic, b"from the older", partition=0)])
    newer = Transaction(backend.new_producer, tid, timeout=10)  # fences the older one
    with pytest.raises(TransactionAbortedError) as aborted:
        older.commit({(topic, 0): 1}, lambda tp: "", group)
    assert aborted.value.fenced
    assert older.transactional_id == f"{tid}.1"  # never fences the newer one back
    newer.stage((topic, 0), 0, [StagedRecord(topic, b"from the newer", partition=0)])
    newer.commit({(topic, 0): 1}, lambda tp: "", group)
    older.stage((topic, 0), 0, [StagedRecord(topic, b"older again", partition=0)])
    older.commit({(topic, 0): 1}, lambda tp: "", group)  # works as <id>.1
    values = [r.value for r in read_topic(kafka_bootstrap, topic, 5, timeout=5)]
    assert values == [b"from the newer", b"older again"]
    older.close()
    newer.close()
    group.close()


class SlowForwarder(Consumer):
    """One output per input to $OUTPUT_TOPIC; a line in $LEDGER per run; 10 ms each."""

    def __init__(self) -> None:
        super().__init__()
        self._publisher = Publisher(json_registry(), KafkaBackend(os.environ["OUTPUT_BOOTSTRAP"]))
        self._ledger = open(os.environ["LEDGER"], "a", buffering=1)  # noqa: SIM115

    def process(self, message: Any, **kwargs: Any) -> None:
        time.sleep(0.01)
        self._publisher.publish(os.environ["OUTPUT_TOPIC"], message)
        self._ledger.write(f"{message.amount}\n")


def test_sigkill_mid_stream_leaves_each_output_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger = unique("eos-kill"), tmp_path / "ledger"
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_queue(queue)
    backend.declare_topic(output)
    publish(backend, queue, 400)
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "kafka": {
                    "bootstrap_servers": kafka_bootstrap,
                    "consumer": {"session.timeout.ms": 6000},
                },
                "messages": {"tests.payments:DoPayment": "json"},
                "queues": {
                    queue: {
                        "consumers": ["tests.integration.test_exactly_once:SlowForwarder"],
                        "processing": "exactly_once",
                    }
                },
                "service": {"metrics_port": 0, "metrics_host": "127.0.0.1"},
            }
        )
    )
    os.environ.update(OUTPUT_BOOTSTRAP=kafka_bootstrap, OUTPUT_TOPIC=output)
    try:
        for _ in range(2):  # two kills, each mid-stream
            member = Service(config, ledger)
            start = len(ledger.read_text().split()) if ledger.exists() else 0
            wait_for(lambda s=start: len(ledger.read_text().split()) >= s + 100, 60)
            member.proc.send_signal(signal.SIGKILL)
            member.proc.wait(10)
            assert member.proc.stderr is not None
            member.proc.stderr.close()
        last = Service(config, ledger)  # same member index: aborts the killed one's transaction
        try:
            wait_for(lambda: committed(kafka_bootstrap, queue, queue) == [400], 90)
        finally:
            assert last.stop() == 0
    finally:
        for name in ("OUTPUT_BOOTSTRAP", "OUTPUT_TOPIC"):
            os.environ.pop(name, None)
    runs = Counter(int(x) for x in ledger.read_text().split())
    assert max(runs.values()) >= 2  # the kills did repeat handlers...
    assert amounts_of(kafka_bootstrap, output, 500) == Counter(range(400))  # ...not outputs
    backend.close()
