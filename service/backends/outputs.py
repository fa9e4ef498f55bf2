"""Outputs: the records a handler publishes while it handles a message, tied to that message.

While the dispatcher runs a message's consumers, :func:`set_outputs` makes an :class:`Outputs`
current (a context variable, so it follows the handler's thread and its ``async`` tasks).
A backend's ``publish`` registers every record published meanwhile with it and reports each
record's own delivery to it. The loop settles the message only when every output is
confirmed: its offset is never committed before its outputs are durable, its dedup entries
are written after them, and a refused output fails the message like a failing consumer
(retried, then dead-lettered naming the output topic and the broker's error).

On an exactly-once subscription the outputs are *staged* instead (``Outputs(staging=True)``):
a backend's ``publish`` (and the dedup store's ``store``) appends a :class:`StagedRecord` to
:attr:`Outputs.staged` and sends nothing; the subscription writes the staged records of a
message in the transaction that commits its offset, or never.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass

from service.messages import Headers

__all__ = [
    "Outputs",
    "OutputsSlot",
    "StagedRecord",
    "current_outputs",
    "outputs_slot",
    "reset_outputs",
    "set_outputs",
]


class OutputsSlot:
    """Where the outputs of the message being handled are found, one per thread.

    The context variable holds the slot, set once per thread, and the dispatcher swaps
    :attr:`outputs` per message (cheaper than setting the variable each time). A handler's
    ``async`` task runs in a copy of the thread's context: the same slot, read while the
    dispatcher waits for the task.
    """

    __slots__ = ("outputs", "spare")

    def __init__(self, outputs: Outputs | None = None) -> None:
        self.outputs = outputs
        """The outputs of the message being handled now, if any."""
        self.spare: Outputs | None = None
        """An unused :class:`Outputs` kept for the next message (nothing refers to it)."""


_CURRENT: ContextVar[OutputsSlot | None] = ContextVar("service_outputs", default=None)


@dataclass(frozen=True, slots=True)
class StagedRecord:
    """A record to write in the transaction that commits its message's offset.

    Attributes:
        topic: the topic.
        value: the payload (None: a tombstone).
        key: the key.
        headers: the headers.
        partition: the partition, or None for the producer's partitioner.
    """

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers = ()
    partition: int | None = None


class Outputs:
    """The records published for one message, and what the broker said of each.

    Args:
        staging: stage the records (exactly-once) instead of sending them.
    """

    __slots__ = (
        "_lock",
        "_servers",
        "consumer",
        "deferred",
        "failures",
        "pending",
        "sent",
        "staged",
    )

    def __init__(self, staging: bool = False) -> None:
        self.staged: list[StagedRecord] | None = [] if staging else None
        """The records staged for the transaction (exactly-once), else None."""
        self._lock = threading.Lock()
        self.sent = 0
        """Records registered so far."""
        self.pending = 0
        """Records not confirmed nor refused yet."""
        self.failures: list[str] = []
        """``consumer: topic: error`` of each refused record."""
        self.consumer = ""
        """The consumer running now (records are attributed to it)."""
        self.deferred: list[tuple[str, int]] = []
        """Dedup keys (and partitions) to store once every output is confirmed."""
        self._servers: list[Callable[[], None]] = []

    def register(
        self, topic: str, serve: Callable[[], None] | None = None
    ) -> Callable[[str | None], None]:
        """Count one record for ``topic``; returns the callback its delivery report calls.

        The callback takes None (confirmed) or the broker's error text (refused). ``serve``
        makes the client deliver pending reports without waiting (e.g. a producer's
        ``poll(0)``): the loop calls it while it waits for these outputs.
        """
        consumer = self.consumer
        with self._lock:
            self.sent += 1
            self.pending += 1
            if serve is not None and serve not in self._servers:
                self._servers.append(serve)

        def delivered(error: str | None) -> None:
            with self._lock:
                self.pending -= 1
                if error is not None:
                    self.failures.append(f"{consumer}: output to {topic!r} refused: {error}")

        return delivered

    def stage(self, record: StagedRecord) -> None:
        """Stage ``record`` for the transaction of this message (staging outputs only)."""
        staged = self.staged
        assert staged is not None  # noqa: S101 - callers check `staged` first
        staged.append(record)
        self.sent += 1

    @property
    def done(self) -> bool:
        """Whether every record registered so far was confirmed or refused."""
        return self.pending == 0

    def serve(self) -> None:
        """Ask the clients that sent these records to deliver their pending reports."""
        for serve in list(self._servers):
            serve()


def current_outputs() -> Outputs | None:
    """The outputs of the message being handled on this thread/task, if any."""
    slot = _CURRENT.get()
    return None if slot is None else slot.outputs


def outputs_slot() -> OutputsSlot:
    """This thread's slot (made and set on first use)."""
    slot = _CURRENT.get()
    if slot is None:
        slot = OutputsSlot()
        _CURRENT.set(slot)
    return slot


def set_outputs(outputs: Outputs) -> Token[OutputsSlot | None]:
    """Make ``outputs`` current in a slot of its own; undo with :func:`reset_outputs`."""
    return _CURRENT.set(OutputsSlot(outputs))


def reset_outputs(token: Token[OutputsSlot | None]) -> None:
    """Undo :func:`set_outputs`."""
    _CURRENT.reset(token)
