"""Attacks on the one consume loop and its checkpoint (issue 12 review), on the real broker.

Each test drives one edge on purpose and asserts a promise of the loop's contract, read
from the broker where it can be (committed offsets, dead-letter records) and from a ledger
of what the consumers ran:

* nothing is committed past a message that is neither processed nor dead-lettered;
* every message ends processed or dead-lettered, and no partition stalls for ever;
* ``ordering`` holds: a message runs only after the earlier messages of its lane;
* failed attempts survive a restart (commit metadata), and garbage metadata is harmless;
* the loop stops loudly (``consume_loop`` raises) on what it cannot pass, and never hangs.

Tests that pass prove an edge holds; a test that fails is a bug, reported with its evidence
(they are kept failing until the service is fixed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from service import Consumer, MessageDispatcher, RetryPolicy, ServiceError
from service.backends.kafka import KafkaBackend
from service.backends.kafka.dedup import CompactedTopicCache
from tests.integration.loop_faults_support import (
    Loop,
    Offsets,
    Record,
    create_topic,
    delete_topic,
    produce,
    read_all,
    wait_until,
)
from tests.kafka_helpers import FAST_GROUP, kafka_backend, unique
from tests.payments import json_registry

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(max_attempts=5, backoff_base=0.05, backoff_max=0.2, jitter=0)


@pytest.fixture
def backends() -> Iterator[list[KafkaBackend]]:
    """Backends a test makes; closed at the end (refused records are what some tests cause)."""
    made: list[KafkaBackend] = []
    yield made
    for backend in made:
        with contextlib.suppress(ServiceError):
            backend.close()


class Runs(Consumer):
    """Records every run as ``(offset, attempt, message_id, outcome)``; thread-safe.

    ``hook(record, message_id)`` runs first; raising from it fails the run (outcome
    ``failed``), returning normally makes it ``ok``.
    """

    def __init__(self, hook: Callable[[Any, str], None] | None = None) -> None:
        super().__init__()
        self.runs: list[tuple[int, int, str, str]] = []
        self._hook = hook
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """Fixed, so dedup keys are the same in every dispatcher."""
        return "tests.integration.loop_attacks.Runs"

    def process(self, message: Any, **kwargs: Any) -> None:
        """Run the hook and record the outcome."""
        record = kwargs["record"]
        message_id = str(kwargs.get("message_id"))
        outcome = "ok"
        try:
            if self._hook is not None:
                self._hook(record, message_id)
        except Exception:
            outcome = "failed"
            raise
        finally:
            with self._lock:
                self.runs.append((record.offset, record.attempt, message_id, outcome))

    def ok_ids(self) -> list[str]:
        """The message ids that ran successfully, in order."""
        with self._lock:
            return [m for _, _, m, outcome in self.runs if outcome == "ok"]

    def of(self, message_id: str) -> list[tuple[int, int, str, str]]:
        """The runs of ``message_id``."""
        with self._lock:
            return [run for run in self.runs if run[2] == message_id]


def dispatcher_for(backend: KafkaBackend, consumer: Consumer, **options: Any) -> MessageDispatcher:
    """A JSON dispatcher on ``backend`` with ``consumer`` attached."""
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("poll_timeout", 0.2)
    dispatcher = MessageDispatcher(json_registry(), backend=backend, **options)
    dispatcher.attach_consumer(consumer)
    return dispatcher


def records(count: int, partition: int = 0, prefix: str = "m") -> list[Record]:
    """``count`` DoPayment records for ``partition``, ids ``<prefix>0..``."""
    return [Record(partition, f"{prefix}{i}", amount=i) for i in range(count)]


# -- BaseException subclasses and coroutines ------------------------------------------------
class Fatal(BaseException):
    """Not an Exception: the decider does not catch it."""


def test_a_consumer_raising_a_base_exception_stops_the_loop_and_commits_nothing_past_it(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """concurrency 4, a consumer raising a BaseException subclass on offset 5 of 10.

    The loop must stop loudly (consume_loop raises it) and commit nothing past offset 5; a
    restarted dispatcher whose consumer no longer raises then processes it.
    """
    queue = unique("atk-base")
    create_topic(kafka_bootstrap, queue, 1)
    produce(kafka_bootstrap, queue, records(10))
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue)

    def fatal(record: Any, message_id: str) -> None:
        if message_id == "m5":
            raise Fatal("not an Exception")

    first = Runs(fatal)
    loop = Loop(dispatcher_for(backend, first, concurrency=4, ordering="none"), queue).start()
    assert wait_until(lambda: loop.ended, 20), "consume_loop did not stop on a BaseException"
    assert isinstance(loop.error, Fatal), f"consume_loop ended with {loop.error!r}"
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        committed = offsets.committed()[0]
        assert committed <= 5, f"committed {committed}, past offset 5 whose consumer raised"
        second = Runs()
        again = Loop(dispatcher_for(backend, second, concurrency=4), queue).start()
        try:
            assert wait_until(lambda: "m5" in second.ok_ids(), 20), (
                f"m5 not processed after the restart (runs {second.runs}, error {again.error!r})"
            )
            assert wait_until(lambda: offsets.committed()[0] == 10, 10), (
                f"committed {offsets.committed()} after the restart, not 10"
            )
        finally:
            assert again.stop(20)
    finally:
        offsets.close()


class AsyncRaising(Consumer):
    """An ``async def`` consumer that raises ``error()`` on message ``m1``."""

    def __init__(self, error: Callable[[], BaseException]) -> None:
        super().__init__()
        self._error = error
        self.ids: list[str] = []

    async def _run(self, message_id: str) -> None:
        await asyncio.sleep(0)
        if message_id == "m1":
            raise self._error()
        self.ids.append(message_id)

    def process(self, message: Any, **kwargs: Any) -> Any:
        """Return the coroutine (the dispatcher runs it on its event loop)."""
        return self._run(str(kwargs.get("message_id")))


@pytest.mark.parametrize("concurrency", [1, 2])
def test_an_async_consumer_raising_system_exit_stops_the_loop_instead_of_hanging(
    kafka_bootstrap: str, backends: list[KafkaBackend], concurrency: int
) -> None:
    """A coroutine raising SystemExit: like a plain consumer's, the loop must stop loudly.

    A plain consumer raising SystemExit ends consume_loop at once (the BaseException test
    above); the same consumer written ``async def`` must not hang the loop.
    """
    queue = unique("atk-aexit")
    create_topic(kafka_bootstrap, queue, 1)
    produce(kafka_bootstrap, queue, records(4))
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue)
    consumer = AsyncRaising(lambda: SystemExit(3))
    dispatcher = dispatcher_for(backend, consumer, concurrency=concurrency)
    loop = Loop(dispatcher, queue).start()
    ended = wait_until(lambda: loop.ended, 12)
    stopped = ended
    if not ended:
        dispatcher.stop()
        stopped = wait_until(lambda: loop.ended, 5)
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    committed = offsets.committed()[0]
    offsets.close()
    assert committed <= 1, f"committed {committed}, past m1 whose coroutine raised SystemExit"
    assert ended, (
        f"consume_loop neither raised nor returned within 12 s of a coroutine raising "
        f"SystemExit (processed {consumer.ids}, committed {committed}); after stop() it "
        f"{'ended' if stopped else 'still hangs'}"
    )
    assert isinstance(loop.error, SystemExit), f"consume_loop ended with {loop.error!r}"


def test_an_async_consumer_failing_is_retried_then_dead_lettered(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """A coroutine raising an Exception (and one cancelled) fails the message like any other."""
    queue = unique("atk-afail")
    create_topic(kafka_bootstrap, queue, 1)
    produce(kafka_bootstrap, queue, records(4))
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue)
    consumer = AsyncRaising(asyncio.CancelledError)
    retry = RetryPolicy(max_attempts=3, backoff_base=0.05, backoff_max=0.1, jitter=0)
    loop = Loop(dispatcher_for(backend, consumer, retry=retry, concurrency=2), queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        assert wait_until(lambda: offsets.committed()[0] == 4 or loop.ended, 25), (
            f"committed {offsets.committed()}, not 4 (error {loop.error!r})"
        )
    finally:
        assert loop.stop(20)
        offsets.close()
    letters = read_all(kafka_bootstrap, f"{queue}.dlq")
    assert [(lt.original[2], lt.header("dlq.attempts")) for lt in letters] == [("1", "3")]
    assert sorted(consumer.ids) == ["m0", "m2", "m3"]


# -- commit metadata ------------------------------------------------------------------------
def commit_with_note(bootstrap: str, group: str, topic: str, offset: int, note: str) -> None:
    """Commit ``offset`` of ``topic[0]`` for ``group`` with metadata ``note`` (as a tool would)."""
    consumer = RawConsumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset, note)], asynchronous=False)
        [stored] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert (stored.offset, stored.metadata) == (offset, note)
    finally:
        consumer.close()


@pytest.mark.parametrize(
    "note",
    [
        "a1 0:x 1:-2 :: 0: :3 junk",  # unreadable items
        "a1 ",  # nothing in it
        "not ours at all",  # another tool's metadata
        "a1 0:2²",  # a digit Python's isdigit() accepts and int() refuses
        "a1 ²:1",
    ],
)
def test_garbage_commit_metadata_neither_crashes_nor_stalls_the_partition(
    kafka_bootstrap: str, backends: list[KafkaBackend], note: str
) -> None:
    """Commit metadata the service did not write is ignored: the messages are processed."""
    queue = unique("atk-note")
    create_topic(kafka_bootstrap, queue, 1)
    produce(kafka_bootstrap, queue, records(3))
    commit_with_note(kafka_bootstrap, queue, queue, 0, note)
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue)
    consumer = Runs()
    loop = Loop(dispatcher_for(backend, consumer), queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        done = wait_until(lambda: offsets.committed()[0] == 3 or loop.ended, 20)
        assert done and not loop.ended, (
            f"with commit metadata {note!r}: consume_loop ended with {loop.error!r}; "
            f"processed {consumer.ok_ids()}, committed {offsets.committed()}"
        )
        assert consumer.ok_ids() == ["m0", "m1", "m2"]
    finally:
        loop.stop(20)
        offsets.close()


def test_failed_attempts_survive_a_restart_in_commit_metadata(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """A message that always fails, max_attempts 4: 2 failures, restart, 2 more, then DLQ.

    The first dispatcher stops after the second failure was committed (as metadata); the
    second one must deliver it as attempt 3 and dead-letter it after attempt 4.
    """
    queue = unique("atk-attempts")
    create_topic(kafka_bootstrap, queue, 1)
    produce(kafka_bootstrap, queue, records(3))
    backend = kafka_backend(kafka_bootstrap, commit_interval=0.2)
    backends.append(backend)
    backend.declare_queue(queue)
    retry = RetryPolicy(max_attempts=4, backoff_base=1.5, backoff_max=1.5, jitter=0)

    def poison(record: Any, message_id: str) -> None:
        if message_id == "m1":
            raise RuntimeError("poison")

    first = Runs(poison)
    loop = Loop(dispatcher_for(backend, first, retry=retry), queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        assert wait_until(lambda: len(first.of("m1")) >= 2, 20), f"runs {first.runs}"
        time.sleep(0.5)  # a commit interval passes: the note says 2 failures
        assert loop.stop(20)
        second = Runs(poison)
        loop = Loop(dispatcher_for(backend, second, retry=retry), queue).start()
        assert wait_until(lambda: offsets.committed()[0] == 3 or loop.ended, 25), (
            f"committed {offsets.committed()}; runs {first.runs} then {second.runs}"
        )
    finally:
        loop.stop(20)
        offsets.close()
    attempts = [a for _, a, _, _ in first.of("m1")] + [a for _, a, _, _ in second.of("m1")]
    assert attempts == [1, 2, 3, 4], f"attempts of m1 across the restart: {attempts}"
    letters = read_all(kafka_bootstrap, f"{queue}.dlq")
    assert [(lt.original[2], lt.header("dlq.attempts")) for lt in letters] == [("1", "4")]


# -- ordering -------------------------------------------------------------------------------
@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_retry_keeps_its_lane_in_order_under_back_pressure(
    kafka_bootstrap: str, backends: list[KafkaBackend], ordering: str
) -> None:
    """One partition, one key, m0 fails once; back-pressure holds m2..m9 (2 per partition).

    With ordering by partition (or by key, all records having one key), no later message
    may run before m0 succeeded.
    """
    queue = unique("atk-order")
    create_topic(kafka_bootstrap, queue, 1)
    produce(kafka_bootstrap, queue, [Record(0, f"m{i}", i, key=b"k") for i in range(10)])
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue)
    failed: set[str] = set()

    def once(record: Any, message_id: str) -> None:
        if message_id == "m0" and message_id not in failed:
            failed.add(message_id)
            raise RuntimeError("m0 fails once")

    consumer = Runs(once)
    retry = RetryPolicy(max_attempts=5, backoff_base=1.0, backoff_max=1.0, jitter=0)
    dispatcher = dispatcher_for(
        backend,
        consumer,
        retry=retry,
        concurrency=2,
        ordering=ordering,
        max_in_flight=10,
        max_in_flight_per_partition=2,
    )
    loop = Loop(dispatcher, queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        assert wait_until(lambda: offsets.committed()[0] == 10 or loop.ended, 25), (
            f"committed {offsets.committed()}; runs {consumer.runs}; error {loop.error!r}"
        )
    finally:
        loop.stop(20)
        offsets.close()
    ok = consumer.ok_ids()
    assert ok == [f"m{i}" for i in range(10)], (
        f"ordering={ordering}: successful runs in order {ok} (all runs: {consumer.runs})"
    )


@pytest.mark.parametrize(("concurrency", "ordering"), [(1, "partition"), (4, "key"), (4, "none")])
def test_several_retries_in_one_partition_all_end_processed(
    kafka_bootstrap: str, backends: list[KafkaBackend], concurrency: int, ordering: str
) -> None:
    """Offsets 0, 1 and 4 fail twice each (different keys), in batches straddling redeliveries.

    Every message must end processed exactly once, the offset committed to the end, and
    nothing committed past a failing offset before it succeeded.
    """
    queue = unique("atk-retries")
    create_topic(kafka_bootstrap, queue, 1)
    produce(kafka_bootstrap, queue, records(30))
    backend = kafka_backend(kafka_bootstrap, commit_interval=0.1)
    backends.append(backend)
    backend.declare_queue(queue)
    failures: dict[str, int] = {}
    poison = {"m0", "m1", "m4"}

    def twice(record: Any, message_id: str) -> None:
        if message_id in poison and failures.get(message_id, 0) < 2:
            failures[message_id] = failures.get(message_id, 0) + 1
            raise RuntimeError(f"{message_id} fails twice")

    consumer = Runs(twice)
    retry = RetryPolicy(max_attempts=5, backoff_base=0.3, backoff_max=1.0, jitter=0.5)
    dispatcher = dispatcher_for(
        backend, consumer, retry=retry, concurrency=concurrency, ordering=ordering
    )
    loop = Loop(dispatcher, queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    samples: list[tuple[int, set[str]]] = []
    try:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not loop.ended:
            done = set(consumer.ok_ids())
            committed = offsets.committed()[0]
            samples.append((committed, done))
            if committed == 30:
                break
            time.sleep(0.1)
    finally:
        loop.stop(20)
        offsets.close()
    passed = [(c, sorted(p for p in poison if p not in d)) for c, d in samples]
    bad = [(c, undone) for c, undone in passed if undone and c > min(int(u[1:]) for u in undone)]
    assert not bad, f"committed past an undone failing message: {bad[:3]}"
    assert samples and samples[-1][0] == 30, f"last committed {samples[-1:]}, error {loop.error!r}"
    ok = consumer.ok_ids()
    assert sorted(ok) == sorted(f"m{i}" for i in range(30)), f"processed {ok}"


# -- early_ack / always_ack ----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["early_ack", "always_ack"])
def test_early_and_always_ack_never_retry_and_still_dead_letter_undecodable_records(
    kafka_bootstrap: str, backends: list[KafkaBackend], mode: str
) -> None:
    """A failing consumer is not retried; a record that does not decode is dead-lettered."""
    queue = unique("atk-ack")
    create_topic(kafka_bootstrap, queue, 1)
    produce(
        kafka_bootstrap,
        queue,
        [Record(0, "m0"), Record(0, "bad", value=b"{not json"), Record(0, "m2"), Record(0, "m3")],
    )
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue)

    def fail_m2(record: Any, message_id: str) -> None:
        if message_id == "m2":
            raise RuntimeError("m2 fails")

    consumer = Runs(fail_m2)
    dispatcher = dispatcher_for(backend, consumer, concurrency=2, **{mode: True})
    loop = Loop(dispatcher, queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        assert wait_until(lambda: offsets.committed()[0] == 4 or loop.ended, 20), (
            f"committed {offsets.committed()}, error {loop.error!r}"
        )
        time.sleep(1.0)  # a retry would come now
    finally:
        loop.stop(20)
        offsets.close()
    ran = sorted(r[2] for r in consumer.runs)
    assert ran == ["m0", "m2", "m3"], f"runs {consumer.runs} (m2 must run once, bad never)"
    letters = read_all(kafka_bootstrap, f"{queue}.dlq")
    assert [lt.original[2] for lt in letters] == ["1"], f"dead letters {letters}"


# -- the dedup gate -------------------------------------------------------------------------
def test_a_dedup_topic_refusing_entries_stops_the_loop_and_commits_nothing(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """The dedup topic's max.message.bytes is too small for an entry: every write is refused.

    The commit gate must veto every commit (nothing is committed) and the loop stop loudly.
    """
    queue = unique("atk-gate")
    create_topic(kafka_bootstrap, queue, 1)
    create_topic(
        kafka_bootstrap,
        f"{queue}.dedup",
        1,
        {"max.message.bytes": "40", "cleanup.policy": "compact,delete"},
    )
    produce(kafka_bootstrap, queue, records(5))
    backend = kafka_backend(kafka_bootstrap, commit_interval=0.2, dead_letter_timeout=5.0)
    backends.append(backend)
    backend.declare_queue(queue)
    cache = CompactedTopicCache(backend, f"{queue}.dedup", window=600.0)
    consumer = Runs()
    dispatcher = dispatcher_for(backend, consumer, cache=cache)
    loop = Loop(dispatcher, queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        ended = wait_until(lambda: loop.ended, 25)
        committed = offsets.committed()[0]
    finally:
        loop.stop(20)
        offsets.close()
    assert committed < 0, f"committed {committed} though no dedup entry is durable"
    assert ended, f"the loop kept running with every dedup entry refused ({consumer.ok_ids()})"
    assert isinstance(loop.error, ServiceError), f"consume_loop ended with {loop.error!r}"


# -- restarts: SIGKILL with attempts in commit metadata -------------------------------------
ROOT = Path(__file__).resolve().parents[2]
WORKER = "tests.integration.loop_attacks_worker"


def start_member(bootstrap: str, queue: str, ledger: Path, *options: str) -> subprocess.Popen[str]:
    """A group member in its own process (``loop_attacks_worker``), once it is built."""
    log = ledger.with_suffix(".log").open("a")  # the member's own log, for the evidence
    proc = subprocess.Popen(
        [sys.executable, "-m", WORKER, bootstrap, queue, str(ledger), *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    log.close()
    assert proc.stdout is not None
    ready = proc.stdout.readline().strip()
    proc.stdout.close()
    assert ready == "ready", f"member did not start (exit {proc.poll()})"
    return proc


def ledger_runs(path: Path) -> list[tuple[int, int, str, str]]:
    """The runs a worker wrote: ``(offset, attempt, message_id, outcome)``."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    runs = []
    for line in lines:
        parts = line.split()
        if len(parts) == 4:
            runs.append((int(parts[0]), int(parts[1]), parts[2], parts[3]))
    return runs


def test_attempts_in_commit_metadata_survive_a_sigkill(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A member fails m1 twice (max_attempts 4) and is SIGKILLed; the next one goes on at 3.

    The second failure is committed as metadata before the kill; the restarted member must
    deliver m1 as attempt 3, dead-letter it after attempt 4, and process everything else.
    """
    queue, ledger = unique("atk-kill"), tmp_path / "ledger"
    create_topic(kafka_bootstrap, queue, 1)
    create_topic(kafka_bootstrap, f"{queue}.dlq", 1)
    produce(kafka_bootstrap, queue, records(5))
    options = ("--poison", "m1", "--max-attempts", "4", "--backoff", "1.5")
    first = start_member(kafka_bootstrap, queue, ledger, *options)
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    second: subprocess.Popen[str] | None = None
    try:
        fails = lambda: [r for r in ledger_runs(ledger) if r[2] == "m1"]  # noqa: E731
        assert wait_until(lambda: len(fails()) >= 2, 25), f"ledger {ledger_runs(ledger)}"
        time.sleep(0.8)  # a commit interval (0.2 s) passes: the note holds 2 failures
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before = len(fails())
        second = start_member(kafka_bootstrap, queue, ledger, *options)
        assert wait_until(lambda: offsets.committed()[0] == 5, 40), (
            f"committed {offsets.committed()}; ledger {ledger_runs(ledger)}"
        )
    finally:
        offsets.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(20)
                if proc.poll() is None:
                    proc.kill()
    attempts = [r[1] for r in fails()]
    assert before == 2, f"the first member ran m1 {before} times before the kill: {attempts}"
    assert attempts == [1, 2, 3, 4], f"attempts of m1 across the SIGKILL: {attempts}"
    letters = read_all(kafka_bootstrap, f"{queue}.dlq")
    assert [(lt.original[2], lt.header("dlq.attempts")) for lt in letters] == [("1", "4")]
    ok = sorted(r[2] for r in ledger_runs(ledger) if r[3] == "ok")
    assert set(ok) == {"m0", "m2", "m3", "m4"}, f"processed {ok}"


# -- lost assignments and revocations under load ---------------------------------------------
def test_a_member_losing_its_assignment_in_a_slow_handler_loses_nothing(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Member A (inline) sleeps past max.poll.interval.ms in a handler while a retry is pending.

    Two members, two partitions; a ``flaky`` message on each partition fails once (2 s
    backoff) just before a ``slow`` one that A sleeps 9 s on (B does not). A loses its
    assignment (on_lost), B takes everything over, A comes back. Every message must end
    processed and every partition committed to its end, with neither loop failing.
    """
    queue = unique("atk-lost")
    create_topic(kafka_bootstrap, queue, 2)
    config = {"max.poll.interval.ms": 6000, "session.timeout.ms": 6000}
    made = [kafka_backend(kafka_bootstrap, consumer_config={**FAST_GROUP, **config})]
    made.append(kafka_backend(kafka_bootstrap, consumer_config={**FAST_GROUP, **config}))
    backends.extend(made)
    made[0].declare_queue(queue)
    flaky: set[str] = set()
    lock = threading.Lock()

    def hook(slow: bool) -> Callable[[Any, str], None]:
        def run(record: Any, message_id: str) -> None:
            if message_id.startswith("flaky"):
                with lock:
                    first = message_id not in flaky
                    flaky.add(message_id)
                if first:
                    raise RuntimeError("flaky fails once")
            if slow and message_id.startswith("slow"):
                time.sleep(9)

        return run

    retry = RetryPolicy(max_attempts=5, backoff_base=2.0, backoff_max=2.0, jitter=0)
    a, b = Runs(hook(True)), Runs(hook(False))
    loop_a = Loop(dispatcher_for(made[0], a, retry=retry), queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 2)
    loop_b: Loop | None = None
    try:
        produce(kafka_bootstrap, queue, [Record(p, f"warm-{p}") for p in range(2)])
        assert wait_until(lambda: offsets.committed() == [1, 1], 20), offsets.committed()
        loop_b = Loop(dispatcher_for(made[1], b, retry=retry), queue).start()
        time.sleep(4)  # B joins; each member owns one partition
        wanted = [Record(p, f"{kind}-{p}") for p in range(2) for kind in ("flaky", "slow")]
        wanted += [Record(p, f"m{p}-{i}") for p in range(2) for i in range(5)]
        produce(kafka_bootstrap, queue, wanted)
        ends = offsets.ends()
        assert wait_until(lambda: offsets.committed() == ends, 45), (
            f"committed {offsets.committed()} of {ends}; A ran {a.runs}; B ran {b.runs}; "
            f"errors {loop_a.error!r} {loop_b.error!r}"
        )
        assert not loop_a.ended and not loop_b.ended, (loop_a.error, loop_b.error)
    finally:
        for loop in (loop_a, loop_b):
            if loop is not None:
                loop.stop(30)
        offsets.close()
    done = set(a.ok_ids()) | set(b.ok_ids())
    expected = {r.message_id for r in wanted}
    assert expected <= done, f"never processed: {sorted(expected - done)}"


def test_revocation_past_revoke_timeout_abandons_work_and_the_lane_recovers(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """A (concurrency 4, revoke_timeout 1 s) runs a 6 s message on each of two partitions.

    B joins while they run (one partition is revoked from A past its revoke_timeout: the
    work is abandoned, B runs it again) and leaves before A's abandoned work ends (the
    partition comes back to A while its lane still runs). Nothing may be committed past a
    slow message before it is processed, and later messages must still flow on both.
    """
    queue = unique("atk-revoke")
    create_topic(kafka_bootstrap, queue, 2)
    made = [kafka_backend(kafka_bootstrap), kafka_backend(kafka_bootstrap)]
    backends.extend(made)
    made[0].declare_queue(queue)
    started = threading.Event()

    def slow_in_a(record: Any, message_id: str) -> None:
        if message_id.startswith("slow"):
            started.set()
            time.sleep(6)

    a, b = Runs(slow_in_a), Runs()
    dispatcher_a = dispatcher_for(made[0], a, concurrency=4, revoke_timeout=1.0)
    loop_a = Loop(dispatcher_a, queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 2)
    loop_b: Loop | None = None
    samples: list[list[int]] = []
    try:
        produce(kafka_bootstrap, queue, [Record(p, f"warm-{p}") for p in range(2)])
        assert wait_until(lambda: offsets.committed() == [1, 1], 20), offsets.committed()
        produce(kafka_bootstrap, queue, [Record(p, f"slow-{p}") for p in range(2)])
        produce(kafka_bootstrap, queue, [Record(p, f"m{p}-{i}") for p in (0, 1) for i in range(3)])
        assert started.wait(10), "A did not start the slow messages"
        loop_b = Loop(dispatcher_for(made[1], b), queue).start()
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            samples.append(offsets.committed())
            time.sleep(0.2)
        assert loop_b.stop(20), "B did not stop"
        later = [Record(p, f"after-{p}-{i}") for p in range(2) for i in range(3)]
        produce(kafka_bootstrap, queue, later)
        ends = offsets.ends()
        while time.monotonic() < deadline + 25 and offsets.committed() != ends:
            samples.append(offsets.committed())
            time.sleep(0.2)
        final = offsets.committed()
    finally:
        loop_a.stop(30)
        if loop_b is not None:
            loop_b.stop(10)
        offsets.close()
    assert final == ends, (
        f"committed {final} of {ends}; A ran {a.runs}; B ran {b.runs}; errors "
        f"{loop_a.error!r} {loop_b and loop_b.error!r}"
    )
    done = set(a.ok_ids()) | set(b.ok_ids())
    # a slow message sits at offset 1 of each partition: never committed past undone
    for sample in samples:
        for p, committed in enumerate(sample):
            assert committed <= 1 or f"slow-{p}" in done, f"committed {sample} past slow-{p}"
    expected = {f"{k}-{p}" for p in range(2) for k in ("warm", "slow")}
    expected |= {f"m{p}-{i}" for p in range(2) for i in range(3)}
    expected |= {f"after-{p}-{i}" for p in range(2) for i in range(3)}
    assert expected <= done, f"never processed: {sorted(expected - done)}"


# -- stopping -------------------------------------------------------------------------------
@pytest.mark.parametrize("concurrency", [1, 2])
def test_early_ack_stop_leaves_unreached_messages_to_be_delivered_again(
    kafka_bootstrap: str, backends: list[KafkaBackend], concurrency: int
) -> None:
    """``early_ack``, a slow consumer, back-pressure; stop() after two messages ran.

    consume_loop's contract: "Messages polled but not reached when stopping are left undone
    and will be delivered again". With early_ack a message is acknowledged when it is
    submitted; one that never ran must still not be committed past on a clean stop.
    """
    queue = unique("atk-early-stop")
    create_topic(kafka_bootstrap, queue, 1)
    produce(kafka_bootstrap, queue, records(20))
    backend = kafka_backend(kafka_bootstrap, commit_interval=0.1)
    backends.append(backend)
    backend.declare_queue(queue)
    consumer = Runs(lambda record, message_id: time.sleep(0.3))
    dispatcher = dispatcher_for(
        backend, consumer, early_ack=True, concurrency=concurrency, max_in_flight=6
    )
    loop = Loop(dispatcher, queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        assert wait_until(lambda: len(consumer.runs) >= 2, 20), f"runs {consumer.runs}"
        assert loop.stop(20), "consume_loop did not stop"
        ran = len(consumer.runs)
        committed = offsets.committed()[0]
    finally:
        offsets.close()
    assert committed <= ran, (
        f"early_ack, concurrency {concurrency}: after a clean stop {committed} offsets are "
        f"committed but only {ran} messages ran ({[r[2] for r in consumer.runs]}): "
        f"{committed - ran} polled messages were never processed and never will be"
    )


def group_members(bootstrap: str, group: str) -> int:
    """How many members ``group`` has now."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.describe_consumer_groups([group]).values()
    return len(future.result(10).members)


def test_a_member_frozen_while_a_handler_fails_processes_its_partition_when_it_comes_back(
    kafka_bootstrap: str, backends: list[KafkaBackend], tmp_path: Path
) -> None:
    """Member A (own process, lanes) is frozen while m1 fails in a handler.

    m1's handler takes 1 s and fails; A is SIGSTOPped meanwhile, past the session timeout:
    B takes the partition and processes m1. SIGCONT: m1's failure completes while A finds
    its assignment lost (then m1 waits out a 5 s backoff, its partition paused, if it was
    settled first). B leaves: the partition goes back to A, which must process the later
    messages and commit them.
    """
    queue, ledger = unique("atk-stop"), tmp_path / "ledger-a"
    create_topic(kafka_bootstrap, queue, 1)
    create_topic(kafka_bootstrap, f"{queue}.dlq", 1)
    a = start_member(
        kafka_bootstrap,
        queue,
        ledger,
        *("--poison", "m1", "--poison-delay", "1", "--backoff", "5", "--concurrency", "2"),
    )
    backend = kafka_backend(kafka_bootstrap)
    backends.append(backend)
    backend.declare_queue(queue, create=False)
    b = Runs()
    loop_b: Loop | None = None
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        produce(kafka_bootstrap, queue, [Record(0, "m0")])
        assert wait_until(lambda: offsets.committed() == [1], 20), ledger_runs(ledger)
        loop_b = Loop(dispatcher_for(backend, b), queue).start()
        assert wait_until(lambda: group_members(kafka_bootstrap, queue) == 2, 20, step=0.5)
        time.sleep(1)
        produce(kafka_bootstrap, queue, [Record(0, "m1")])
        assert wait_until(lambda: any(r[2] == "m1" for r in ledger_runs(ledger)), 10), (
            f"A did not run m1; B ran {b.runs}"
        )
        a.send_signal(signal.SIGSTOP)
        try:
            assert wait_until(lambda: "m1" in b.ok_ids(), 25), f"B did not take over: {b.runs}"
        finally:
            a.send_signal(signal.SIGCONT)
        time.sleep(3)  # A finds its assignment lost and rejoins (owning nothing)
        assert loop_b.stop(20), "B did not stop"
        later = [Record(0, f"after-{i}") for i in range(5)]
        produce(kafka_bootstrap, queue, later)
        ran_by_a = lambda: {r[2] for r in ledger_runs(ledger) if r[3] == "ok"}  # noqa: E731
        assert wait_until(lambda: {r.message_id for r in later} <= ran_by_a(), 12), (
            f"A never processed the later messages: its ledger {ledger_runs(ledger)}, "
            f"committed {offsets.committed()}, A alive {a.poll() is None}; A's log:\n"
            + "\n".join(
                line[:200]
                for line in ledger.with_suffix(".log").read_text().splitlines()
                if "subscription" in line or "rdkafka" in line or "loop" in line
            )
        )
        assert wait_until(lambda: offsets.committed() == offsets.ends(), 10), offsets.committed()
    finally:
        offsets.close()
        if loop_b is not None:
            loop_b.stop(10)
        if a.poll() is None:
            a.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.wait(20)
            if a.poll() is None:
                a.kill()


def test_members_joining_and_leaving_under_back_pressure_and_retries_lose_nothing(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Scale out and in twice while A holds retries and back-pressure-paused partitions.

    4 partitions; A (concurrency 4, 3 in flight per partition) and members B and C joining
    and leaving; every tenth message fails once (0.5-1 s backoff). Sampled all along: no
    partition is committed past an offset no member has processed yet; at the end every
    message is processed and every partition committed to its end.
    """
    queue, partitions, per_partition = unique("atk-scale"), 4, 60
    create_topic(kafka_bootstrap, queue, partitions)
    made = [kafka_backend(kafka_bootstrap, commit_interval=0.2) for _ in range(3)]
    backends.extend(made)
    made[0].declare_queue(queue)
    failed: set[str] = set()
    lock = threading.Lock()

    def hook(record: Any, message_id: str) -> None:
        time.sleep(0.01)
        if message_id.endswith("0"):
            with lock:
                first = message_id not in failed
                failed.add(message_id)
            if first:
                raise RuntimeError("fails once")

    retry = RetryPolicy(max_attempts=5, backoff_base=0.5, backoff_max=1.0, jitter=0.5)
    members = [Runs(hook) for _ in range(3)]
    options: dict[str, Any] = {
        "retry": retry,
        "concurrency": 4,
        "ordering": "key",
        "max_in_flight": 8,
        "max_in_flight_per_partition": 3,
    }
    loops = [Loop(dispatcher_for(made[0], members[0], **options), queue).start()]
    offsets = Offsets(kafka_bootstrap, queue, queue, partitions)
    violations: list[str] = []

    def done_offsets() -> dict[int, set[int]]:
        done: dict[int, set[int]] = {p: set() for p in range(partitions)}
        for member in members:
            with member._lock:
                for offset, _, message_id, outcome in member.runs:
                    if outcome == "ok":
                        done[int(message_id[1])].add(offset)
        return done

    def sample() -> None:
        committed = offsets.committed()
        done = done_offsets()
        for p, c in enumerate(committed):
            missing = set(range(max(c, 0))) - done[p]
            if missing:
                violations.append(f"p{p} committed {c} with {sorted(missing)[:5]} undone")

    def produce_some(start: int, count: int) -> None:
        batch = [
            Record(p, f"p{p}-{i:03d}", key=f"k{i % 5}".encode())
            for i in range(start, start + count)
            for p in range(partitions)
        ]
        produce(kafka_bootstrap, queue, batch)

    try:
        produce_some(0, 15)
        for step, index in enumerate([1, 2, 1, 2]):
            joining = step < 2
            if joining:
                member = dispatcher_for(made[index], members[index], **options)
                loops.append(Loop(member, queue).start())
            else:
                assert loops[index].stop(30), f"member {index} did not stop"
            produce_some(15 * (step + 1), 15 if step < 3 else per_partition - 60 + 15)
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                sample()
                time.sleep(0.25)
        ends = offsets.ends()
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and offsets.committed() != ends:
            sample()
            time.sleep(0.25)
        final = offsets.committed()
    finally:
        for loop in loops:
            loop.stop(30)
        offsets.close()
    errors = [loop.error for loop in loops if loop.error is not None]
    assert not errors, f"loops failed: {errors}"
    assert not violations, f"committed past undone messages: {violations[:5]}"
    assert final == ends, f"committed {final} of {ends}"
    done = done_offsets()
    assert all(done[p] >= set(range(ends[p])) for p in range(partitions)), (
        f"never processed: { {p: sorted(set(range(ends[p])) - done[p])[:5] for p in done} }"
    )


# -- dead letters refused -------------------------------------------------------------------
def set_topic_config(bootstrap: str, topic: str, name: str, value: str) -> None:
    """Set one topic config and wait for the broker to apply it."""
    from confluent_kafka.admin import (
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    time.sleep(1)


def test_a_dlq_refusing_even_the_payloadless_copy_stops_loudly_then_a_fix_and_restart_resume(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """The DLQ's max.message.bytes (100) refuses the dead letter and its payload-less copy.

    The loop must stop with DeadLetterRefusedError without committing past the poison
    message; once the limit is raised, a restart dead-letters it and goes on.
    """
    from service.errors import DeadLetterRefusedError

    queue = unique("atk-dlq")
    create_topic(kafka_bootstrap, queue, 1)
    create_topic(kafka_bootstrap, f"{queue}.dlq", 1, {"max.message.bytes": "100"})
    produce(
        kafka_bootstrap,
        queue,
        [Record(0, "m0"), Record(0, "poison", value=b"{not json"), Record(0, "m2")],
    )
    backend = kafka_backend(kafka_bootstrap, dead_letter_timeout=5.0)
    backends.append(backend)
    backend.declare_queue(queue)
    consumer = Runs()
    loop = Loop(dispatcher_for(backend, consumer, concurrency=2), queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        assert wait_until(lambda: loop.ended, 20), f"the loop kept running; ran {consumer.ok_ids()}"
        assert isinstance(loop.error, DeadLetterRefusedError), f"ended with {loop.error!r}"
        committed = offsets.committed()[0]
        assert committed <= 1, f"committed {committed}, past the refused poison at offset 1"
        set_topic_config(kafka_bootstrap, f"{queue}.dlq", "max.message.bytes", "1048588")
        again = Loop(dispatcher_for(backend, consumer, concurrency=2), queue).start()
        try:
            assert wait_until(lambda: offsets.committed()[0] == 3, 20), (
                f"committed {offsets.committed()} after the fix; error {again.error!r}"
            )
        finally:
            assert again.stop(20)
    finally:
        offsets.close()
    letters = read_all(kafka_bootstrap, f"{queue}.dlq")
    assert [(lt.original[2], lt.value) for lt in letters] == [("1", b"{not json")], letters
    assert sorted(set(consumer.ok_ids())) == ["m0", "m2"]


# -- a retried record that is gone from the log ---------------------------------------------
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_retried_record_deleted_from_the_log_does_not_stall_commits_for_ever(
    kafka_bootstrap: str, backends: list[KafkaBackend], concurrency: int
) -> None:
    """m1 fails and waits out a 3 s backoff; meanwhile retention deletes offsets 0-1.

    (Retention, DeleteRecords or compaction of the input topic can remove a record while
    its redelivery is pending.) The partition is read again from the log start; the
    messages after m1 are processed. Commits must not stay below m1 for ever: then the
    group's lag never falls and every restart processes everything after m1 again.
    """
    queue = unique("atk-gone")
    create_topic(kafka_bootstrap, queue, 1)
    backend = kafka_backend(kafka_bootstrap, commit_interval=0.2)
    backends.append(backend)
    backend.declare_queue(queue)
    failed: set[str] = set()

    def m1_fails_once(record: Any, message_id: str) -> None:
        if message_id == "m1" and message_id not in failed:
            failed.add(message_id)
            raise RuntimeError("m1 fails once")

    retry = RetryPolicy(max_attempts=5, backoff_base=3.0, backoff_max=3.0, jitter=0)
    consumer = Runs(m1_fails_once)
    dispatcher = dispatcher_for(backend, consumer, retry=retry, concurrency=concurrency)
    produce(kafka_bootstrap, queue, records(5))
    loop = Loop(dispatcher, queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    try:
        assert wait_until(lambda: bool(consumer.of("m1")), 20), f"runs {consumer.runs}"
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.delete_records([TopicPartition(queue, 0, 2)]).values():
            future.result(30)
        produce(kafka_bootstrap, queue, records(3, prefix="later"))
        assert wait_until(lambda: {"later0", "later1", "later2"} <= set(consumer.ok_ids()), 20), (
            f"runs {consumer.runs}"
        )
        moved = wait_until(lambda: offsets.committed()[0] == 8 or loop.ended, 8)
        committed = offsets.committed()[0]
    finally:
        loop.stop(20)
        offsets.close()
    assert moved and committed == 8, (
        f"concurrency {concurrency}: committed offset stays at {committed} (end 8) after m1's "
        f"record was deleted while its redelivery was pending; runs {consumer.runs}; error "
        f"{loop.error!r}"
    )


# -- dedup across a rebalance with a retry pending -------------------------------------------
class Named(Runs):
    """A :class:`Runs` with its own name (two consumers on one dispatcher)."""

    def __init__(self, name: str, hook: Callable[[Any, str], None] | None = None) -> None:
        super().__init__(hook)
        self._name = name

    @property
    def name(self) -> str:
        """The given name."""
        return self._name


def test_a_consumer_that_succeeded_is_not_run_again_when_its_partners_retry_moves(
    kafka_bootstrap: str, backends: list[KafkaBackend]
) -> None:
    """Two consumers per message: ``good`` succeeds on x-p, ``flaky`` fails once (3 s backoff).

    While the retries wait, member B joins and takes one partition (A's revocation commits
    the retry's position and waits for the dedup entries). B runs x-p again: only ``flaky``
    may run, because dedup holds ``good``'s entry.
    """
    queue = unique("atk-dedup")
    create_topic(kafka_bootstrap, queue, 2)
    made = [kafka_backend(kafka_bootstrap) for _ in range(2)]
    backends.extend(made)
    made[0].declare_queue(queue)
    failed: set[str] = set()
    lock = threading.Lock()

    def once(record: Any, message_id: str) -> None:
        with lock:
            first = message_id not in failed
            failed.add(message_id)
        if first and message_id.startswith("x"):
            raise RuntimeError("flaky fails once")

    retry = RetryPolicy(max_attempts=5, backoff_base=3.0, backoff_max=3.0, jitter=0)
    goods, flakies, loops = [], [], []
    for backend in made:
        cache = CompactedTopicCache(backend, f"{queue}.dedup", partitions=2, window=600.0)
        good, flaky = Named("good"), Named("flaky", once)
        dispatcher = dispatcher_for(backend, good, cache=cache, retry=retry, concurrency=4)
        dispatcher.attach_consumer(flaky)
        goods.append(good)
        flakies.append(flaky)
        loops.append(Loop(dispatcher, queue))
    offsets = Offsets(kafka_bootstrap, queue, queue, 2)
    try:
        loops[0].start()
        produce(kafka_bootstrap, queue, [Record(p, f"warm-{p}") for p in range(2)])
        assert wait_until(lambda: offsets.committed() == [1, 1], 20), offsets.committed()
        produce(kafka_bootstrap, queue, [Record(p, f"x-{p}") for p in range(2)])
        assert wait_until(lambda: len(failed) >= 4, 10), f"flaky ran {flakies[0].runs}"
        loops[1].start()
        ends = offsets.ends()
        assert wait_until(lambda: offsets.committed() == ends, 30), (
            f"committed {offsets.committed()} of {ends}; errors {[x.error for x in loops]}"
        )
        moved = bool(goods[1].runs or flakies[1].runs)
    finally:
        for loop in loops:
            if loop.thread is not None:
                loop.stop(30)
        offsets.close()
    for p in range(2):
        ran = [r for g in goods for r in g.of(f"x-{p}")]
        assert len(ran) == 1, (
            f"good ran x-{p} {len(ran)} times: A {goods[0].runs}, B {goods[1].runs}"
        )
        fl = [r for f in flakies for r in f.of(f"x-{p}") if r[3] == "ok"]
        assert len(fl) == 1, f"flaky succeeded on x-{p} {len(fl)} times"
    assert moved, "B never got a partition: the rebalance did not happen"


# -- a full executor and max.poll.interval.ms ----------------------------------------------------
@pytest.mark.parametrize("max_in_flight", [2, 8])
def test_a_full_executor_keeps_the_member_in_its_group(
    kafka_bootstrap: str,
    backends: list[KafkaBackend],
    caplog: pytest.LogCaptureFixture,
    max_in_flight: int,
) -> None:
    """Two handlers run 8 s each; max.poll.interval.ms is 6 s; concurrency 2.

    With lanes the loop polls while handlers run, so a slow handler does not cost the member
    its assignment. That must hold also when the executor is full (max_in_flight 2): the
    member must not lose its partition, and no handler may run twice.
    """
    queue = unique("atk-full")
    create_topic(kafka_bootstrap, queue, 1)
    config = {"max.poll.interval.ms": 6000, "session.timeout.ms": 6000}
    backend = kafka_backend(kafka_bootstrap, consumer_config={**FAST_GROUP, **config})
    backends.append(backend)
    backend.declare_queue(queue)

    def slow(record: Any, message_id: str) -> None:
        if message_id.startswith("slow"):
            time.sleep(8)

    consumer = Runs(slow)
    dispatcher = dispatcher_for(
        backend, consumer, concurrency=2, ordering="none", max_in_flight=max_in_flight
    )
    loop = Loop(dispatcher, queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    caplog.set_level("WARNING", logger="service.backends.kafka.subscription")
    try:
        produce(kafka_bootstrap, queue, [Record(0, "warm")])
        assert wait_until(lambda: offsets.committed() == [1], 20), offsets.committed()
        produce(kafka_bootstrap, queue, [Record(0, "slow-0"), Record(0, "slow-1")])
        produce(kafka_bootstrap, queue, records(3))
        assert wait_until(lambda: offsets.committed() == [6] or loop.ended, 22), (
            f"committed {offsets.committed()}; runs {consumer.runs}; error {loop.error!r}"
        )
    finally:
        loop.stop(30)
        offsets.close()
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    twice = {m: n for m in ("slow-0", "slow-1") if (n := len(consumer.of(m))) != 1}
    assert not lost and not twice, (
        f"max_in_flight {max_in_flight}: the member lost its assignment ({lost}) while its "
        f"loop was alive; slow handlers ran {twice} times"
    )


def test_dead_letters_waiting_for_a_missing_dlq_keep_the_member_in_its_group(
    kafka_bootstrap: str, backends: list[KafkaBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """Six undecodable records (ordering none, concurrency 4) while the DLQ is missing.

    Each dead letter waits dead_letter_timeout (2 s) for a confirmation that cannot come
    (the producer may not create the topic); max.poll.interval.ms is 6 s. The dead letters
    are retried (a refusal that may pass) - but settling them must not keep the loop from
    polling so long that the member loses its assignment.
    """
    queue = unique("atk-dlqgone")
    create_topic(kafka_bootstrap, queue, 1)
    config = {"max.poll.interval.ms": 6000, "session.timeout.ms": 6000}
    backend = kafka_backend(
        kafka_bootstrap,
        consumer_config={**FAST_GROUP, **config},
        dead_letter_timeout=2.0,
        producer_config={"allow.auto.create.topics": False},
    )
    backends.append(backend)
    backend.declare_queue(queue)  # creates the DLQ ...
    consumer = Runs()
    retry = RetryPolicy(max_attempts=2, backoff_base=0.5, backoff_max=0.5, jitter=0)
    dispatcher = dispatcher_for(backend, consumer, retry=retry, concurrency=4, ordering="none")
    loop = Loop(dispatcher, queue).start()
    offsets = Offsets(kafka_bootstrap, queue, queue, 1)
    caplog.set_level("WARNING")
    try:
        produce(kafka_bootstrap, queue, [Record(0, "warm")])
        assert wait_until(lambda: offsets.committed() == [1], 20), offsets.committed()
        delete_topic(kafka_bootstrap, f"{queue}.dlq")  # ... which then disappears
        produce(kafka_bootstrap, queue, [Record(0, f"bad{i}", value=b"{x") for i in range(6)])
        time.sleep(14)
        committed = offsets.committed()
    finally:
        loop.stop(30)
        offsets.close()
    assert committed == [1], f"committed {committed} past undecodable records not dead-lettered"
    lost = [r.getMessage()[:160] for r in caplog.records if "MAX_POLL" in r.getMessage()]
    lost += [r.getMessage()[:160] for r in caplog.records if "lost" in r.getMessage()]
    assert not lost, f"the member left its group while settling dead letters: {lost}"


def test_the_lanes_executor_unblocks_the_lane_of_a_failure_abandoned_unsettled() -> None:
    """The mechanism behind the SIGSTOP break, driven directly (no broker needed).

    m1 fails on its lane (nothing queued behind it) and its completion waits to be settled
    when the partition is lost: the loop drops and abandons the partition's work. When the
    partition comes back, m2 on the same lane must run.
    """
    from service.dispatch.executors import LanesExecutor
    from service.dispatch.outcomes import ACK, DispatchOutcome, Verdict
    from service.messages import Message

    ran: list[int] = []

    def decide(message: Message) -> Verdict:
        ran.append(message.offset)
        return Verdict(DispatchOutcome.RETRIED, delay=1.0) if message.offset == 1 else ACK

    executor = LanesExecutor(
        decide,
        concurrency=2,
        ordering="partition",
        max_in_flight=10,
        max_in_flight_per_partition=10,
    )
    try:
        executor.submit(Message("t", b"{}", (), None, 0, 1, None, 1))
        assert wait_until(lambda: ran == [1], 5, step=0.01)
        time.sleep(0.1)  # its completion waits in the executor, not settled yet
        executor.drop([("t", 0)])  # ConsumeLoop.on_lost
        executor.abandon([("t", 0)])
        executor.submit(Message("t", b"{}", (), None, 0, 2, None, 1))  # the partition is back
        assert wait_until(lambda: 2 in ran, 3, step=0.01), (
            f"m2 never ran: its lane stays busy after the abandon (busy lanes "
            f"{executor._busy}, lanes {dict(executor._lanes)}, in flight {executor.in_flight})"
        )
    finally:
        executor.close()
