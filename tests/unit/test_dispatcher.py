"""The dispatcher's semantics (issue 2, numbered as there), on the in-memory backend."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from service import (
    Consumer,
    ConsumerError,
    DeduplicationStoreError,
    DeserializationError,
    DispatchOutcome,
    InMemoryBackend,
    InMemoryCache,
    Message,
    MessageDispatcher,
    MissingHeaderError,
    NullCache,
    RetryPolicy,
    SimpleMessageDispatcher,
    TransientError,
    UnknownManifestError,
    UnknownSerializerError,
    link_synchronously,
)
from tests.payments import (
    DoPayment,
    DraftPaymentConsumer,
    OrderResponse,
    PaymentConsumer,
    PaymentService,
    json_registry,
    publisher,
)

QUEUE = "payments"


class Recorder(Consumer):
    """Records what it processed; fails while ``failures`` > 0."""

    def __init__(self, failures: int = 0, accepted: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.seen: list[tuple[Any, str]] = []
        self.failures = failures
        self.accepted = accepted
        self.asked: list[object] = []

    def process(self, message: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("downstream is down")
        self.seen.append((message, kwargs["message_id"]))

    def accepts(self, manifest: str) -> bool:
        self.asked.append(manifest)
        return self.accepted is None or manifest in self.accepted


class OtherRecorder(Recorder):
    """A second consumer class, so that names (and dedup keys) differ."""


class Outcomes:
    """An observer that records how each message was settled."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[int, DispatchOutcome]] = []

    def polled(self, count: int) -> None:
        pass

    def consumer_outcome(self, consumer: str, outcome: str) -> None:
        pass

    def message_outcome(self, message: Message, outcome: DispatchOutcome, seconds: float) -> None:
        self.outcomes.append((message.attempt, outcome))


def make(*consumers: Consumer, **options: Any) -> tuple[InMemoryBackend, MessageDispatcher]:
    backend = InMemoryBackend()
    backend.bind(QUEUE, "payments-topic", "other-topic")
    dispatcher = MessageDispatcher(json_registry(), backend=backend, **options)
    for c in consumers:
        dispatcher.attach_consumer(c)
    return backend, dispatcher


def test_seed_draft_payment_consumer() -> None:
    service = PaymentService()
    backend, dispatcher = make(DraftPaymentConsumer(service))
    pub = publisher(backend)
    pub.publish("payments-topic", OrderResponse("o1", 10))
    pub.publish("payments-topic", DoPayment("o1", 10))
    pub.publish("payments-topic", {"ignored": True})
    dispatcher.consume_loop(QUEUE)
    assert service.processed == [OrderResponse("o1", 10)]
    assert service.payments == [DoPayment("o1", 10)]
    assert backend.pending(QUEUE) == [] and backend.dead_letters(QUEUE) == []


def test_seed_single_dispatch_payment_consumer() -> None:
    service = PaymentService()
    backend = InMemoryBackend()
    dispatcher = SimpleMessageDispatcher(PaymentConsumer(service), json_registry(), backend=backend)
    publisher(backend).publish(QUEUE, DoPayment("o2", 20))
    publisher(backend).publish(QUEUE, OrderResponse("o2", 20))
    dispatcher.consume_loop(QUEUE)
    assert service.payments == [DoPayment("o2", 20)]
    assert service.processed == [OrderResponse("o2", 20)]


# 1. accepts gets the manifest, before decoding -------------------------------------------
def test_accepts_receives_the_manifest_string() -> None:
    recorder = Recorder()
    backend, dispatcher = make(recorder)
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    dispatcher.consume_loop(QUEUE)
    assert recorder.asked == ["DoPayment"]


def test_message_no_consumer_accepts_is_acknowledged_without_decoding() -> None:
    recorder = Recorder(accepted=("OrderResponse",))
    backend, dispatcher = make(recorder)
    # garbage bytes: decoding would fail and dead-letter it, so acking proves no decode
    headers = (("serializer_id", b"1"), ("manifest", b"DoPayment"), ("message_id", b"x"))
    backend.publish_raw("payments-topic", b"\x00garbage", headers=headers)
    dispatcher.observer = observer = Outcomes()
    dispatcher.consume_loop(QUEUE)
    assert observer.outcomes == [(1, DispatchOutcome.SKIPPED)]
    assert backend.pending(QUEUE) == [] and backend.dead_letters(QUEUE) == []
    assert recorder.seen == []


# 3. loop, stop, attach/detach -----------------------------------------------------------
def test_consume_loop_returns_when_drained_and_unattach_stops_delivery() -> None:
    recorder = Recorder()
    backend, dispatcher = make(recorder)
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    dispatcher.consume_loop(QUEUE)
    dispatcher.unattach_consumer(recorder)
    publisher(backend).publish("payments-topic", DoPayment("o", 2))
    dispatcher.consume_loop(QUEUE)
    assert [m.amount for m, _ in recorder.seen] == [1]


@pytest.mark.parametrize("early_ack", [False, True])
@pytest.mark.parametrize("poll_batch", [1, 100])
def test_stop_returns_after_the_messages_in_hand_and_the_rest_is_delivered_again(
    poll_batch: int, early_ack: bool
) -> None:
    """The rest of a polled batch is not "in hand": a SIGTERM during a large batch of slow
    messages must not wait for all of them (past the shutdown timeout)."""
    backend = InMemoryBackend()
    seen: list[int] = []
    dispatcher: MessageDispatcher

    def on_message(message: DoPayment) -> None:
        seen.append(message.amount)
        if message.amount == 2:
            dispatcher.stop()

    dispatcher = MessageDispatcher(
        json_registry(), backend=backend, poll_batch=poll_batch, early_ack=early_ack
    )
    dispatcher.attach_consumer(Consumer(on_message=on_message))
    for amount in range(1, 6):
        publisher(backend).publish(QUEUE, DoPayment("o", amount))
    dispatcher.consume_loop(QUEUE)
    assert seen == [1, 2]
    assert backend.committed(QUEUE) == {(QUEUE, 0): 2}  # the next member starts at 3
    dispatcher.consume_loop(QUEUE)
    assert seen == [1, 2, 3, 4, 5]
    assert backend.pending(QUEUE) == []


def test_stop_from_another_thread_is_honoured_even_before_the_loop_starts() -> None:
    recorder = Recorder()
    backend, dispatcher = make(recorder)
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    thread = threading.Thread(target=dispatcher.stop)
    thread.start()
    thread.join()
    dispatcher.consume_loop(QUEUE)
    assert recorder.seen == []
    dispatcher.consume_loop(QUEUE)  # the stop request was consumed by the first loop
    assert len(recorder.seen) == 1


# 4. bad messages go to the dead-letter destination, never silently dropped ---------------
@pytest.mark.parametrize(
    ("headers", "payload", "error"),
    [
        (
            (("serializer_id", b"42"), ("manifest", b"DoPayment"), ("message_id", b"1")),
            b"{}",
            UnknownSerializerError,
        ),
        (
            (("serializer_id", b"1"), ("manifest", b"Nope"), ("message_id", b"1")),
            b"{}",
            UnknownManifestError,
        ),
        (
            (("serializer_id", b"1"), ("manifest", b"DoPayment"), ("message_id", b"1")),
            b"\xff\x00garbage",
            DeserializationError,
        ),
        ((("manifest", b"DoPayment"), ("message_id", b"1")), b"{}", MissingHeaderError),
    ],
)
def test_undecodable_message_is_dead_lettered_acknowledged_and_reported(
    headers: tuple[tuple[str, bytes], ...], payload: bytes, error: type[Exception]
) -> None:
    recorder = Recorder()
    backend, dispatcher = make(recorder)
    backend.publish_raw("payments-topic", payload, headers=headers)
    publisher(backend).publish("payments-topic", DoPayment("after", 2))
    errors: list[Exception] = []
    dispatcher.consume_loop(QUEUE, on_exception=errors.append)
    assert [type(e) for e in errors] == [error]
    assert "payments-topic[0]@0" in str(errors[0])
    [dead] = backend.dead_letters(QUEUE)
    assert dead.reason.startswith(f"{error.__name__}: ")
    assert dead.message.offset == 0
    assert backend.pending(QUEUE) == []
    assert [m.order_id for m, _ in recorder.seen] == ["after"]  # the loop went on
    [record] = backend.records("payments.dlq")
    assert record.value == payload
    assert record.header("dlq.error_class") == error.__name__.encode()
    assert record.header("dlq.original_topic") == b"payments-topic"


# 5. deduplication ------------------------------------------------------------------------
def test_dedup_key_is_consumer_name_dot_message_id_stored_after_success() -> None:
    cache = InMemoryCache()
    recorder = Recorder()
    backend, dispatcher = make(recorder, cache=cache)
    publisher(backend).publish("payments-topic", DoPayment("o", 1), message_id="m-1")
    dispatcher.consume_loop(QUEUE)
    assert "tests.unit.test_dispatcher.Recorder.m-1" in cache


def test_duplicate_message_id_is_processed_once_and_both_are_acknowledged() -> None:
    recorder = Recorder()
    backend, dispatcher = make(recorder, cache=InMemoryCache())
    publisher(backend).publish("payments-topic", DoPayment("o", 1), message_id="same")
    publisher(backend).publish("payments-topic", DoPayment("o", 1), message_id="same")
    dispatcher.consume_loop(QUEUE)
    assert len(recorder.seen) == 1
    assert backend.pending(QUEUE) == []  # seed defect 1: the duplicate is acknowledged


def test_failed_consumer_does_not_store_its_key() -> None:
    cache = InMemoryCache()
    backend, dispatcher = make(Recorder(failures=9), cache=cache, retry=RetryPolicy(max_attempts=2))
    publisher(backend).publish("payments-topic", DoPayment("o", 1), message_id="m")
    dispatcher.consume_loop(QUEUE)
    assert "tests.unit.test_dispatcher.Recorder.m" not in cache


# 6. acknowledgement ----------------------------------------------------------------------
def test_failed_message_is_not_acknowledged_and_is_delivered_again_by_the_same_loop() -> None:
    recorder = Recorder(failures=1)
    backend, dispatcher = make(recorder)
    dispatcher.observer = observer = Outcomes()
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    publisher(backend).publish("payments-topic", DoPayment("o", 2))
    dispatcher.consume_loop(QUEUE)
    assert observer.outcomes == [
        (1, DispatchOutcome.RETRIED),
        (2, DispatchOutcome.ACKNOWLEDGED),  # the backoff passed on the backend's clock
        (1, DispatchOutcome.ACKNOWLEDGED),  # the next one waited behind it
    ]
    assert [m.amount for m, _ in recorder.seen] == [1, 2]
    assert backend.pending(QUEUE) == []


def test_redelivery_runs_only_consumers_that_did_not_succeed_even_with_null_cache() -> None:
    good, flaky = Recorder(), OtherRecorder(failures=1)
    backend, dispatcher = make(good, flaky, cache=NullCache())
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    dispatcher.consume_loop(QUEUE)
    assert (len(good.seen), len(flaky.seen)) == (1, 1)
    assert backend.pending(QUEUE) == []


def test_success_bookkeeping_is_bounded() -> None:
    good, flaky = Recorder(), OtherRecorder(failures=2)
    backend, dispatcher = make(good, flaky, remembered_records=1)
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    publisher(backend).publish("other-topic", DoPayment("o", 2))  # another partition
    dispatcher.consume_loop(QUEUE)  # both fail in flaky first; only one is remembered
    assert sorted(m.amount for m, _ in good.seen) in ([1, 1, 2], [1, 2, 2])  # one forgotten


def test_always_ack_acknowledges_despite_failure() -> None:
    backend, dispatcher = make(Recorder(failures=1), always_ack=True)
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    errors: list[Exception] = []
    dispatcher.consume_loop(QUEUE, on_exception=errors.append)
    assert backend.pending(QUEUE) == [] and len(errors) == 1


def test_early_ack_acknowledges_before_processing() -> None:
    backend = InMemoryBackend()
    states: list[int] = []

    def on_message(message: DoPayment) -> None:
        states.append(len(backend.pending(QUEUE)))
        raise RuntimeError("lost, as early_ack means at most once")

    dispatcher = MessageDispatcher(json_registry(), backend=backend, early_ack=True)
    dispatcher.attach_consumer(Consumer(on_message=on_message))
    publisher(backend).publish(QUEUE, DoPayment("o", 1))
    dispatcher.consume_loop(QUEUE)
    assert states == [0]
    assert backend.pending(QUEUE) == [] and backend.dead_letters(QUEUE) == []


def test_message_is_dead_lettered_after_the_last_attempt_naming_failing_consumers() -> None:
    good, bad = Recorder(), OtherRecorder(failures=99)
    backend, dispatcher = make(good, bad, retry=RetryPolicy(max_attempts=3))
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    dispatcher.consume_loop(QUEUE)
    [dead] = backend.dead_letters(QUEUE)
    assert dead.reason_detail.attempts == 3
    assert dead.reason_detail.failing_consumers == ("tests.unit.test_dispatcher.OtherRecorder",)
    assert dead.reason_detail.error_class == "ConsumerError"
    assert "downstream is down" in dead.reason
    assert backend.pending(QUEUE) == [] and len(good.seen) == 1


class BrokenCache(InMemoryCache):
    """Unreachable for its first ``failures`` reads (``fail_reads``) or writes."""

    def __init__(self, fail_reads: bool, failures: int) -> None:
        super().__init__()
        self.fail_reads = fail_reads
        self.failures = failures

    def _fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")

    def get(self, key: str, *, partition: int | None = None) -> str | None:
        if self.fail_reads:
            self._fail()
        return super().get(key, partition=partition)

    def store(
        self, key: str, value: str, expire: float | None = None, *, partition: int | None = None
    ) -> None:
        if not self.fail_reads:
            self._fail()
        super().store(key, value, expire, partition=partition)


@pytest.mark.parametrize("fail_reads", [True, False])
def test_unusable_dedup_store_means_retry_not_ack(fail_reads: bool) -> None:
    recorder = Recorder()
    backend, dispatcher = make(
        recorder, cache=BrokenCache(fail_reads, failures=6), retry=RetryPolicy(max_attempts=2)
    )
    dispatcher.observer = observer = Outcomes()
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    errors: list[Exception] = []
    dispatcher.consume_loop(QUEUE, on_exception=errors.append)
    assert [type(e) for e in errors] == [DeduplicationStoreError] * 6
    # retried past max_attempts (the store's failure may pass), never acknowledged meanwhile
    assert [outcome for _, outcome in observer.outcomes] == [DispatchOutcome.RETRIED] * 6 + [
        DispatchOutcome.ACKNOWLEDGED
    ]
    assert len(recorder.seen) == 1  # never re-run after its success
    assert backend.pending(QUEUE) == [] and backend.dead_letters(QUEUE) == []


# 7. callbacks ----------------------------------------------------------------------------
def test_on_exception_gets_each_consumer_error_and_after_consume_runs_per_message() -> None:
    a, b = Recorder(failures=1), OtherRecorder(failures=1)
    backend, dispatcher = make(a, b)
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    backend.publish_raw("payments-topic", b"junk")
    publisher(backend).publish("payments-topic", DoPayment("o", 2))
    errors: list[Exception] = []
    calls: list[int] = []
    dispatcher.consume_loop(
        QUEUE, on_exception=errors.append, after_consume=lambda: calls.append(1)
    )
    assert [type(e) for e in errors] == [ConsumerError, ConsumerError, MissingHeaderError]
    consumer_errors = [e for e in errors if isinstance(e, ConsumerError)]
    assert [e.consumer_name.rsplit(".", 1)[1] for e in consumer_errors] == [
        "Recorder",
        "OtherRecorder",
    ]
    assert isinstance(errors[0].__cause__, RuntimeError)
    assert len(calls) == 4  # per settled message: the first one's retry counts


def test_raising_accepts_counts_as_a_failure_not_a_skip() -> None:
    class Picky(Consumer):
        def process(self, message: Any, **kwargs: Any) -> None:
            raise AssertionError("never called")

        def accepts(self, manifest: str) -> bool:
            raise ValueError("bad accepts")

    backend, dispatcher = make(Picky(), retry=RetryPolicy(max_attempts=2))
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    errors: list[Exception] = []
    dispatcher.consume_loop(QUEUE, on_exception=errors.append)
    assert [type(e) for e in errors] == [ConsumerError, ConsumerError]
    [dead] = backend.dead_letters(QUEUE)
    assert dead.reason_detail.failing_consumers == (Picky().name,)


def test_link_synchronously_processes_on_publish() -> None:
    service = PaymentService()
    backend = InMemoryBackend()
    link_synchronously(QUEUE, [PaymentConsumer(service)], json_registry(), backend)
    publisher(backend).publish(QUEUE, DoPayment("o", 3))
    assert service.payments == [DoPayment("o", 3)]
    publisher(backend).publish("elsewhere", DoPayment("o", 4))
    assert len(service.payments) == 1


@pytest.mark.parametrize("transient", [TransientError("db down"), ConnectionError("refused")])
def test_errors_that_may_pass_are_retried_past_max_attempts_never_dead_lettered(
    transient: Exception,
) -> None:
    failures = 5

    def on_message(message: DoPayment) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise transient

    backend, dispatcher = make(Consumer(on_message=on_message), retry=RetryPolicy(max_attempts=2))
    dispatcher.observer = observer = Outcomes()
    publisher(backend).publish("payments-topic", DoPayment("o", 1))
    dispatcher.consume_loop(QUEUE)
    assert observer.outcomes == [(a, DispatchOutcome.RETRIED) for a in range(1, 6)] + [
        (6, DispatchOutcome.ACKNOWLEDGED)
    ]
    assert backend.dead_letters(QUEUE) == [] and backend.pending(QUEUE) == []
