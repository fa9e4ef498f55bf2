"""Outputs tied to their input: settled only when confirmed; dedup entries after them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from service import Consumer, InMemoryBackend, InMemoryCache, MessageDispatcher, RetryPolicy
from service.backends.outputs import current_outputs
from tests.payments import DoPayment, json_registry, publisher

QUEUE = "outputs"


class SlowBroker(Consumer):
    """Registers one output per message; the test confirms or refuses them later."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[Callable[[str | None], None]] = []
        self.runs = 0

    def process(self, message: Any, **kwargs: Any) -> None:
        self.runs += 1
        outputs = current_outputs()
        assert outputs is not None
        self.reports.append(outputs.register("out"))


def start(
    backend: InMemoryBackend, consumer: Consumer, **options: Any
) -> tuple[MessageDispatcher, threading.Thread]:
    dispatcher = MessageDispatcher(json_registry(), backend=backend, **options)
    dispatcher.attach_consumer(consumer)
    thread = threading.Thread(target=dispatcher.consume_loop, args=(QUEUE,))
    thread.start()
    return dispatcher, thread


def wait(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_message_is_done_and_deduplicated_only_once_its_outputs_are_confirmed() -> None:
    backend = InMemoryBackend()
    publisher(backend).publish(QUEUE, DoPayment("o-1", 1))
    cache = InMemoryCache()
    forwarder = SlowBroker()
    _, loop = start(backend, forwarder, cache=cache)
    wait(lambda: len(forwarder.reports) == 1)
    time.sleep(0.2)
    assert len(backend.pending(QUEUE)) == 1 and len(cache) == 0  # in flight, no entry yet
    forwarder.reports[0](None)
    loop.join(10)
    assert not loop.is_alive()
    assert backend.pending(QUEUE) == [] and len(cache) == 1


def test_a_refused_output_fails_the_message_and_it_is_retried_then_dead_lettered() -> None:
    backend = InMemoryBackend()
    publisher(backend).publish(QUEUE, DoPayment("o-1", 1))
    forwarder = SlowBroker()
    _, loop = start(
        backend, forwarder, retry=RetryPolicy(max_attempts=2, backoff_base=0, backoff_max=0)
    )
    for attempt in (1, 2):
        wait(lambda a=attempt: len(forwarder.reports) == a)  # type: ignore[misc]
        forwarder.reports[-1]("MSG_SIZE_TOO_LARGE: too big")
    loop.join(10)
    assert not loop.is_alive()
    [letter] = backend.dead_letters(QUEUE)
    assert "output to 'out' refused: MSG_SIZE_TOO_LARGE" in letter.reason
    assert letter.reason_detail.attempts == 2 and forwarder.runs == 2
