"""EventLoopThread: the event loop ``async def`` consumers run on, one per dispatcher.

An ``async def`` consumer's coroutine is submitted to this loop from the thread that runs
the consumer (the polling thread, or a lane's worker) and waited for there: the message
counts as handled only when the coroutine returns, and an exception it raises fails the
consumer like any other. The coroutine runs in the caller's context (context variables
such as the message's outputs follow it). With ``concurrency`` N, up to N coroutines run at
once on the one loop (one per lane), so ordering lanes keep their meaning. The loop starts on
first use and stops when the dispatcher's loop ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

__all__ = ["EventLoopThread"]

T = TypeVar("T")


class EventLoopThread:
    """An asyncio event loop in a daemon thread, started lazily; thread-safe."""

    def __init__(self, name: str = "consumers-asyncio") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the loop and return its result (or raise its exception).

        Called from a thread other than the loop's own.
        """
        loop = self._loop or self._start()
        coroutine = awaitable if asyncio.iscoroutine(awaitable) else _wrap(awaitable)
        context = contextvars.copy_context()  # the caller's context: its outputs, for one
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def guarded() -> tuple[bool, Any]:
            # asyncio lets SystemExit / KeyboardInterrupt escape its loop (killing the loop
            # thread, so the caller would wait for ever): hand them to the caller instead
            try:
                return True, await coroutine
            except (SystemExit, KeyboardInterrupt) as exc:
                return False, exc

        def finish(task: asyncio.Task[tuple[bool, Any]]) -> None:
            if task.cancelled():
                result.cancel()
            elif (error := task.exception()) is not None:
                result.set_exception(error)
            else:
                ok, value = task.result()
                if ok:
                    result.set_result(value)
                else:
                    result.set_exception(value)

        def start() -> None:
            loop.create_task(guarded(), context=context).add_done_callback(finish)

        loop.call_soon_threadsafe(start)
        return result.result()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def close(self) -> None:
        """Stop the loop after the coroutines in flight (the consume loop has ended)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()


def _wrap(awaitable: Awaitable[T]) -> Coroutine[Any, Any, T]:
    async def wait() -> T:
        return await awaitable

    return wait()
