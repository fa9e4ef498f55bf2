"""Exactly-once on the in-memory backend: outputs appear with their input's commit, or never."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from service import Consumer, InMemoryBackend, MessageDispatcher, Publisher, RetryPolicy
from service.errors import ConfigurationError
from tests.payments import DoPayment, json_registry, publisher

QUEUE, OUT = "eos", "eos.out"


class Forward(Consumer):
    """One output per input; fails the first delivery of amounts in ``fail_once``."""

    def __init__(self, backend: InMemoryBackend, fail_once: set[int] | None = None) -> None:
        super().__init__()
        self._publisher = Publisher(json_registry(), backend)
        self._fail_once = set(fail_once or ())
        self.runs: Counter[int] = Counter()
        self.gate: threading.Event | None = None

    def process(self, message: Any, **kwargs: Any) -> None:
        self.runs[message.amount] += 1
        self._publisher.publish(OUT, DoPayment(message.order_id, message.amount))
        if self.gate is not None:
            self.gate.wait(10)
        if message.amount in self._fail_once:
            self._fail_once.discard(message.amount)
            raise RuntimeError("after publishing")  # its staged output dies with it


def outputs(backend: InMemoryBackend) -> Counter[int]:
    return Counter(json.loads(r.value or b"{}")["amount"] for r in backend.records(OUT))


def run(backend: InMemoryBackend, consumer: Consumer, **options: Any) -> MessageDispatcher:
    dispatcher = MessageDispatcher(json_registry(), backend=backend, **options)
    dispatcher.attach_consumer(consumer)
    dispatcher.consume_loop(QUEUE)  # drains, then returns
    return dispatcher


def wait(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_failed_delivery_leaves_no_output_and_the_retry_leaves_one() -> None:
    backend = InMemoryBackend()
    backend.declare_queue(QUEUE, exactly_once=True)
    for i in range(5):
        publisher(backend).publish(QUEUE, DoPayment(f"o{i}", i))
    forward = Forward(backend, fail_once={2})
    run(backend, forward, retry=RetryPolicy(max_attempts=3, backoff_base=0, backoff_max=0))
    assert forward.runs[2] == 2
    assert outputs(backend) == Counter(range(5))
    assert backend.committed(QUEUE) == {(QUEUE, 0): 5}


def test_outputs_appear_only_with_the_commit_and_a_lost_partition_writes_none() -> None:
    backend = InMemoryBackend()
    backend.declare_queue(QUEUE, exactly_once=True)
    publisher(backend).publish(QUEUE, DoPayment("o0", 0))
    forward = Forward(backend)
    forward.gate = threading.Event()
    dispatcher = MessageDispatcher(json_registry(), backend=backend, concurrency=2)
    dispatcher.attach_consumer(forward)
    loop = threading.Thread(target=dispatcher.consume_loop, args=(QUEUE,))
    loop.start()
    wait(lambda: forward.runs[0] == 1)
    assert backend.records(OUT) == []  # staged, not written
    [member] = backend.members(QUEUE)
    backend.lose(QUEUE, member)  # taken away before the commit
    forward.gate.set()
    loop.join(10)
    assert not loop.is_alive()
    assert forward.runs[0] == 2  # delivered again after the loss...
    assert outputs(backend) == Counter({0: 1})  # ...and written once


def test_a_dead_letter_is_written_with_the_commit() -> None:
    backend = InMemoryBackend()
    backend.declare_queue(QUEUE, exactly_once=True)
    backend.publish_raw(QUEUE, b"garbage")
    publisher(backend).publish(QUEUE, DoPayment("o1", 1))
    run(backend, Forward(backend))
    assert len(backend.dead_letters(QUEUE)) == 1
    assert len(backend.records(f"{QUEUE}.dlq")) == 1
    assert outputs(backend) == Counter({1: 1})


def test_early_ack_is_refused_with_exactly_once() -> None:
    backend = InMemoryBackend()
    backend.declare_queue(QUEUE, exactly_once=True)
    dispatcher = MessageDispatcher(json_registry(), backend=backend, early_ack=True)
    dispatcher.attach_consumer(Forward(backend))
    with pytest.raises(ConfigurationError, match="early_ack"):
        dispatcher.consume_loop(QUEUE)
