"""Review attacks on exactly-once processing (issue 14) on the real broker.

The promise under attack: with ``processing: exactly_once`` a ``read_committed`` reader of
the output topic sees exactly one output per input, and the dead-letter topic each poison
message once, whatever happens (kills, rebalances, zombies, broker freezes, aborts); no
handler runs twice when nothing fails; no partition stops progressing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from service import Consumer, InMemoryBackend, MessageDispatcher, Publisher, RetryPolicy
from service.backends.kafka import KafkaBackend
from service.backends.kafka.backend import ExactlyOnce
from service.backends.kafka.dedup import CompactedTopicCache
from service.backends.kafka.transactions import Transaction
from service.backends.outputs import StagedRecord
from service.dedup.memory import InMemoryCache
from service.errors import ConfigurationError, TransactionAbortedError
from tests.integration.test_exactly_once import run_until
from tests.integration.test_service_run import publish, wait_for
from tests.kafka_helpers import FAST_GROUP, broker_pid, committed, kafka_backend, unique
from tests.payments import DoPayment, json_registry
from tests.support.local_brokers import local_kafka

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


# -- consumers ------------------------------------------------------------------------------
class Forward(Consumer):
    """One output per input; a poison amount always fails; counts its runs."""

    def __init__(
        self,
        publisher: Publisher,
        topic: str,
        *,
        sleep: float = 0.0,
        poison: int = 0,
        ledger: Path | None = None,
        stall: tuple[int, float] = (-1, 0.0),
        oversized: int = -1,
        gate: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self._gate = gate  # every run waits until it is set
        self._oversized = oversized  # this amount's output is 200 kB
        self._stall = stall  # (amount, seconds): its first run blocks that long
        self._publisher, self._topic, self._sleep, self._poison = publisher, topic, sleep, poison
        self._ledger = open(ledger, "a", buffering=1) if ledger else None  # noqa: SIM115
        self._lock = threading.Lock()
        self.runs: Counter[int] = Counter()

    def process(self, message: Any, **kwargs: Any) -> None:
        with self._lock:
            self.runs[message.amount] += 1
        if self._ledger is not None:
            self._ledger.write(f"{message.amount}\n")
        if self._gate is not None:
            self._gate.wait(30)
        if self._sleep:
            time.sleep(self._sleep)
        if message.amount == self._stall[0] and self.runs[message.amount] == 1:
            time.sleep(self._stall[1])
        if self._poison and message.amount % self._poison == 0:
            raise ValueError(f"poison {message.amount}")
        order = "x" * 200_000 if message.amount == self._oversized else message.order_id
        self._publisher.publish(self._topic, DoPayment(order, message.amount))


class EnvForward(Forward):
    """:class:`Forward` configured from the environment (for ``service run`` members)."""

    def __init__(self) -> None:
        super().__init__(
            Publisher(json_registry(), KafkaBackend(os.environ["ATTACK_BOOTSTRAP"])),
            os.environ["ATTACK_OUTPUT"],
            sleep=int(os.environ.get("ATTACK_SLEEP_MS", "0")) / 1000,
            poison=int(os.environ.get("ATTACK_POISON", "0")),
            ledger=Path(os.environ["ATTACK_LEDGER"]),
        )


# -- reading what is there ------------------------------------------------------------------
def read_all(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[Any]:
    """Every readable record of ``topic`` (up to the LSO for read_committed)."""
    consumer = KafkaConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        ended: set[int] = set()
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(ended) < len(partitions) and time.monotonic() < deadline:
            for record in consumer.consume(1000, 0.5):
                error = record.error()
                if error is None:
                    got.append(record)
                elif error.code() == KafkaError._PARTITION_EOF:
                    ended.add(record.partition() or 0)
        assert len(ended) == len(partitions), f"{topic}: not read to its end in 30 s"
        return got
    finally:
        consumer.close()


def amounts(bootstrap: str, topic: str, isolation: str = "read_committed") -> Counter[int]:
    return Counter(json.loads(r.value())["amount"] for r in read_all(bootstrap, topic, isolation))


def dead_amounts(bootstrap: str, topic: str) -> Counter[int]:
    return Counter(json.loads(r.value())["amount"] for r in read_all(bootstrap, topic))


def lag(bootstrap: str, group: str, topic: str, partitions: int, total: int) -> int:
    return total - sum(max(o, 0) for o in committed(bootstrap, group, topic, partitions))


def report(counts: Counter[int], expected: set[int]) -> str:
    lost = sorted(expected - set(counts))
    twice = sorted(a for a, n in counts.items() if n > 1)
    extra = sorted(set(counts) - expected)
    return f"lost {lost[:20]} ({len(lost)}), duplicated {twice[:20]} ({len(twice)}), extra {extra}"


# -- in-process members ---------------------------------------------------------------------
class Member:
    """A dispatcher consuming ``queue`` in a thread, with its own backend and transactional id."""

    def __init__(
        self,
        bootstrap: str,
        queue: str,
        output: str,
        tid: str,
        *,
        concurrency: int = 4,
        ordering: str = "none",
        sleep: float = 0.0,
        poison: int = 0,
        partitions: int = 3,
        stall: tuple[int, float] = (-1, 0.0),
        consumer_config: dict[str, Any] | None = None,
        revoke_timeout: float = 60.0,
        gate: threading.Event | None = None,
        **eos: Any,
    ) -> None:
        self.backend = kafka_backend(
            bootstrap,
            partitions=partitions,
            consumer_config={**FAST_GROUP, **(consumer_config or {})},
        )
        self.backend.declare_queue(queue, exactly_once=ExactlyOnce(tid, **eos))
        self.dispatcher = MessageDispatcher(
            json_registry(),
            backend=self.backend,
            concurrency=concurrency,
            ordering=ordering,  # type: ignore[arg-type]
            retry=RetryPolicy(max_attempts=3, backoff_base=0.05, backoff_max=0.1, jitter=0),
            revoke_timeout=revoke_timeout,
        )
        self.forward = Forward(
            Publisher(json_registry(), self.backend),
            output,
            sleep=sleep,
            poison=poison,
            stall=stall,
            gate=gate,
        )
        self.dispatcher.attach_consumer(self.forward)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(queue,), daemon=True)
        self.thread.start()

    def _run(self, queue: str) -> None:
        try:
            self.dispatcher.consume_loop(queue)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def stop(self) -> None:
        self.dispatcher.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the member did not stop within 60 s"
        self.backend.close()
        assert not self.errors, self.errors


def test_one_member_without_faults_runs_each_handler_once_and_dead_letters_once(
    kafka_bootstrap: str,
) -> None:
    """No fault at all: each handler runs once, each poison message max_attempts times."""
    queue, total = unique("eos-calm"), 600
    output = f"{queue}.out"
    setup = kafka_backend(kafka_bootstrap, partitions=3)
    setup.declare_queue(queue)
    setup.declare_topic(output)
    publish(setup, queue, total)
    member = Member(kafka_bootstrap, queue, output, f"{queue}.a", poison=50)
    try:
        wait_for(lambda: lag(kafka_bootstrap, queue, queue, 3, total) == 0, 60)
    finally:
        member.stop()
    poison = set(range(0, total, 50))
    got = amounts(kafka_bootstrap, output)
    assert got == Counter(set(range(total)) - poison), report(got, set(range(total)) - poison)
    assert dead_amounts(kafka_bootstrap, f"{queue}.dlq") == Counter(poison)
    runs = member.forward.runs
    assert {a: n for a, n in runs.items() if n != (3 if a in poison else 1)} == {}
    setup.close()


def test_members_joining_and_leaving_mid_stream_output_once(kafka_bootstrap: str) -> None:
    """Rebalances (a member joins, another joins, one leaves) with concurrency 4.

    Outputs: each once. Handlers: a commit that races a rebalance is refused by the group
    (ILLEGAL_GENERATION) and the member rewinds *every* partition it holds, so handlers of
    the uncommitted window run again (not a loss nor a duplicate output; counted below).
    """
    # enough that the third member still finds work after two rebalances on a loaded
    # machine (with 1200, a full `make test` once timed out waiting for its 20th)
    queue, total = unique("eos-rebal"), 2400
    output = f"{queue}.out"
    setup = kafka_backend(kafka_bootstrap, partitions=3)
    setup.declare_queue(queue)
    setup.declare_topic(output)
    publish(setup, queue, total)
    first = Member(kafka_bootstrap, queue, output, f"{queue}.a", sleep=0.03)
    second = third = None
    try:
        wait_for(lambda: sum(first.forward.runs.values()) >= 100, 40)
        second = Member(kafka_bootstrap, queue, output, f"{queue}.b", sleep=0.03)
        wait_for(lambda: sum(second.forward.runs.values()) >= 50, 40)  # type: ignore[union-attr]
        third = Member(kafka_bootstrap, queue, output, f"{queue}.c", sleep=0.03)
        wait_for(lambda: sum(third.forward.runs.values()) >= 20, 40)  # type: ignore[union-attr]
        second.stop()  # leaves mid-stream: revocation commits what it did
        wait_for(lambda: lag(kafka_bootstrap, queue, queue, 3, total) == 0, 60)
    finally:
        for member in (first, second, third):
            if member is not None and member.thread.is_alive():
                member.stop()
    got = amounts(kafka_bootstrap, output)
    assert got == Counter(range(total)), report(got, set(range(total)))
    runs = first.forward.runs + second.forward.runs + third.forward.runs  # type: ignore[union-attr]
    print(f"handlers run again by rebalances: {sum(n - 1 for n in runs.values())} of {total}")
    setup.close()


def test_partitions_revoked_while_handlers_run_past_the_revoke_timeout(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Member A's handlers hang (one running per partition) when B joins: A's revocation
    gives up on the running one after 0.2 s (abandoned, its staged outputs dropped) and B
    redoes it; then A's handlers return (their results are discarded), and B leaves."""
    queue, total = unique("eos-abandon"), 60
    output = f"{queue}.out"
    setup = kafka_backend(kafka_bootstrap, partitions=3)
    setup.declare_queue(queue)
    setup.declare_topic(output)
    publish(setup, queue, total)
    options: dict[str, Any] = {"revoke_timeout": 0.2, "ordering": "partition", "sleep": 0.05}
    hung = threading.Event()
    first = Member(kafka_bootstrap, queue, output, f"{queue}.a", gate=hung, **options)
    second = None
    try:
        wait_for(lambda: sum(first.forward.runs.values()) >= 3, 30)  # one per partition
        second = Member(kafka_bootstrap, queue, output, f"{queue}.b", **options)
        wait_for(lambda: sum(second.forward.runs.values()) >= 1, 30)  # type: ignore[union-attr]
        hung.set()
        wait_for(lambda: sum(second.forward.runs.values()) >= 10, 30)  # type: ignore[union-attr]
        second.stop()
        wait_for(lambda: lag(kafka_bootstrap, queue, queue, 3, total) == 0, 60)
    finally:
        hung.set()
        for member in (first, second):
            if member is not None and member.thread.is_alive():
                member.stop()
    got = amounts(kafka_bootstrap, output)
    assert got == Counter(range(total)), report(got, set(range(total)))
    assert any("still running after" in r.getMessage() for r in caplog.records)  # abandoned
    setup.close()


def test_a_member_stuck_past_max_poll_interval_commits_nothing_late(kafka_bootstrap: str) -> None:
    """Inline member A blocks in one handler past max.poll.interval.ms and is dropped from
    the group; B takes the partition and finishes it; then A's handler returns and A's loop
    commits before it learns it lost the partition. Its late transaction must not commit."""
    queue, total = unique("eos-stuck"), 200
    output = f"{queue}.out"
    setup = kafka_backend(kafka_bootstrap, partitions=1)
    setup.declare_queue(queue)
    setup.declare_topic(output)
    publish(setup, queue, total)
    stuck = Member(
        kafka_bootstrap, queue, output, f"{queue}.a", concurrency=1, partitions=1,
        stall=(50, 12.0), consumer_config={"max.poll.interval.ms": 7000},
    )  # fmt: skip
    wait_for(lambda: stuck.forward.runs[50] == 1, 30)
    other = Member(kafka_bootstrap, queue, output, f"{queue}.b", concurrency=1, partitions=1)
    try:
        wait_for(lambda: other.forward.runs[total - 1] >= 1, 40)  # B finished the partition
        wait_for(lambda: stuck.forward.runs[51] >= 1 or stuck.errors, 30)  # A went on
        time.sleep(3)  # A's next commits, if any
    finally:
        stuck.stop()
        other.stop()
    got = amounts(kafka_bootstrap, output)
    assert got == Counter(range(total)), report(got, set(range(total)))
    assert committed(kafka_bootstrap, queue, queue) == [total]
    setup.close()


def test_close_right_after_an_aborted_revocation_commit_commits_no_offset_without_output(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A revocation's commit aborts (a record refused); the member closes before its next poll.

    The abort drops every staged record (also those of the partitions it keeps). Found by
    this review: with the kept partitions' rewind only pending, close() revoked them and
    committed their offsets without their outputs (fixed in 37ebdbd).
    """
    queue = unique("eos-close")
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap, partitions=2)
    backend.declare_queue(
        queue, exactly_once=ExactlyOnce(f"{queue}.tx", interval=3600.0, max_messages=10**6)
    )
    backend.create_topics({output: 1}, config={"max.message.bytes": "2000"})
    publish(backend, queue, 40)
    subscription = backend.subscribe(queue)
    seen: dict[int, list[int]] = {0: [], 1: []}
    deadline = time.monotonic() + 30
    while min(len(v) for v in seen.values()) == 0 or sum(map(len, seen.values())) < 40:
        assert time.monotonic() < deadline, seen
        for message in subscription.poll(100, 0.5):
            first = not seen[message.partition]
            seen[message.partition].append(message.offset)
            staged = [StagedRecord(output, f"{message.partition}:{message.offset}".encode())]
            if first:  # refused by the output topic: the transaction that writes it aborts
                staged.append(StagedRecord(output, b"x" * 5000))
            subscription.acknowledge(message, staged)
    joiner = KafkaConsumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": queue,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            **FAST_GROUP,
        }
    )
    joiner.subscribe([queue])
    deadline = time.monotonic() + 30
    try:
        while not any("transaction aborted" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no revocation commit aborted"
            joiner.poll(0.1)
            list(subscription.poll(100, 0.1))
    finally:
        subscription.close()  # before the next poll (which would start them afresh)
        joiner.close()
    written = Counter(r.value() for r in read_all(kafka_bootstrap, output))
    offsets = committed(kafka_bootstrap, queue, queue, 2)
    missing = [
        f"{p}:{o}"
        for p in (0, 1)
        for o in seen[p]
        if o < offsets[p] and written[f"{p}:{o}".encode()] != 1
    ]
    assert not missing, f"committed {offsets} without their outputs: {missing}"
    backend.close()


@pytest.mark.parametrize("backend_kind", ["kafka", "memory"])
def test_memory_dedup_is_refused_for_an_exactly_once_queue(
    kafka_bootstrap: str, backend_kind: str
) -> None:
    """Found by this review: an InMemoryCache kept the dedup keys of an aborted transaction,
    so every rewound message was acknowledged as a duplicate without its outputs (all lost).
    The combination is refused now (here and, as dedup kind memory, in the config)."""
    queue = unique("eos-memdedup")
    backend: Any
    if backend_kind == "kafka":
        backend = kafka_backend(kafka_bootstrap)
        backend.declare_queue(queue, exactly_once=ExactlyOnce(f"{queue}.tx"))
    else:
        backend = InMemoryBackend()
        backend.declare_queue(queue, exactly_once=True)
    dispatcher = MessageDispatcher(json_registry(), cache=InMemoryCache(), backend=backend)
    dispatcher.attach_consumer(Forward(Publisher(json_registry(), backend), f"{queue}.out"))
    with pytest.raises(ConfigurationError, match="InMemoryCache cannot serve an exactly-once"):
        dispatcher.consume_loop(queue)
    backend.close()


def test_compacted_dedup_with_aborted_transactions_and_concurrency(kafka_bootstrap: str) -> None:
    """Dedup kind compacted, 3 partitions, concurrency 4: two refused outputs abort and rewind."""
    queue = unique("eos-dedup")
    refused_output_run(
        kafka_bootstrap,
        queue,
        lambda backend: CompactedTopicCache(backend, f"{queue}.dedup", partitions=3),
        partitions=3,
        concurrency=4,
        total=300,
    )


def refused_output_run(
    bootstrap: str,
    queue: str,
    cache: Any,
    *,
    partitions: int = 1,
    concurrency: int = 1,
    total: int = 60,
) -> None:
    """Inputs whose output is refused (too large) abort transactions; the rest: once each."""
    output = f"{queue}.out"
    backend = kafka_backend(bootstrap, partitions=partitions)
    backend.declare_queue(queue, exactly_once=ExactlyOnce(f"{queue}.tx"))
    backend.create_topics({output: 1}, config={"max.message.bytes": "100000"})
    publish(backend, queue, total)
    dispatcher = MessageDispatcher(
        json_registry(),
        cache=cache(backend),
        backend=backend,
        concurrency=concurrency,
        ordering="none" if concurrency > 1 else "partition",
        retry=RetryPolicy(max_attempts=2, backoff_base=0.05, backoff_max=0.05, jitter=0),
    )
    forward = Forward(Publisher(json_registry(), backend), output, oversized=30)
    dispatcher.attach_consumer(forward)
    run_until(dispatcher, queue, lambda: lag(bootstrap, queue, queue, partitions, total) == 0, 60)
    got = amounts(bootstrap, output)
    expected = set(range(total)) - {30}  # 30's output is refused: dead-lettered
    assert got == Counter(expected), report(got, expected)
    assert dead_amounts(bootstrap, f"{queue}.dlq") == Counter({30: 1})
    backend.close()


class ToMissingTopic(Consumer):
    """Forwards each input; amount 5's output goes to a topic that does not exist."""

    def __init__(self, publisher: Publisher, topic: str) -> None:
        super().__init__()
        self._publisher, self._topic = publisher, topic

    def process(self, message: Any, **kwargs: Any) -> None:
        topic = f"{self._topic}.missing" if message.amount == 5 else self._topic
        self._publisher.publish(topic, DoPayment(message.order_id, message.amount))


@pytest.mark.parametrize(
    "exactly_once", [pytest.param(False, id="at-least-once"), pytest.param(True, id="exactly-once")]
)
def test_an_output_to_a_missing_topic_fails_only_its_input(
    kafka_bootstrap: str, exactly_once: bool
) -> None:
    """A cluster without topic auto-creation (the producer may not create topics here): one
    handler publishes to a topic that does not exist. At-least-once fails that input only
    (retried, dead-lettered); exactly-once must too, and the rest must go on. (Found by this
    review: exactly-once aborted for ever, blaming no input; fixed in 37ebdbd.)"""
    queue, total = unique("eos-missing"), 30
    output = f"{queue}.out"
    backend = kafka_backend(
        kafka_bootstrap,
        producer_config={
            "allow.auto.create.topics": False,
            "topic.metadata.propagation.max.ms": 1000,
        },
    )
    eos = ExactlyOnce(f"{queue}.tx", timeout=10.0) if exactly_once else None
    backend.declare_queue(queue, exactly_once=eos)
    backend.declare_topic(output)
    publish(backend, queue, total)
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=2, backoff_base=0.05, backoff_max=0.05, jitter=0),
    )
    dispatcher.attach_consumer(ToMissingTopic(Publisher(json_registry(), backend), output))
    run_until(dispatcher, queue, lambda: committed(kafka_bootstrap, queue, queue) == [total], 45)
    got = amounts(kafka_bootstrap, output)
    assert got == Counter(set(range(total)) - {5}), report(got, set(range(total)) - {5})
    assert dead_amounts(kafka_bootstrap, f"{queue}.dlq") == Counter({5: 1})
    backend.close()


class GatedForward(Consumer):
    """Forwards each input to ``topic``; waits at amount ``gate`` until ``opened`` is set."""

    def __init__(self, publisher: Publisher, topic: str, gate: int) -> None:
        super().__init__()
        self._publisher, self._topic, self._gate = publisher, topic, gate
        self.reached = threading.Event()
        self.opened = threading.Event()

    def process(self, message: Any, **kwargs: Any) -> None:
        if message.amount == self._gate and not self.opened.is_set():
            self.reached.set()
            self.opened.wait(30)
        self._publisher.publish(self._topic, DoPayment(message.order_id, message.amount))


def test_an_output_topic_deleted_while_running_fails_its_inputs_and_stalls_nothing(
    kafka_bootstrap: str,
) -> None:
    """No topic auto-creation; the output topic is deleted mid-stream (after the member wrote
    to it): the inputs whose output it refuses are retried then dead-lettered, the member
    goes on (it must not abort for ever, as it did for a topic missing from the start)."""
    queue, total = unique("eos-deleted"), 20
    output = f"{queue}.out"
    backend = kafka_backend(
        kafka_bootstrap,
        producer_config={
            "allow.auto.create.topics": False,
            "topic.metadata.propagation.max.ms": 1000,
        },
    )
    backend.declare_queue(queue, exactly_once=ExactlyOnce(f"{queue}.tx", timeout=10.0))
    backend.declare_topic(output)
    publish(backend, queue, total)
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        concurrency=2,  # the polling thread commits the first ten while 10 waits at the gate
        retry=RetryPolicy(max_attempts=2, backoff_base=0.05, backoff_max=0.05, jitter=0),
    )
    forward = GatedForward(Publisher(json_registry(), backend), output, gate=10)
    dispatcher.attach_consumer(forward)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def delete_at_the_gate() -> None:
        forward.reached.wait(30)
        time.sleep(0.5)  # the first ten are committed (interval 100 ms)
        admin.delete_topics([output])[output].result(10)
        time.sleep(2)
        forward.opened.set()

    def all_committed() -> bool:
        try:  # an offset fetch waits (times out) while a transaction with offsets is open
            return committed(kafka_bootstrap, queue, queue) == [total]
        except KafkaException:
            return False

    deleter = threading.Thread(target=delete_at_the_gate, daemon=True)
    deleter.start()
    run_until(dispatcher, queue, all_committed, 120)  # one commit times out, its abort too
    deleter.join(5)
    dead = dead_amounts(kafka_bootstrap, f"{queue}.dlq")
    assert dead == Counter(range(10, total)), report(dead, set(range(10, total)))
    backend.close()


def test_every_output_refused_by_a_compacted_topic_dead_letters_each_input_once(
    kafka_bootstrap: str,
) -> None:
    """Keyless outputs to a compacted topic: the broker refuses every record of the batch
    (one abort blames one input at a time); each input ends in the DLQ once, none stalls."""
    queue, total = unique("eos-keyless"), 12
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_queue(queue, exactly_once=ExactlyOnce(f"{queue}.tx"))
    backend.create_topics({output: 1}, config={"cleanup.policy": "compact"})
    publish(backend, queue, total)
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=2, backoff_base=0.05, backoff_max=0.05, jitter=0),
    )
    dispatcher.attach_consumer(Forward(Publisher(json_registry(), backend), output))
    run_until(dispatcher, queue, lambda: committed(kafka_bootstrap, queue, queue) == [total], 50)
    assert amounts(kafka_bootstrap, output) == Counter()
    assert dead_amounts(kafka_bootstrap, f"{queue}.dlq") == Counter(range(total))
    backend.close()


def test_a_dead_letter_too_large_for_its_topic_is_written_once_without_payload(
    kafka_bootstrap: str,
) -> None:
    """Poison inputs larger than the dead-letter topic takes: the staged dead letter is
    refused (abort), then written once without its payload; the others' outputs once."""
    queue, total = unique("eos-bigdlq"), 20
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap)
    backend.create_topics({f"{queue}.dlq": 1}, config={"max.message.bytes": "3000"})
    backend.declare_queue(queue, exactly_once=ExactlyOnce(f"{queue}.tx"))
    backend.declare_topic(output)
    publisher = Publisher(json_registry(), backend)
    for i in range(total):  # the poison ones (multiples of 7) carry 10 kB
        order = "p" * 10_000 if i % 7 == 0 else f"o{i}"
        publisher.publish(queue, DoPayment(order, i), key=f"k{i}")
    backend.flush()
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        concurrency=3,
        retry=RetryPolicy(max_attempts=2, backoff_base=0.05, backoff_max=0.05, jitter=0),
    )
    dispatcher.attach_consumer(Forward(publisher, output, poison=7))
    run_until(dispatcher, queue, lambda: committed(kafka_bootstrap, queue, queue) == [total], 50)
    poison = {0, 7, 14}
    got = amounts(kafka_bootstrap, output)
    assert got == Counter(set(range(total)) - poison), report(got, set(range(total)) - poison)
    dead = read_all(kafka_bootstrap, f"{queue}.dlq")
    assert sorted(int(dict(d.headers())["dlq.original_offset"]) for d in dead) == [0, 7, 14]
    assert all(d.value() is None and "dlq.payload_dropped" in dict(d.headers()) for d in dead)
    backend.close()


class LosingForward(Consumer):
    """Forwards each input; while handling amount 3 the member loses its partition."""

    def __init__(self, backend: InMemoryBackend, queue: str) -> None:
        super().__init__()
        self._backend, self._queue = backend, queue
        self._publisher = Publisher(json_registry(), backend)
        self.runs: Counter[int] = Counter()

    def process(self, message: Any, **kwargs: Any) -> None:
        self.runs[message.amount] += 1
        if message.amount == 3 and self.runs[3] == 1:
            self._backend.lose(self._queue, [(self._queue, 0)])  # nothing committed yet
        self._publisher.publish("out", DoPayment(message.order_id, message.amount))


def test_in_memory_exactly_once_after_a_lost_partition() -> None:
    """The in-memory double: a partition lost before any commit; outputs once each."""
    backend = InMemoryBackend()
    backend.declare_queue("q", exactly_once=True)
    publisher = Publisher(json_registry(), backend)
    for i in range(6):
        publisher.publish("q", DoPayment(f"o{i}", i))
    dispatcher = MessageDispatcher(json_registry(), backend=backend)
    forward = LosingForward(backend, "q")
    dispatcher.attach_consumer(forward)
    dispatcher.consume_loop("q")
    outputs = Counter(json.loads(m.value or b"{}")["amount"] for m in backend.records("out"))
    assert outputs == Counter(range(6)), report(outputs, set(range(6)))
    assert forward.runs[0] == 2  # the scenario: the loss made it run again


@pytest.mark.xfail(
    strict=True,
    reason="fencing moves a member to <id>.<n>; if it dies there with a transaction open, "
    "its restart runs under <id> again, so init_transactions does not abort that "
    "transaction (ExactlyOnce's docstring says a restarted member does): read_committed "
    "readers of its partitions (outputs, dedup entries, and offset fetches if offsets were "
    "sent) wait for transaction_timeout (60 s by default)",
)
def test_a_restart_aborts_the_open_transaction_of_its_fenced_incarnation(
    kafka_bootstrap: str,
) -> None:
    """<id> is fenced (a second member took it) and moves to <id>.1, opens a transaction
    there and dies; the member restarts under <id> and commits a record."""
    topic = unique("eos-incarnation")
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_topic(topic)
    group = KafkaConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique("g")})
    tid = unique("tx")
    older = Transaction(backend.new_producer, tid, timeout=10)
    newer = Transaction(backend.new_producer, tid, timeout=10)  # fences the older one
    older.stage((topic, 0), 0, [StagedRecord(topic, b"fenced", partition=0)])
    with pytest.raises(TransactionAbortedError):
        older.commit({(topic, 0): 1}, lambda tp: "", group)
    assert older.transactional_id == f"{tid}.1"
    # <id>.1 opens a transaction, writes, and the process dies (never commits nor aborts)
    dying = older._producer
    dying.begin_transaction()
    dying.produce(topic, b"never committed", partition=0)
    dying.flush(10)
    newer.close()
    restarted = Transaction(backend.new_producer, tid, timeout=10)  # the same member, again
    restarted.stage((topic, 0), 0, [StagedRecord(topic, b"after the restart", partition=0)])
    restarted.commit({(topic, 0): 1}, lambda tp: "", group)
    assert [r.value() for r in read_all(bootstrap=kafka_bootstrap, topic=topic)] == [
        b"after the restart"
    ], "the restart's record is held behind the dead incarnation's open transaction"
    restarted.close()
    group.close()
    backend.close()


# -- service members (subprocesses) ---------------------------------------------------------
def service_config(path: Path, bootstrap: str, queue: str, **queue_options: Any) -> Path:
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": 3,
            "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        },
        "messages": {"tests.payments:DoPayment": "json"},
        "queues": {
            queue: {
                "consumers": ["tests.integration.test_exactly_once_attacks:EnvForward"],
                "processing": "exactly_once",
                "concurrency": 4,
                "ordering": "none",
                "retry": {"max_attempts": 3, "backoff_base": "50ms", "backoff_max": "100ms"},
                **queue_options,
            }
        },
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "20s"},
    }
    path.write_text(json.dumps(config))
    return path


def member_configs(
    tmp_path: Path, bootstrap: str, queue: str, count: int, dedup: bool = True, **transaction: Any
) -> list[Path]:
    """The configs of ``count`` exactly-once members, member i under ``<queue>.m<i>``."""
    return [
        service_config(
            tmp_path / f"c{index}.yaml",
            bootstrap,
            queue,
            **({"dedup": {"kind": "compacted"}} if dedup else {}),
            transaction={"transactional_id": f"{queue}.m{index}", **transaction},
        )
        for index in range(count)
    ]


class Proc:
    """``python -m service run`` with its stderr in a file (never a pipe that fills up)."""

    def __init__(self, config: Path, log: Path, **env: str) -> None:
        self.log = log
        environ = {
            k: v
            for k, v in os.environ.items()
            if k not in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL")
        }
        environ.update(PYTHONPATH=str(ROOT), **env)
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "-c", str(config)],
            cwd=ROOT,
            env=environ,
            stdout=self._out,
            stderr=self._out,
        )
        wait_for(lambda: self.saw(r"assigned") or self.proc.poll() is not None, 40)
        assert self.proc.poll() is None, self.tail()

    def saw(self, pattern: str) -> bool:
        return re.search(pattern, self.log.read_text(errors="replace")) is not None

    def last_stamp(self) -> datetime:
        """When the member's consume loop last logged (not its handlers' failures)."""
        stamps = [
            (day_time, millis)
            for day_time, millis, name in re.findall(
                r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ ([\w.]+):",
                self.log.read_text(errors="replace"),
                re.MULTILINE,
            )
            if name != "service.dispatcher"
        ]
        if not stamps:
            return datetime.min
        day_time, millis = stamps[-1]
        return datetime.strptime(day_time, "%Y-%m-%d %H:%M:%S").replace(
            microsecond=int(millis) * 1000
        )

    def tail(self, lines: int = 40) -> str:
        return "".join(self.log.read_text(errors="replace").splitlines(True)[-lines:])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._out.close()


def ledger_runs(ledger: Path) -> Counter[int]:
    return Counter(int(x) for x in ledger.read_text().split()) if ledger.exists() else Counter()


def attack_inputs(
    bootstrap: str, tmp_path: Path, prefix: str, total: int, sleep_ms: int, poison: int = 0
) -> tuple[str, str, Path, KafkaBackend, dict[str, str]]:
    """A fresh queue of ``total`` inputs (3 partitions), its output topic, the members' ledger,
    the setup backend and the members' environment (EnvForward: sleep, poison multiples)."""
    queue = unique(prefix)
    output, ledger = f"{queue}.out", tmp_path / "ledger"
    setup = kafka_backend(bootstrap, partitions=3)
    setup.declare_queue(queue)
    setup.declare_topic(output)
    publish(setup, queue, total)
    env = {
        "ATTACK_BOOTSTRAP": bootstrap,
        "ATTACK_OUTPUT": output,
        "ATTACK_LEDGER": str(ledger),
        "ATTACK_SLEEP_MS": str(sleep_ms),
    }
    if poison:
        env["ATTACK_POISON"] = str(poison)
    return queue, output, ledger, setup, env


def wait_progress(
    bootstrap: str, queue: str, total: int, procs: list[Proc], timeout: float
) -> None:
    """Until the group committed every input; fails naming the members' last log lines."""
    try:
        wait_for(lambda: lag(bootstrap, queue, queue, 3, total) == 0, timeout)
    except AssertionError:
        offsets = committed(bootstrap, queue, queue, 3)
        for proc in procs:  # each member prints where its threads are (SIGUSR1)
            if proc.proc.poll() is None:
                proc.signal(signal.SIGUSR1)
        time.sleep(1)
        logs = "\n".join(p.tail(80) for p in procs)
        raise AssertionError(f"stalled at committed {offsets} of {total}:\n{logs}") from None


def check_exactly_once(bootstrap: str, queue: str, output: str, total: int, poison: int) -> None:
    bad = set(range(0, total, poison)) if poison else set()
    good = set(range(total)) - bad
    got = amounts(bootstrap, output)
    assert got == Counter(good), report(got, good)
    dead = dead_amounts(bootstrap, f"{queue}.dlq")
    assert dead == Counter(bad), report(dead, bad)


def test_zombie_member_sigstopped_past_its_session_then_resumed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGSTOP a member mid-stream for 2 session timeouts, the group moves on, SIGCONT it."""
    total, poison = 1500, 97
    queue, output, ledger, setup, env = attack_inputs(
        kafka_bootstrap, tmp_path, "eos-zombie", total, sleep_ms=15, poison=poison
    )
    configs = member_configs(tmp_path, kafka_bootstrap, queue, 2)
    procs = [Proc(config, tmp_path / f"m{i}.log", **env) for i, config in enumerate(configs)]
    zombie = procs[0]
    try:
        wait_for(lambda: sum(ledger_runs(ledger).values()) >= 300, 40)
        zombie.signal(signal.SIGSTOP)
        time.sleep(14)  # > 2 session timeouts: the group gives its partitions to the other
        zombie.signal(signal.SIGCONT)
        wait_progress(kafka_bootstrap, queue, total, procs, 60)
    finally:
        codes = [p.stop() for p in procs]
    check_exactly_once(kafka_bootstrap, queue, output, total, poison)
    assert codes == [0, 0], "\n".join(p.tail() for p in procs)
    setup.close()


def test_sigkills_and_graceful_restarts_with_dedup_and_poison(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two members; one is SIGKILLed three times and restarted, the other restarted by SIGTERM."""
    total, poison = 2000, 89
    queue, output, ledger, setup, env = attack_inputs(
        kafka_bootstrap, tmp_path, "eos-kills", total, sleep_ms=10, poison=poison
    )
    configs = member_configs(tmp_path, kafka_bootstrap, queue, 2, interval="200ms")
    procs = [Proc(configs[i], tmp_path / f"m{i}.log", **env) for i in range(2)]
    try:
        for round_ in range(4):
            seen = sum(ledger_runs(ledger).values())
            wait_for(lambda s=seen: sum(ledger_runs(ledger).values()) >= s + 150, 40)
            if round_ == 2:
                assert procs[1].stop() == 0, procs[1].tail()
                procs[1] = Proc(configs[1], tmp_path / "m1.log", **env)
            else:
                procs[0].kill()
                procs[0] = Proc(configs[0], tmp_path / "m0.log", **env)
        wait_progress(kafka_bootstrap, queue, total, procs, 90)
    finally:
        codes = [p.stop() for p in procs]
    check_exactly_once(kafka_bootstrap, queue, output, total, poison)
    assert codes == [0, 0], "\n".join(p.tail() for p in procs)
    setup.close()


def test_broker_frozen_past_the_session_timeout(tmp_path: Path) -> None:
    """SIGSTOP the broker for 15 s (> session timeout, < transaction call timeout), two members."""
    workdir = tmp_path / "own-broker"
    with local_kafka(workdir) as bootstrap:
        total, poison = 1500, 71
        queue, output, ledger, setup, env = attack_inputs(
            bootstrap, tmp_path, "eos-freeze", total, sleep_ms=15, poison=poison
        )
        configs = member_configs(tmp_path, bootstrap, queue, 2, dedup=False)
        procs = [Proc(config, tmp_path / f"m{i}.log", **env) for i, config in enumerate(configs)]
        broker = broker_pid(workdir)
        try:
            wait_for(lambda: sum(ledger_runs(ledger).values()) >= 300, 40)
            os.kill(broker, signal.SIGSTOP)
            try:
                time.sleep(15)
            finally:
                os.kill(broker, signal.SIGCONT)
            resumed = datetime.now()
            wait_progress(bootstrap, queue, total, procs, 120)
            # a member whose commit (a revocation's) met the freeze may sit in it for up to
            # the transaction call timeouts (commit, then abort: 30 s each) before it logs
            # again; stopped before, it overruns its 20 s shutdown. Each must come back.
            try:
                wait_for(lambda: all(p.last_stamp() > resumed for p in procs), 120)
            except AssertionError:
                raise AssertionError(
                    "a member did not come back: " + "\n".join(p.tail() for p in procs)
                ) from None
        finally:
            codes = [p.stop() for p in procs]
        check_exactly_once(bootstrap, queue, output, total, poison)
        assert codes == [0, 0], "\n".join(p.tail() for p in procs)
        setup.close()


def test_a_commit_meeting_a_frozen_broker_ends_committed_or_aborted(
    tmp_path: Path,
) -> None:
    """The broker freezes while a transaction's records are in flight and its commit runs."""
    workdir = tmp_path / "own-broker"
    with local_kafka(workdir) as bootstrap:
        topic = unique("eos-frozen-commit")
        backend = kafka_backend(bootstrap)
        backend.declare_topic(topic)
        group = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": unique("g")})
        transaction = Transaction(backend.new_producer, unique("tx"), timeout=3)
        broker = broker_pid(workdir)
        outcome: list[BaseException | None] = []

        def commit() -> None:
            try:
                transaction.commit({(topic, 0): 20}, lambda tp: "", group)
                outcome.append(None)
            except BaseException as exc:  # judged below
                outcome.append(exc)

        # 40 MB: the freeze finds produce requests in flight (sent, not answered)
        records = [StagedRecord(topic, b"x" * 20_000, partition=0) for _ in range(2000)]
        transaction.stage((topic, 0), 0, records)
        thread = threading.Thread(target=commit, daemon=True)
        thread.start()
        time.sleep(0.5)
        os.kill(broker, signal.SIGSTOP)
        try:
            thread.join(12)  # the commit and its abort both meet the frozen broker
        finally:
            os.kill(broker, signal.SIGCONT)
        thread.join(60)
        assert outcome, "the commit did not return within 60 s of the broker's return"
        first = outcome[0]  # committed (None) or aborted: both are honest outcomes
        assert first is None or isinstance(first, TransactionAbortedError), repr(first)
        transaction.stage((topic, 0), 0, [StagedRecord(topic, b"kept", partition=0)])
        transaction.commit({(topic, 0): 1}, lambda tp: "", group)  # and the next one works
        values = [r.value() for r in read_all(bootstrap, topic)]
        assert len(values) == (2001 if first is None else 1) and values[-1] == b"kept"
        transaction.close()
        group.close()
        backend.close()


def test_two_members_with_the_same_default_transactional_id(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two ``service run`` on one host without --processes: both default to the same id
    (<group>.<queue>.<host>.0); the later fences the earlier, which restarts under <id>.1.
    Then the fenced one is SIGKILLed and started again (under <id> once more)."""
    total = 1500
    queue, output, ledger, setup, env = attack_inputs(
        kafka_bootstrap, tmp_path, "eos-sameid", total, sleep_ms=10
    )
    config = service_config(tmp_path / "c.yaml", kafka_bootstrap, queue)
    procs = [Proc(config, tmp_path / "m0.log", **env)]
    try:
        wait_for(lambda: sum(ledger_runs(ledger).values()) >= 200, 40)
        procs.append(Proc(config, tmp_path / "m1.log", **env))
        wait_for(lambda: procs[0].saw(r"fenced") or procs[0].proc.poll() is not None, 40)
        wait_for(lambda: sum(ledger_runs(ledger).values()) >= 700, 40)
        procs[0].kill()
        procs[0] = Proc(config, tmp_path / "m0.log", **env)
        wait_progress(kafka_bootstrap, queue, total, procs, 90)
    finally:
        codes = [p.stop() for p in procs]
    check_exactly_once(kafka_bootstrap, queue, output, total, 0)
    assert codes == [0, 0], "\n".join(p.tail() for p in procs)
    setup.close()


def test_mixed_faults_on_three_members_with_dedup_and_poison(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """One run, every fault in turn: a SIGKILL, a zombie (SIGSTOP past the session, SIGCONT),
    a graceful restart, a third member joining then leaving; dedup on, poison inputs."""
    total, poison = 4000, 83
    queue, output, ledger, setup, env = attack_inputs(
        kafka_bootstrap, tmp_path, "eos-mixed", total, sleep_ms=40, poison=poison
    )
    configs = member_configs(tmp_path, kafka_bootstrap, queue, 3)
    procs = [Proc(configs[i], tmp_path / f"m{i}.log", **env) for i in range(2)]

    def runs_reach(extra: int) -> None:
        seen = sum(ledger_runs(ledger).values())
        wait_for(lambda: sum(ledger_runs(ledger).values()) >= seen + extra, 40)

    try:
        runs_reach(300)
        procs[0].kill()  # SIGKILL mid-stream
        procs[0] = Proc(configs[0], tmp_path / "m0.log", **env)
        runs_reach(150)
        procs[1].signal(signal.SIGSTOP)  # a zombie
        time.sleep(10)
        procs[1].signal(signal.SIGCONT)
        runs_reach(150)
        procs.append(Proc(configs[2], tmp_path / "m2.log", **env))  # a third joins
        runs_reach(150)
        assert procs[0].stop() == 0, procs[0].tail()  # graceful restart
        procs[0] = Proc(configs[0], tmp_path / "m0.log", **env)
        runs_reach(150)
        assert procs.pop().stop() == 0  # the third leaves
        wait_progress(kafka_bootstrap, queue, total, procs, 90)
    finally:
        codes = [p.stop() for p in procs]
    check_exactly_once(kafka_bootstrap, queue, output, total, poison)
    assert codes == [0, 0], "\n".join(p.tail() for p in procs)
    setup.close()
