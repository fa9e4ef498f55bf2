"""Records of other producers, the record in handlers, message-id rules, async consumers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from service import (
    ConfigurationError,
    Consumer,
    InMemoryBackend,
    MessageDispatcher,
    Record,
    RetryPolicy,
    SingleDispatchConsumer,
    consumer,
)
from service.dispatch.routing import RoutingRules
from tests.payments import DoPayment, OrderResponse, json_registry, publisher

QUEUE = "legacy"
PAYMENT = json.dumps({"order_id": "o-1", "amount": 5}).encode()


class Recorder(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, str, Record]] = []

    def process(self, message: Any, **kwargs: Any) -> None:
        self.calls.append((message, kwargs["message_id"], kwargs["record"]))


def run(
    backend: InMemoryBackend, *consumers: Consumer, **options: Any
) -> tuple[MessageDispatcher, list[Exception]]:
    errors: list[Exception] = []
    dispatcher = MessageDispatcher(json_registry(), backend=backend, **options)
    for each in consumers:
        dispatcher.attach_consumer(each)
    dispatcher.consume_loop(QUEUE, on_exception=errors.append)
    return dispatcher, errors


def test_handlers_get_the_record_behind_the_message() -> None:
    backend = InMemoryBackend()
    publisher(backend).publish(QUEUE, DoPayment("o-1", 5), key="k-1")
    recorder = Recorder()
    run(backend, recorder)
    [(message, message_id, record)] = recorder.calls
    assert message == DoPayment("o-1", 5)
    assert record.message_id == message_id
    assert (record.topic, record.partition, record.offset, record.attempt) == (QUEUE, 0, 0, 1)
    assert record.key == b"k-1"
    assert record.header("manifest") == b"DoPayment"


def test_a_key_decoder_gives_handlers_decoded_keys() -> None:
    backend = InMemoryBackend()
    publisher(backend).publish(QUEUE, DoPayment("o-1", 5), key="k-1")
    recorder = Recorder()
    run(backend, recorder, key_decoder=lambda raw: raw.decode())
    assert recorder.calls[0][2].key == "k-1"


class Payments(SingleDispatchConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int | None]] = []

    @consumer
    def on_payment(self, payment: DoPayment, record: Record) -> None:
        self.seen.append((payment.order_id, record.offset))

    @consumer
    def on_order(self, order: OrderResponse) -> None:
        self.seen.append((order.order_id, None))


def test_a_consumer_method_declaring_a_record_parameter_receives_it() -> None:
    backend = InMemoryBackend()
    pub = publisher(backend)
    pub.publish(QUEUE, DoPayment("o-1", 5))
    pub.publish(QUEUE, OrderResponse("o-2", 2))
    payments = Payments()
    run(backend, payments)
    assert payments.seen == [("o-1", 0), ("o-2", None)]


def test_a_second_parameter_must_be_annotated_record() -> None:
    with pytest.raises(ConfigurationError, match="annotated Record"):

        class Wrong(SingleDispatchConsumer):
            @consumer
            def on_payment(self, payment: DoPayment, extra: str) -> None:
                del payment, extra


# -- records of other producers ---------------------------------------------------------
def test_header_less_json_is_routed_by_the_queue_setting_with_ids_by_rule() -> None:
    backend = InMemoryBackend()
    backend.publish(QUEUE, PAYMENT, key=b"pay-1")
    backend.publish(QUEUE, PAYMENT, key=b"pay-1")  # a re-send: same key
    for index, (rule, ids) in enumerate(
        [
            ("key", ["pay-1", "pay-1"]),
            ("offset", [f"{QUEUE}/0/0", f"{QUEUE}/0/1"]),
            ("header", [f"{QUEUE}/0/0", f"{QUEUE}/0/1"]),  # no header: the offset id
            ("field:order_id", ["o-1", "o-1"]),
        ]
    ):
        queue = f"{QUEUE}-{index}"  # a group of its own for each rule
        backend.declare_queue(queue, QUEUE)
        recorder = Recorder()
        routing = RoutingRules(headerless=(1, "DoPayment"), message_id=rule)
        member = MessageDispatcher(json_registry(), backend=backend, routing=routing)
        member.attach_consumer(recorder)
        member.consume_loop(queue)
        assert [m for m, _, _ in recorder.calls] == [DoPayment("o-1", 5)] * 2, rule
        assert [i for _, i, _ in recorder.calls] == ids, rule


def test_spring_type_ids_map_to_manifests() -> None:
    backend = InMemoryBackend()
    backend.publish(QUEUE, PAYMENT, headers=(("__TypeId__", b"com.acme.DoPayment"),))
    recorder = Recorder()
    run(backend, recorder, routing=RoutingRules(type_ids={"com.acme.DoPayment": "DoPayment"}))
    assert [m for m, _, _ in recorder.calls] == [DoPayment("o-1", 5)]


def test_a_record_that_cannot_be_routed_is_dead_lettered_saying_what_is_needed() -> None:
    backend = InMemoryBackend()
    backend.publish(QUEUE, PAYMENT)
    backend.publish(QUEUE, PAYMENT, headers=(("__TypeId__", b"com.acme.Unknown"),))
    recorder = Recorder()
    run(backend, recorder)
    assert recorder.calls == []
    reasons = [d.reason for d in backend.dead_letters(QUEUE)]
    assert len(reasons) == 2
    assert all(r.startswith("MissingHeaderError") and "headerless" in r for r in reasons)
    assert "com.acme.Unknown" in reasons[1]


def test_our_records_without_a_message_id_header_get_the_offset_id() -> None:
    backend = InMemoryBackend()
    backend.publish(QUEUE, PAYMENT, headers=(("serializer_id", b"1"), ("manifest", b"DoPayment")))
    recorder = Recorder()
    run(backend, recorder)
    assert [i for _, i, _ in recorder.calls] == [f"{QUEUE}/0/0"]


def test_a_bad_message_id_rule_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="message_id"):
        RoutingRules(message_id="field:")


# -- async consumers ----------------------------------------------------------------------
class AsyncRecorder(Consumer):
    def __init__(self, fail: set[str] | None = None) -> None:
        super().__init__()
        self.done: list[str] = []
        self.fail = fail or set()

    async def process(self, message: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        if message.order_id in self.fail:
            raise RuntimeError(f"async failure on {message.order_id}")
        self.done.append(message.order_id)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_async_consumers_are_awaited_and_their_failures_retried_then_dead_lettered(
    concurrency: int,
) -> None:
    backend = InMemoryBackend()
    pub = publisher(backend)
    for i in range(10):
        pub.publish(QUEUE, DoPayment(f"o-{i}", i), key=f"k{i % 3}")
    async_one = AsyncRecorder(fail={"o-3"})
    sync_one = Recorder()
    _, errors = run(
        backend,
        async_one,
        sync_one,
        concurrency=concurrency,
        ordering="key",
        retry=RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.01),
    )
    assert sorted(async_one.done) == sorted(f"o-{i}" for i in range(10) if i != 3)
    assert len(sync_one.calls) == 10  # mixed on one dispatcher; the sync one ran once each
    [letter] = backend.dead_letters(QUEUE)
    assert "async failure on o-3" in letter.reason and letter.reason_detail.attempts == 2
    assert len([e for e in errors if "async failure" in str(e)]) == 2


class AsyncPayments(SingleDispatchConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.finished: list[str] = []

    @consumer
    async def on_payment(self, payment: DoPayment, record: Record) -> None:
        if payment.order_id == "slow":
            while not self.released.is_set():
                await asyncio.sleep(0.01)
        self.finished.append(f"{payment.order_id}@{record.offset}")


def test_a_slow_async_handler_does_not_block_other_keys() -> None:
    backend = InMemoryBackend()
    pub = publisher(backend)
    pub.publish(QUEUE, DoPayment("slow", 0), key="slow")
    for i in range(1, 6):
        pub.publish(QUEUE, DoPayment(f"fast-{i}", i), key=f"fast-{i}")
    payments = AsyncPayments()
    dispatcher = MessageDispatcher(json_registry(), backend=backend, concurrency=4, ordering="key")
    dispatcher.attach_consumer(payments)
    loop = threading.Thread(target=dispatcher.consume_loop, args=(QUEUE,))
    loop.start()
    deadline = time.monotonic() + 10
    while len(payments.finished) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(payments.finished) == [f"fast-{i}@{i}" for i in range(1, 6)]
    payments.released.set()
    loop.join(10)
    assert not loop.is_alive()
    assert payments.finished[-1] == "slow@0"
    assert backend.pending(QUEUE) == []
