"""Executors: how the loop's messages run - inline, or on ordered lanes of worker threads.

An executor only runs the :class:`~service.dispatch.decider.Decider` on messages and hands
back :class:`Completion` s; the loop settles every completion on the polling thread, so
what is committed is decided in one place whatever the executor.

* :class:`InlineExecutor`: each message runs on the polling thread as it is submitted.
* :class:`LanesExecutor`: ``concurrency`` worker threads and one lane per key, partition
  or message (``ordering``). A lane runs one message at a time, in offset order. A lane
  whose message did not simply succeed (retry, dead letter) stays blocked until the loop
  has settled that message (:meth:`LanesExecutor.resolve`); a redelivered message takes the
  lane's queued messages back with it, to be delivered again behind it, so order holds. A
  message whose handlers published outputs blocks its lane until they are confirmed.
  When full (``max_in_flight`` in all, ``max_in_flight_per_partition`` for the message's
  partition, or ``max_in_flight_bytes`` of keys and values in all) :meth:`~LanesExecutor.submit`
  raises :class:`~service.errors.MessageRejected` and the loop pauses the partition until
  there is room again; full by bytes, it pauses every partition.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Literal

from service.backends.base import TopicPartition
from service.dispatch.outcomes import DispatchOutcome, Verdict
from service.errors import MessageRejected
from service.messages import Message

__all__ = ["Completion", "Executor", "InlineExecutor", "LanesExecutor", "Ordering"]

Ordering = Literal["partition", "key", "none"]
Decide = Callable[[Message], Verdict]

_SIMPLE = (DispatchOutcome.ACKNOWLEDGED, DispatchOutcome.SKIPPED)


@dataclass(slots=True)
class Completion:
    """A message that ran, its verdict, and the seconds it took."""

    message: Message
    verdict: Verdict
    seconds: float


class Executor:
    """The interface the loop drives; see the module docstring."""

    in_flight = 0
    """Messages submitted and not yet handed back as completions (or dropped)."""
    capacity = 1 << 30
    """The most messages it holds at once (the loop polls no more than the room left)."""
    bytes_full = False
    """Whether the keys and values it holds reached its byte bound (the loop takes no more)."""

    def submit(self, message: Message) -> Completion | None:
        """Run ``message``: its completion now (inline), or None (collect it later).

        Raises:
            MessageRejected: no room for it; submit it again later.
        """
        raise NotImplementedError

    def completed(self, wait: float = 0.0) -> list[Completion]:
        """The completions so far, waiting up to ``wait`` seconds for a first one."""
        del wait
        return []

    def resolve(self, message: Message, redelivered: bool) -> list[Message]:
        """The loop settled ``message``'s non-simple verdict; unblock its lane.

        Returns the lane's queued messages when ``message`` was redelivered: they were not
        started and must be delivered again behind it (the loop releases them).
        """
        del message, redelivered
        return []

    def drop(self, partitions: Iterable[TopicPartition]) -> list[Message]:
        """Remove and return the queued (not started) messages of ``partitions``."""
        del partitions
        return []

    def running(self, partitions: Iterable[TopicPartition]) -> int:
        """How many messages of ``partitions`` have started and not completed."""
        del partitions
        return 0

    def abandon(self, partitions: Iterable[TopicPartition]) -> None:
        """Discard the completions of started work of ``partitions`` (no longer ours)."""
        del partitions

    def started(self) -> list[Message]:
        """The messages workers started since the last call, in the order they started.

        Only when asked to report starts (``early_ack`` acknowledges them).
        """
        return []

    def failure(self) -> BaseException | None:
        """An unexpected error a worker met (a bug, a raising callback), if any."""
        return None

    def close(self) -> None:
        """Stop: queued messages are dropped (delivered again later), started ones finish."""


class InlineExecutor(Executor):
    """Runs each message on the polling thread, as it is submitted."""

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        """Decide one message now (the loop calls it directly on its fast path)."""

    def submit(self, message: Message) -> Completion:
        """Run ``message`` now."""
        started = time.perf_counter()
        verdict = self.decide(message)
        return Completion(message, verdict, time.perf_counter() - started)


class LanesExecutor(Executor):
    """Runs messages on ``concurrency`` threads, one at a time per lane, lanes in parallel."""

    def __init__(
        self,
        decide: Decide,
        *,
        concurrency: int,
        ordering: Ordering,
        max_in_flight: int,
        max_in_flight_per_partition: int,
        should_stop: Callable[[], bool] = lambda: False,
        report_starts: bool = False,
        max_in_flight_bytes: int = 1 << 62,
    ) -> None:
        self._decide = decide
        self._report_starts = report_starts
        self._started: list[Message] = []
        self._should_stop = should_stop
        self._lane_of = _LANES[ordering]
        self._max_total = self.capacity = max_in_flight
        self._max_partition = max_in_flight_per_partition
        self._max_bytes = max_in_flight_bytes
        self._bytes = 0  # keys and values held
        self._cond = threading.Condition()
        self._lanes: dict[Hashable, deque[Message]] = {}
        self._ready: deque[Hashable] = deque()
        self._busy: set[Hashable] = set()  # running, or blocked until resolved
        self._running: dict[int, Message] = {}  # id(message) -> message
        self._abandoned: set[int] = set()
        self._done: list[Completion] = []
        self._per_partition: dict[TopicPartition, int] = {}
        self._stopping = False
        self._failure: BaseException | None = None
        self.in_flight = 0
        self._workers = [
            threading.Thread(target=self._work, name=f"dispatch-{index}", daemon=True)
            for index in range(concurrency)
        ]
        for worker in self._workers:
            worker.start()

    # -- the polling thread ---------------------------------------------------------------
    def submit(self, message: Message) -> None:
        """Queue ``message`` on its lane.

        Raises:
            MessageRejected: ``max_in_flight`` in all, or for its partition, is reached, or
                the keys and values held reached ``max_in_flight_bytes`` (a record is taken
                while they are below it, however large: the bound is passed by at most one
                record, and a large record is never starved by a stream of small ones).
        """
        tp = (message.topic, message.partition)
        size = _size(message)
        with self._cond:
            count = self._per_partition.get(tp, 0)
            if (
                self.in_flight >= self._max_total
                or count >= self._max_partition
                or (self.in_flight and self._bytes >= self._max_bytes)
            ):
                raise MessageRejected(tp)
            lane = self._lane_of(message)
            queue = self._lanes.get(lane)
            if queue is None:
                queue = self._lanes[lane] = deque()
            queue.append(message)
            if len(queue) == 1 and lane not in self._busy:
                self._ready.append(lane)
            self.in_flight += 1
            self._per_partition[tp] = count + 1
            self._bytes += size
            self.bytes_full = self._bytes >= self._max_bytes
            self._cond.notify()
        return None

    def started(self) -> list[Message]:
        """The messages started since the last call (with ``report_starts``)."""
        if not self._started:
            return []
        with self._cond:
            started, self._started = self._started, []
        return started

    def completed(self, wait: float = 0.0) -> list[Completion]:
        """Take the completions (waiting up to ``wait`` seconds for one)."""
        with self._cond:
            if not self._done and wait > 0 and self.in_flight:
                self._cond.wait(wait)
            done, self._done = self._done, []
            for completion in done:
                self._count_out(completion.message)
        return done

    def resolve(self, message: Message, redelivered: bool) -> list[Message]:
        """Unblock ``message``'s lane; hand back its queue when it was redelivered."""
        lane = self._lane_of(message)
        with self._cond:
            queue = self._lanes.get(lane)
            taken: list[Message] = []
            if redelivered and queue:
                taken = list(queue)
                queue.clear()
                for queued in taken:
                    self._count_out(queued)
            self._busy.discard(lane)
            if queue:
                self._ready.append(lane)
                self._cond.notify()
            elif queue is not None:
                del self._lanes[lane]
        return taken

    def drop(self, partitions: Iterable[TopicPartition]) -> list[Message]:
        """Remove the queued messages of ``partitions``."""
        gone = set(partitions)
        dropped: list[Message] = []
        with self._cond:
            for lane, queue in list(self._lanes.items()):
                kept = deque(m for m in queue if (m.topic, m.partition) not in gone)
                if len(kept) == len(queue):
                    continue
                dropped.extend(m for m in queue if (m.topic, m.partition) in gone)
                if kept:
                    self._lanes[lane] = kept
                else:
                    del self._lanes[lane]
                    if lane in self._ready:
                        self._ready.remove(lane)
            for message in dropped:
                self._count_out(message)
            self._unblock_idle()
        return dropped

    def running(self, partitions: Iterable[TopicPartition]) -> int:
        """Started, not completed, not abandoned messages of ``partitions``."""
        wanted = set(partitions)
        with self._cond:
            return sum(
                1
                for key, m in self._running.items()
                if (m.topic, m.partition) in wanted and key not in self._abandoned
            )

    def abandon(self, partitions: Iterable[TopicPartition]) -> None:
        """Their completions will be discarded."""
        gone = set(partitions)
        with self._cond:
            for key, message in self._running.items():
                if (message.topic, message.partition) in gone:
                    self._abandoned.add(key)
            # not acknowledged (early_ack) by a member that no longer owns them: a later
            # owner's delivery of the same offsets must not be marked done by these
            self._started = [m for m in self._started if (m.topic, m.partition) not in gone]
            kept = []
            for completion in self._done:
                if (completion.message.topic, completion.message.partition) in gone:
                    self._count_out(completion.message)
                    self._unblock(self._lane_of(completion.message))  # no resolve() will come
                else:
                    kept.append(completion)
            self._done = kept
            self._unblock_idle()

    def failure(self) -> BaseException | None:
        """The first unexpected error of a worker."""
        return self._failure

    def close(self) -> None:
        """Drop queued work, let started work finish, and stop the workers."""
        with self._cond:
            self._stopping = True
            for queue in self._lanes.values():
                for message in queue:
                    self._count_out(message)
            self._lanes.clear()
            self._ready.clear()
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()

    def _count_out(self, message: Message) -> None:
        tp = (message.topic, message.partition)
        self.in_flight -= 1
        self._bytes -= _size(message)
        self.bytes_full = self._bytes >= self._max_bytes
        left = self._per_partition.get(tp, 0) - 1
        if left > 0:
            self._per_partition[tp] = left
        else:
            self._per_partition.pop(tp, None)

    def _unblock(self, lane: Hashable) -> None:
        self._busy.discard(lane)
        queue = self._lanes.get(lane)
        if queue:
            self._ready.append(lane)
            self._cond.notify()
        elif queue is not None:
            del self._lanes[lane]

    def _unblock_idle(self) -> None:
        """Unblock lanes with nothing queued nor running (their partition went away)."""
        running = {self._lane_of(m) for m in self._running.values()}
        self._busy = {lane for lane in self._busy if lane in self._lanes or lane in running}

    # -- the workers ----------------------------------------------------------------------
    def _work(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._stopping and (not self._ready or self._should_stop()):
                    cond.wait(0.05)  # the loop stops us; meanwhile start no new message
                if self._stopping:
                    return
                lane = self._ready.popleft()
                self._busy.add(lane)
                message = self._lanes[lane].popleft()
                key = id(message)
                self._running[key] = message
                if self._report_starts:
                    self._started.append(message)
            started = time.perf_counter()
            try:
                verdict = self._decide(message)
            except BaseException as exc:  # noqa: BLE001 - a bug or a raising callback: stop loudly
                with cond:
                    del self._running[key]  # left undone: delivered again after a restart
                    self._count_out(message)
                    self._failure = exc
                    self._stopping = True
                    cond.notify_all()
                return
            with cond:
                del self._running[key]
                if key in self._abandoned:
                    self._abandoned.discard(key)
                    self._count_out(message)
                    verdict = Verdict(DispatchOutcome.ACKNOWLEDGED)  # lane goes on
                else:
                    self._done.append(Completion(message, verdict, time.perf_counter() - started))
                queue = self._lanes.get(lane)
                if verdict.outcome in _SIMPLE and verdict.outputs is None:
                    self._busy.discard(lane)
                    if queue:
                        self._ready.append(lane)
                    elif queue is not None:
                        del self._lanes[lane]
                cond.notify_all()


def _size(message: Message) -> int:
    """The bytes of ``message`` that :attr:`LanesExecutor.bytes_full` counts: key and value."""
    key, value = message.key, message.value
    return (len(value) if value is not None else 0) + (
        len(key) if isinstance(key, bytes | bytearray) else 0
    )


_LANES: dict[str, Callable[[Message], Hashable]] = {
    "partition": lambda m: (m.topic, m.partition),
    "key": lambda m: (m.topic, m.partition, m.key),
    "none": lambda m: (m.topic, m.partition, m.offset),
}
