"""Ordered concurrency: a bounded pool of workers, one lane per key or partition.

Contract (``MessageDispatcher(concurrency=N, ordering=...)`` with N > 1):

* ``ordering="key"``: messages with the same key (in one partition) are processed one at a
  time, in offset order; different keys run in parallel. ``"partition"``: each partition in
  order, partitions in parallel. ``"none"``: any message on any worker.
* Workers only *decide* (run consumers, dedup, decoding); the polling thread settles every
  verdict, so the per-partition tracker commits only offsets below which everything is
  done, whatever order completions arrive in.
* A failed message is retried on its own lane after the retry policy's backoff (its key or
  partition waits; the others go on), then dead-lettered exactly as without concurrency.
* Back-pressure: at most ``max_in_flight`` messages polled and not settled, and at most
  ``max_in_flight_per_partition`` per partition (that partition is paused until half of them
  are done), so memory stays flat under a backlog.
* Revocation waits (up to ``revoke_timeout``) for started work of the revoked partitions and
  settles it before the revocation commit; work not started is abandoned and delivered again
  to the new owner. Stopping finishes the messages in hand; queued ones are abandoned.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Literal

from service.backends.base import Subscription, TopicPartition
from service.messages import Message
from service.outcomes import DispatchOutcome, ExceptionCallback, Verdict

if TYPE_CHECKING:
    from service.dispatcher import MessageDispatcher

__all__ = ["ConcurrentLoop", "Ordering"]

Ordering = Literal["partition", "key", "none"]
_Done = tuple[Message, Verdict, float]


class ConcurrentLoop:
    """Runs one subscription's messages on ``concurrency`` worker threads."""

    def __init__(
        self,
        dispatcher: MessageDispatcher,
        subscription: Subscription,
        *,
        concurrency: int,
        ordering: Ordering,
        max_in_flight: int,
        max_in_flight_per_partition: int,
        on_exception: ExceptionCallback | None,
        after_consume: Callable[[], None] | None,
        revoke_timeout: float = 30.0,
    ) -> None:
        self._dispatcher = dispatcher
        self._subscription = subscription
        self._concurrency = concurrency
        self._lane_of = _LANES[ordering]
        self._max_total = max_in_flight
        self._max_partition = max_in_flight_per_partition
        self._on_exception = on_exception
        self._after_consume = after_consume
        self._revoke_timeout = revoke_timeout
        self._cond = threading.Condition()
        self._lanes: dict[Hashable, deque[Message]] = {}
        self._ready: deque[Hashable] = deque()
        self._active: set[Hashable] = set()
        self._done: deque[_Done] = deque()
        self._per_partition: dict[TopicPartition, int] = {}
        self._held: set[TopicPartition] = set()
        self._in_flight = 0
        self._stopping = False
        self._workers: list[threading.Thread] = []
        self._failure: BaseException | None = None
        subscription.add_listener(self)

    # -- the polling thread ---------------------------------------------------------------
    def run(self) -> None:
        """Poll, hand messages to the lanes and settle verdicts until the dispatcher stops."""
        dispatcher, subscription = self._dispatcher, self._subscription
        for index in range(self._concurrency):
            worker = threading.Thread(target=self._work, name=f"dispatch-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        try:
            while not dispatcher.stop_requested:
                if self._failure is not None:
                    raise self._failure
                self._settle_done()
                room = self._max_total - self._in_flight
                if room <= 0:
                    with self._cond:
                        if not self._done:
                            self._cond.wait(0.05)
                    continue
                wait = 0.005 if self._in_flight else dispatcher.poll_timeout
                batch = subscription.poll(min(room, dispatcher.poll_batch), wait)
                dispatcher.last_poll = time.monotonic()
                if batch is None:  # a finite backend is drained: finish what is in flight
                    while self._in_flight and not dispatcher.stop_requested:
                        if self._failure is not None:
                            raise self._failure
                        self._settle_done(wait=0.05)
                    return
                count = 0
                for message in batch:
                    self._submit(message)
                    count += 1
                dispatcher.cache.poll()
                if dispatcher.observer is not None:
                    dispatcher.observer.polled(count)
        finally:
            self._shut_down()

    def _submit(self, message: Message) -> None:
        if self._dispatcher.early_ack:
            self._subscription.acknowledge(message)
        lane = self._lane_of(message)
        partition = (message.topic, message.partition)
        with self._cond:
            queue = self._lanes.get(lane)
            if queue is None:
                queue = self._lanes[lane] = deque()
            queue.append(message)
            if len(queue) == 1 and lane not in self._active:
                self._ready.append(lane)
            self._in_flight += 1
            count = self._per_partition[partition] = self._per_partition.get(partition, 0) + 1
            self._cond.notify()
        if count >= self._max_partition and partition not in self._held:
            self._held.add(partition)
            self._subscription.pause([partition])

    def _settle_done(self, wait: float = 0.0) -> None:
        with self._cond:
            if not self._done and wait:
                self._cond.wait(wait)
            finished, self._done = self._done, deque()
        dispatcher, observer = self._dispatcher, self._dispatcher.observer
        for message, verdict, seconds in finished:
            outcome = dispatcher.settle(self._subscription, message, verdict, self._on_exception)
            if observer is not None:
                observer.message_outcome(message, outcome, seconds)
            self._release(message)
            if self._after_consume is not None:
                self._after_consume()

    def _release(self, message: Message) -> None:
        partition = (message.topic, message.partition)
        with self._cond:
            self._in_flight -= 1
            left = self._per_partition[partition] = self._per_partition[partition] - 1
        if partition in self._held and left <= self._max_partition // 2:
            self._held.discard(partition)
            self._subscription.resume([partition])

    def _shut_down(self) -> None:
        with self._cond:
            self._stopping = True
            for queue in self._lanes.values():  # not started: delivered again after a restart
                for message in queue:
                    self._per_partition[(message.topic, message.partition)] -= 1
                self._in_flight -= len(queue)
            self._lanes.clear()
            self._ready.clear()
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()
        self._settle_done()

    # -- revocation (inside poll, on the polling thread) ------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Nothing to prepare."""

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Abandon queued work of ``partitions``; wait for and settle their started work."""
        revoked = set(partitions)
        with self._cond:
            for lane in list(self._lanes):
                queue = self._lanes[lane]
                kept = deque(m for m in queue if (m.topic, m.partition) not in revoked)
                dropped = len(queue) - len(kept)
                if dropped:
                    self._in_flight -= dropped
                    for m in queue:
                        if (m.topic, m.partition) in revoked:
                            self._per_partition[(m.topic, m.partition)] -= 1
                    if kept:
                        self._lanes[lane] = kept
                    else:
                        del self._lanes[lane]
                        if lane in self._ready:
                            self._ready.remove(lane)
        deadline = time.monotonic() + self._revoke_timeout
        while time.monotonic() < deadline and any(self._per_partition.get(p, 0) for p in revoked):
            self._settle_done(wait=0.05)
        for partition in revoked:
            self._held.discard(partition)

    def before_commit(self) -> None:
        """Settle what is finished, so the commit includes it."""
        self._settle_done()

    def commit_failed(self) -> None:
        """Nothing to do."""

    def commit_ticket(self) -> Callable[[], bool]:
        """Never holds a commit back."""
        return _always

    # -- the workers ------------------------------------------------------------------------
    def _work(self) -> None:
        dispatcher, cond = self._dispatcher, self._cond
        while True:
            with cond:
                while not self._ready and not self._stopping:
                    cond.wait()
                if self._stopping:
                    return
                lane = self._ready.popleft()
                self._active.add(lane)
                message = self._lanes[lane].popleft()
            started = time.perf_counter()
            try:
                verdict = dispatcher.decide(message, self._on_exception)
                while verdict.outcome is DispatchOutcome.RETRIED and not self._wait(verdict.delay):
                    message = message._replace(attempt=message.attempt + 1)
                    verdict = dispatcher.decide(message, self._on_exception)
            except BaseException as exc:  # noqa: BLE001 - a bug or a callback raising: stop loudly
                with cond:
                    self._failure = exc
                    self._stopping = True
                    cond.notify_all()
                return
            with cond:
                self._done.append((message, verdict, time.perf_counter() - started))
                self._active.discard(lane)
                queue = self._lanes.get(lane)
                if queue:
                    self._ready.append(lane)
                elif queue is not None:
                    del self._lanes[lane]
                cond.notify_all()

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless stopping; True when stopping (leave it to redelivery)."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


def _always() -> bool:
    return True


_counter = itertools.count()

_LANES: dict[str, Callable[[Message], Hashable]] = {
    "partition": lambda m: (m.topic, m.partition),
    "key": lambda m: (m.topic, m.partition, m.key),
    "none": lambda m: next(_counter),
}
