"""Deduplication across rebalances: the dedup faults reproduced in issue 12, on the real broker.

The promise: a consumer that succeeded on a message is not run again while the dedup store
holds its entry, whatever the group does meanwhile (a member frozen past
``max.poll.interval.ms`` losing its partitions, a revocation while work is in flight); the
store's memory follows the window, not the uptime; a dedup topic that cannot hold the
input's partitions is refused with a message that says so.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from service import MessageDispatcher, ServiceError
from service.backends.kafka import KafkaBackend
from service.backends.kafka.dedup import CompactedTopicCache
from tests.integration.loop_faults_support import (
    IdLedger,
    Loop,
    Offsets,
    Record,
    create_topic,
    ledger_ids,
    produce,
    wait_until,
)
from tests.kafka_helpers import FAST_GROUP, kafka_backend, unique
from tests.payments import json_registry

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def backends() -> Iterator[list[KafkaBackend]]:
    """Backends a test makes, closed at the end."""
    made: list[KafkaBackend] = []
    yield made
    for backend in made:
        with contextlib.suppress(ServiceError):
            backend.close()


def group_members(bootstrap: str, group: str) -> int:
    """How many members ``group`` has now."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.describe_consumer_groups([group]).values()
    return len(future.result(10).members)


def start_member(bootstrap: str, queue: str, ledger: Path, *options: str) -> subprocess.Popen[str]:
    """A group member in its own process (``loop_faults_worker``), once it is built."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.loop_faults_worker",
            bootstrap,
            queue,
            str(ledger),
            *options,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline().strip()
    proc.stdout.close()
    assert ready == "ready", f"member did not start (exit {proc.poll()})"
    return proc


def dedup_end(bootstrap: str, topic: str, partitions: int) -> int:
    """Records written to the dedup topic so far (its end offsets, summed)."""
    offsets = Offsets(bootstrap, unique("dedup-reader"), topic, partitions)
    try:
        return sum(offsets.ends())
    finally:
        offsets.close()


# -- fault 4 -------------------------------------------------------------------------------
def test_a_lost_partition_comes_back_with_its_dedup_entries(
    kafka_bootstrap: str, backends: list[KafkaBackend], tmp_path: Path
) -> None:
    """Fault 4: a lost assignment (``on_lost``) is not told to the dedup store.

    Member A freezes in a consumer past ``max.poll.interval.ms`` and loses its partition;
    member B processes ids 20-29 (entries durable) and is SIGKILLed before committing; A
    gets the partition back and must skip ids 20-29: dedup holds their entries.
    """
    queue, ledger = unique("f4"), tmp_path / "ledger-b"
    create_topic(kafka_bootstrap, queue, 1)
    backend = kafka_backend(
        kafka_bootstrap, consumer_config={**FAST_GROUP, "max.poll.interval.ms": 6000}
    )
    backends.append(backend)
    backend.declare_queue(queue)
    stalled, release = threading.Event(), threading.Event()

    def freeze_once(message: Any, message_id: str) -> None:
        if message_id == "freeze" and not stalled.is_set():
            stalled.set()
            release.wait(60)  # no poll meanwhile: the group moves on without A

    a = IdLedger("A", hook=freeze_once)
    cache = CompactedTopicCache(backend, f"{queue}.dedup", partitions=1, window=3600.0)
    dispatcher = MessageDispatcher(json_registry(), cache=cache, backend=backend, poll_timeout=0.2)
    dispatcher.attach_consumer(a)
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    loop = Loop(dispatcher, queue).start()
    member_b: subprocess.Popen[str] | None = None
    later = [f"id-{i}" for i in range(20, 30)]
    try:
        produce(kafka_bootstrap, queue, [Record(0, f"id-{i}") for i in range(19)])
        assert wait_until(lambda: offsets.committed() == [19], 20), offsets.committed()
        member_b = start_member(kafka_bootstrap, queue, ledger, "--no-commit")
        assert wait_until(lambda: group_members(kafka_bootstrap, queue) == 2, 20, step=0.5)
        produce(kafka_bootstrap, queue, [Record(0, "freeze")])
        assert stalled.wait(10), "A never reached the freezing message"
        # published after A took its batch: A can only meet them again after the rebalance
        produce(kafka_bootstrap, queue, [Record(0, i) for i in later])
        assert wait_until(lambda: set(later) <= set(ledger_ids(ledger)), 30), (
            f"B did not take over: its ledger holds {ledger_ids(ledger)}"
        )
        # A's 19 entries and B's 11 (freeze, ids 20-29) are durable in the dedup topic
        assert wait_until(lambda: dedup_end(kafka_bootstrap, f"{queue}.dedup", 1) >= 30, 10)
        member_b.send_signal(signal.SIGKILL)
        member_b.wait(10)
        assert offsets.committed() == [19], "B committed before it was killed"
        release.set()
        assert wait_until(lambda: offsets.committed() == [30], 40, step=0.5), (
            f"A did not finish the partition it got back: committed {offsets.committed()}, "
            f"loop error {loop.error!r}"
        )
    finally:
        release.set()
        if member_b is not None and member_b.poll() is None:
            member_b.kill()
            member_b.wait(10)
        loop.stop(20)
        offsets.close()
    again = [i for i in a.ids if i in later]
    assert not again, (
        f"A ran {again} again after getting its lost partition back, although B's dedup "
        f"entries for them were durable (A's dedup state of the lost partition was kept, "
        f"so it was not restored)"
    )


# -- fault 5 -------------------------------------------------------------------------------
def test_a_store_during_revocation_does_not_skip_the_restore(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Fault 5: with concurrency, a store during revocation recreates the dedup partition.

    A (concurrency 4) works slowly on two partitions; B joins and takes one while A has a
    message of it in flight; B finishes that partition and leaves; the same 24 message ids
    are published again. Each id must run once in all.
    """
    queue, partitions, per_partition = unique("f5"), 2, 12
    create_topic(kafka_bootstrap, queue, partitions)
    records = [
        Record(p, f"p{p}-{i}", amount=i) for i in range(per_partition) for p in range(partitions)
    ]
    produce(kafka_bootstrap, queue, records)
    slow = threading.Event()
    slow.set()

    def pace(message: Any, message_id: str) -> None:
        if slow.is_set():
            time.sleep(0.5)

    def member(name: str, concurrency: int, hook: Any = None) -> tuple[Loop, IdLedger]:
        backend = kafka_backend(kafka_bootstrap)
        backends.append(backend)
        backend.declare_queue(queue)
        cache = CompactedTopicCache(backend, f"{queue}.dedup", partitions=partitions, window=3600.0)
        ledger = IdLedger(name, hook=hook)
        dispatcher = MessageDispatcher(
            json_registry(),
            cache=cache,
            backend=backend,
            poll_timeout=0.2,
            concurrency=concurrency,
            ordering="partition",
        )
        dispatcher.attach_consumer(ledger)
        return Loop(dispatcher, queue), ledger

    loop_a, a = member("A", 4, pace)
    loop_b, b = member("B", 1)
    offsets = Offsets(kafka_bootstrap, queue, queue, partitions)
    try:
        loop_a.start()
        assert wait_until(lambda: len(a.ids) >= 2, 20), "A did not start"
        loop_b.start()  # joins: one partition is revoked from A with a message in flight
        assert wait_until(lambda: len(b.ids) >= 1, 20), "B was given no partition"
        assert wait_until(lambda: offsets.committed() == [per_partition] * partitions, 30), (
            f"first round not committed: {offsets.committed()}"
        )
        assert loop_b.stop(20), "B did not stop"  # leaves: its partition goes back to A
        slow.clear()
        produce(kafka_bootstrap, queue, records)  # the same ids again
        done = wait_until(
            lambda: offsets.committed() == [2 * per_partition] * partitions, 30, step=0.5
        )
        assert done, f"second round not committed: {offsets.committed()}"
    finally:
        loop_b.stop(20)
        loop_a.stop(20)
        offsets.close()
    twice = sorted(i for i, n in Counter(a.ids + b.ids).items() if n > 1)
    assert not twice, (
        f"{len(twice)} of {len(records)} re-published ids ran again although their dedup "
        f"entries were durable: {twice} (A ran {len(a.ids)}, B ran {len(b.ids)})"
    )


# -- expired entries ---------------------------------------------------------------------
def test_expired_dedup_entries_are_evicted_while_the_partition_stays_assigned(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Memory follows the window, not the uptime: expired entries go while assigned."""
    queue, window, burst = unique("ev"), 2.0, 200
    create_topic(kafka_bootstrap, queue, 1)
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue)
    cache = CompactedTopicCache(backend, f"{queue}.dedup", partitions=1, window=window)
    consumer = IdLedger()
    dispatcher = MessageDispatcher(json_registry(), cache=cache, backend=backend, poll_timeout=0.2)
    dispatcher.attach_consumer(consumer)
    loop = Loop(dispatcher, queue).start()
    held: list[int] = []
    try:
        produce(kafka_bootstrap, queue, [Record(0, f"burst-{i}") for i in range(burst)])
        assert wait_until(lambda: len(consumer.ids) == burst, 20), len(consumer.ids)
        peak = len(cache)
        # a trickle of 2 messages a second for 20 s: the window holds ~4 of them
        for n in range(40):
            produce(kafka_bootstrap, queue, [Record(0, f"trickle-{n}")])
            time.sleep(0.5)
            held.append(len(cache))
            if held[-1] <= burst // 4:
                break
    finally:
        loop.stop(20)
    assert held[-1] <= burst // 4, (
        f"the {burst} entries of a {window} s window are never evicted while the partition "
        f"stays assigned: the store held {peak} after the burst and still {held[-1]} "
        f"{len(held) * 0.5:.0f} s later (samples {held[::4]})"
    )


# -- fewer dedup partitions than input partitions --------------------------------------------
def test_a_dedup_topic_with_fewer_partitions_than_its_input_is_a_clear_error(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """A 2-partition dedup topic for a 6-partition input: refused, naming both counts."""
    queue, dedup = unique("dp"), unique("dp-dedup")
    create_topic(kafka_bootstrap, queue, 6)
    create_topic(kafka_bootstrap, dedup, 2, {"cleanup.policy": "compact,delete"})
    produce(kafka_bootstrap, queue, [Record(p, f"m{p}") for p in range(6)])
    backend = kafka_backend(kafka_bootstrap, partitions=6)
    backends.append(backend)
    backend.declare_queue(queue)
    consumer = IdLedger()
    errors: list[BaseException] = []
    holder: list[MessageDispatcher] = []

    def run() -> None:
        try:
            cache = CompactedTopicCache(backend, dedup, partitions=6, window=3600.0)
            dispatcher = MessageDispatcher(json_registry(), cache=cache, backend=backend)
            dispatcher.attach_consumer(consumer)
            holder.append(dispatcher)
            dispatcher.consume_loop(queue)
        except BaseException as exc:  # the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        for dispatcher in holder:
            dispatcher.stop()
        thread.join(20)
    assert errors, (
        f"a 2-partition dedup topic for a 6-partition input was accepted; processed "
        f"{consumer.ids} (alive after 30 s: {thread.is_alive()})"
    )
    [error] = errors
    text = str(error).replace(dedup, "<dedup>").replace(queue, "<queue>")
    assert isinstance(error, ServiceError), repr(error)
    assert re.search(r"\b6\b", text) and re.search(r"\b2\b", text), (
        f"the error does not name both partition counts (6 input, 2 dedup): "
        f"{type(error).__name__}: {text}"
    )
    assert "permission" not in text.lower(), f"the error blames permissions: {text}"
    assert consumer.ids == [], "messages ran without their dedup state"
