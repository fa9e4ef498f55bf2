"""The dispatcher on a real Kafka broker: commit only what is done (issue 3)."""

from __future__ import annotations

import itertools
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

from service import (
    BrokerUnavailableError,
    Consumer,
    DeserializationError,
    MessageDispatcher,
    MissingHeaderError,
    Publisher,
    RetryPolicy,
)
from service.backends.kafka import KafkaBackend
from tests.kafka_helpers import committed, kafka_backend, read_topic, unique
from tests.payments import DoPayment, json_registry

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class Recorder(Consumer):
    def __init__(self, fail: Callable[[DoPayment], bool] = lambda m: False) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []  # (amount, attempt-less order)
        self.fail = fail

    def process(self, message: Any, **kwargs: Any) -> None:
        if self.fail(message):
            raise RuntimeError(f"cannot handle {message.amount}")
        self.seen.append((message.amount, 0))

    @property
    def amounts(self) -> list[int]:
        return [a for a, _ in self.seen]


@pytest.fixture
def backend(kafka_bootstrap: str) -> Iterator[KafkaBackend]:
    b = kafka_backend(kafka_bootstrap, partitions=3)
    yield b
    b.close()


def run_until(
    dispatcher: MessageDispatcher,
    queue: str,
    done: Callable[[], bool],
    timeout: float = 30.0,
    **callbacks: Any,
) -> None:
    """Run consume_loop in a thread until ``done()`` or the deadline, then stop it."""
    thread = threading.Thread(target=dispatcher.consume_loop, args=(queue,), kwargs=callbacks)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
        thread.join(30)
    assert not thread.is_alive()


def publish(backend: KafkaBackend, topic: str, amounts: range, key: str | None = None) -> None:
    publisher = Publisher(json_registry(), backend)
    for amount in amounts:
        publisher.publish(topic, DoPayment(f"o{amount}", amount), key=key or f"k{amount}")
    backend.flush()


def test_failed_message_stays_uncommitted_and_comes_back_after_restart(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    queue = unique("q")
    backend.declare_queue(queue)
    publish(backend, queue, range(3), key="same")  # one partition, in order
    failing = Recorder(fail=lambda m: m.amount == 1)
    dispatcher = MessageDispatcher(
        json_registry(), backend=backend, retry=RetryPolicy(max_attempts=None, backoff_base=0.05)
    )
    dispatcher.attach_consumer(failing)
    run_until(dispatcher, queue, lambda: failing.amounts == [0], timeout=8)
    time.sleep(1)  # let it retry a few times: 1 blocks its partition, 2 never runs
    assert failing.amounts == [0]
    partition = next(p for p, o in enumerate(committed(kafka_bootstrap, queue, queue, 3)) if o >= 0)
    assert committed(kafka_bootstrap, queue, queue, 3)[partition] == 1

    healthy = Recorder()
    restarted = MessageDispatcher(json_registry(), backend=backend)
    restarted.attach_consumer(healthy)
    run_until(restarted, queue, lambda: len(healthy.amounts) == 2)
    assert healthy.amounts == [1, 2]
    assert committed(kafka_bootstrap, queue, queue, 3)[partition] == 3


def test_always_ack_commits_past_a_failure(backend: KafkaBackend, kafka_bootstrap: str) -> None:
    queue = unique("q")
    backend.declare_queue(queue)
    publish(backend, queue, range(2), key="same")
    recorder = Recorder(fail=lambda m: m.amount == 0)
    dispatcher = MessageDispatcher(json_registry(), backend=backend, always_ack=True)
    dispatcher.attach_consumer(recorder)
    run_until(dispatcher, queue, lambda: recorder.amounts == [1])
    assert max(committed(kafka_bootstrap, queue, queue, 3)) == 2


def test_a_failing_partition_does_not_stop_the_others(backend: KafkaBackend) -> None:
    queue = unique("q")
    backend.declare_queue(queue)
    publish(backend, queue, range(30))
    blocked = 7
    recorder = Recorder(fail=lambda m: m.amount == blocked)
    dispatcher = MessageDispatcher(
        json_registry(), backend=backend, retry=RetryPolicy(max_attempts=None, backoff_base=0.05)
    )
    dispatcher.attach_consumer(recorder)
    run_until(dispatcher, queue, lambda: len(recorder.amounts) >= 20, timeout=15)
    # every message of the other two partitions arrived although 7 keeps failing
    assert blocked not in recorder.amounts
    assert len(recorder.amounts) >= 20


def test_retries_with_backoff_then_dead_letter_topic(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    queue = unique("q")
    backend.declare_queue(queue)
    publish(backend, queue, range(1))
    attempts: list[float] = []

    def fail(message: DoPayment) -> bool:
        attempts.append(time.monotonic())
        return True

    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=3, backoff_base=0.4, backoff_max=2, jitter=0),
    )
    dispatcher.attach_consumer(Recorder(fail=fail))
    run_until(
        dispatcher,
        queue,
        lambda: bool(read_topic(kafka_bootstrap, f"{queue}.dlq", 1, timeout=0.2)),
        timeout=20,
    )
    assert len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.35 and gaps[1] >= 0.75  # 0.4 s, then 0.8 s
    [letter] = read_topic(kafka_bootstrap, f"{queue}.dlq", 1)
    assert letter.header("dlq.original_topic") == queue.encode()
    assert letter.header("dlq.original_offset") == b"0"
    assert letter.header("dlq.error_class") == b"ConsumerError"
    assert b"cannot handle 0" in (letter.header("dlq.error_text") or b"")
    assert letter.header("dlq.attempts") == b"3"
    assert (
        letter.header("dlq.failing_consumers") == b"tests.integration.test_kafka_dispatch.Recorder"
    )
    assert letter.header("manifest") == b"DoPayment"
    assert max(committed(kafka_bootstrap, queue, queue, 3)) == 1


def test_garbage_goes_to_the_dead_letter_topic_at_once(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    queue = unique("q")
    backend.declare_queue(queue)
    good = (("serializer_id", b"1"), ("manifest", b"DoPayment"), ("message_id", b"g"))
    backend.publish(queue, b"\x00\xffgarbage", key=b"x", headers=good)
    backend.publish(queue, b"{}", key=b"x", headers=good[1:])
    publish(backend, queue, range(1), key="x")
    recorder = Recorder()
    errors: list[Exception] = []
    dispatcher = MessageDispatcher(json_registry(), backend=backend)
    dispatcher.attach_consumer(recorder)
    run_until(dispatcher, queue, lambda: recorder.amounts == [0], on_exception=errors.append)
    assert [type(e) for e in errors] == [DeserializationError, MissingHeaderError]
    letters = read_topic(kafka_bootstrap, f"{queue}.dlq", 2)
    assert [m.header("dlq.attempts") for m in letters] == [b"1", b"1"]
    assert [m.header("dlq.error_class") for m in letters] == [
        b"DeserializationError",
        b"MissingHeaderError",
    ]


def test_unreachable_broker_at_start_is_a_clear_error() -> None:
    backend = KafkaBackend("127.0.0.1:9", startup_timeout=2)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1:9.*within 2"):
        backend.subscribe("q")
    assert time.monotonic() - started < 10


# -- separate processes ---------------------------------------------------------------
def start_worker(
    bootstrap: str, queue: str, ledger: Path, *options: str, sleep_ms: int = 0
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.worker",
            bootstrap,
            queue,
            queue,
            str(ledger),
            "--sleep-ms",
            str(sleep_ms),
            *options,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline().strip()
    proc.stdout.close()  # the worker prints nothing after "ready"
    assert ready == "ready"
    return proc


def ledger_amounts(ledger: Path) -> list[int]:
    if not ledger.exists():
        return []
    return [
        int(line.split()[2]) for line in ledger.read_text().splitlines() if line.count(" ") == 2
    ]


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_sigkill_mid_stream_then_restart_loses_nothing(
    backend: KafkaBackend, kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger, total = unique("q"), tmp_path / "ledger", 600
    backend.declare_queue(queue)
    publish(backend, queue, range(total))
    worker = start_worker(kafka_bootstrap, queue, ledger, sleep_ms=2)
    wait_for(lambda: len(ledger_amounts(ledger)) >= 150, 30)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    processed_before = len(ledger_amounts(ledger))
    assert processed_before < total
    worker = start_worker(kafka_bootstrap, queue, ledger)
    try:
        wait_for(lambda: set(ledger_amounts(ledger)) == set(range(total)), 60)
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
    amounts = ledger_amounts(ledger)
    print(f"processed {len(amounts)} for {total} messages ({len(amounts) - total} repeats)")
    assert set(amounts) == set(range(total))


def test_two_members_share_partitions_and_one_takes_over(
    backend: KafkaBackend, kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger, total = unique("q"), tmp_path / "ledger", 400
    backend.declare_queue(queue)
    first = start_worker(kafka_bootstrap, queue, ledger, sleep_ms=20)
    second = start_worker(kafka_bootstrap, queue, ledger, sleep_ms=20)
    try:
        publish(backend, queue, range(total))
        wait_for(
            lambda: (
                len({line.split()[0] for line in ledger.read_text().splitlines()}) == 2
                if ledger.exists()
                else False
            ),
            30,
        )  # both members are working
        first.terminate()
        assert first.wait(30) == 0  # graceful: commits what it did, leaves the group
        wait_for(lambda: set(ledger_amounts(ledger)) == set(range(total)), 60)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    assert set(ledger_amounts(ledger)) == set(range(total))


# -- concurrency --------------------------------------------------------------------------
def test_no_commit_passes_a_message_still_in_flight(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    queue = unique("q")
    backend.declare_topic(queue, partitions=1)
    backend.declare_queue(queue)
    publish(backend, queue, range(40))  # one partition, 40 keys
    release = threading.Event()
    done: list[int] = []

    def on_message(message: DoPayment) -> None:
        if message.amount == 5:
            release.wait(30)  # offset 5 stays in flight
        done.append(message.amount)

    dispatcher = MessageDispatcher(json_registry(), backend=backend, concurrency=8, ordering="key")
    dispatcher.attach_consumer(Consumer(on_message=on_message))
    thread = threading.Thread(target=dispatcher.consume_loop, args=(queue,))
    thread.start()
    try:
        wait_for(lambda: len(done) == 39, 20)
        time.sleep(2.5)  # commit interval passes
        assert committed(kafka_bootstrap, queue, queue, 1) == [5]  # not past the slow one
        release.set()
        wait_for(lambda: committed(kafka_bootstrap, queue, queue, 1) == [40], 20)
    finally:
        release.set()
        dispatcher.stop()
        thread.join(30)


def test_every_worker_finds_a_key_to_run_although_records_come_in_partition_runs(
    backend: KafkaBackend,
) -> None:
    """librdkafka hands over records in runs of one partition (a fetch brings up to 1 MiB
    of each): the default ``max_in_flight`` must hold several partitions' runs, or 32
    workers share the ~11 keys of one or two partitions (the bench's 10x instead of 25x)."""
    queue = unique("q")
    backend.declare_topic(queue, partitions=6)
    backend.declare_queue(queue)
    publisher = Publisher(json_registry(), backend)
    total = 8000
    for amount in range(total):
        publisher.publish(queue, DoPayment(f"o{amount}", amount), key=f"k{amount % 64}")
    backend.flush()
    lock = threading.Lock()
    running, peak, seen = 0, 0, 0

    def on_message(message: DoPayment) -> None:
        nonlocal running, peak, seen
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1
            seen += 1
            if seen == total:
                dispatcher.stop()

    dispatcher = MessageDispatcher(json_registry(), backend=backend, concurrency=32, ordering="key")
    dispatcher.attach_consumer(Consumer(on_message=on_message))
    thread = threading.Thread(target=dispatcher.consume_loop, args=(queue,))
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and seen == total
    assert peak == 32


def test_sigkill_under_concurrency_loses_nothing(
    backend: KafkaBackend, kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger, total = unique("q"), tmp_path / "ledger", 1000
    backend.declare_queue(queue)
    publish(backend, queue, range(total))
    worker = start_worker(kafka_bootstrap, queue, ledger, "--concurrency", "16", sleep_ms=5)
    wait_for(lambda: len(ledger_amounts(ledger)) >= 200, 30)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    assert len(set(ledger_amounts(ledger))) < total
    worker = start_worker(kafka_bootstrap, queue, ledger, "--concurrency", "16")
    try:
        wait_for(lambda: set(ledger_amounts(ledger)) == set(range(total)), 60)
    finally:
        worker.terminate()
        assert worker.wait(30) == 0


def test_a_topic_deleted_while_consumed_is_reported_and_nothing_done_is_lost(
    backend: KafkaBackend, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    from confluent_kafka.admin import AdminClient

    queue = unique("q")
    backend.declare_queue(queue)
    publish(backend, queue, range(20))
    recorder = Recorder()
    dispatcher = MessageDispatcher(json_registry(), backend=backend)
    dispatcher.attach_consumer(recorder)
    thread = threading.Thread(target=dispatcher.consume_loop, args=(queue,))
    with caplog.at_level("WARNING", logger="service"):
        thread.start()
        try:
            wait_for(lambda: len(recorder.amounts) == 20, 20)
            wait_for(lambda: sum(committed(kafka_bootstrap, queue, queue, 3)) == 20, 10)
            admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
            for future in admin.delete_topics([queue]).values():
                future.result(10)
            wait_for(lambda: "topic does not exist" in caplog.text, 30)
            assert thread.is_alive()  # the loop goes on: a clear warning, not a crash
        finally:
            dispatcher.stop()
            thread.join(30)
    assert sorted(recorder.amounts) == list(range(20))
