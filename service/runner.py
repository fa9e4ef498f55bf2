"""ServiceRunner: every configured queue in one process, until a signal says stop.

Contract:

* each queue runs its own :class:`MessageDispatcher` loop in a thread, as its own member of
  the queue's consumer group;
* the first SIGTERM/SIGINT stops fetching: every loop finishes the message in hand, commits
  what is done, and leaves its group; then the producer is flushed and :meth:`run` returns
  0. If that takes longer than ``shutdown_timeout`` the process exits with 1. A second
  signal exits at once with 1: nothing done is lost, uncommitted work is delivered again;
* a loop that dies (broker refusing credentials, dedup store failing...) stops the others
  and :meth:`run` returns 1 after logging why;
* SIGUSR1 prints every thread's stack to stderr (where a loop is, when it seems stuck), as
  the shutdown overrun does before it exits.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from prometheus_client import CollectorRegistry

from service.config.model import QueueConfig, ServiceConfig
from service.dispatcher import MessageDispatcher
from service.errors import ServiceError
from service.health import HealthServer
from service.metrics import ServiceMetrics
from service.wiring import (
    build_backend,
    build_consumers,
    build_dispatcher,
    build_schema_registry,
    build_serializers,
)

__all__ = ["ServiceRunner"]

logger = logging.getLogger(__name__)

STALE_POLL_SECONDS = 60.0
"""A loop that has not polled for this long is unhealthy."""


@dataclass
class _Loop:
    queue: QueueConfig
    dispatcher: MessageDispatcher
    thread: threading.Thread | None = None
    error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)


class ServiceRunner:
    """Builds every queue's dispatcher from ``config`` and runs them.

    Args:
        config: the validated configuration.
        registry: the Prometheus registry (a fresh one when ``None``).
    """

    def __init__(self, config: ServiceConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        # user code and configuration first: their errors need no broker
        consumers = {name: build_consumers(queue) for name, queue in config.queues.items()}
        self.backend = build_backend(config)
        self.backend.probe()  # one clear line within startup_timeout if Kafka cannot be had
        self.schema_registry = build_schema_registry(config)
        serializers = build_serializers(config, self.schema_registry)
        self.metrics = ServiceMetrics(registry or CollectorRegistry())
        self.loops: list[_Loop] = []
        for name, queue in config.queues.items():
            dispatcher = build_dispatcher(
                config, queue, self.backend, serializers, self.schema_registry, consumers[name]
            )
            queue_metrics = self.metrics.queue(queue.name)
            dispatcher.observer = queue_metrics
            dispatcher.listeners.append(queue_metrics)
            dispatcher.gates.append(queue_metrics)
            queue_metrics.lag = _lag_of(dispatcher)
            queue_metrics.halted = _halted_of(dispatcher)
            self.loops.append(_Loop(queue, dispatcher))
        runtime = config.runtime
        self.http = HealthServer(
            runtime.metrics_host,
            runtime.metrics_port,
            self.metrics.registry,
            self.problems_of_health,
            self.problems_of_readiness,
        )
        self._stopping = threading.Event()
        self._registry_checked = (0.0, "")

    # -- probes -------------------------------------------------------------------------
    def problems_of_health(self) -> dict[str, str]:
        """What makes the process unhealthy: a dead loop, or one that stopped polling."""
        problems: dict[str, str] = {}
        now = time.monotonic()
        for loop in self.loops:
            name = f"queue {loop.queue.name}"
            if loop.error is not None:
                problems[name] = f"stopped: {type(loop.error).__name__}: {loop.error}"
            elif loop.thread is not None and not loop.thread.is_alive():
                problems[name] = "loop ended"
            else:
                last = loop.dispatcher.last_poll or loop.started
                if now - last > STALE_POLL_SECONDS:
                    problems[name] = f"no poll for {now - last:.0f}s"
        return problems

    def problems_of_readiness(self) -> dict[str, str]:
        """What keeps the service from taking traffic."""
        problems = self.problems_of_health()
        for loop in self.loops:
            name = f"queue {loop.queue.name}"
            subscription = loop.dispatcher.subscription
            if subscription is None:
                problems.setdefault(name, "not subscribed")
                continue
            if loop.dispatcher.halted is not None:
                problems.setdefault(name, loop.dispatcher.halted)
            elif not getattr(subscription, "assigned_once", True):
                problems.setdefault(name, "waiting for a partition assignment")
            elif not getattr(subscription, "broker_reachable", True):
                problems.setdefault(name, "broker unreachable")
            elif not loop.dispatcher.cache.is_ready:
                problems.setdefault(name, "restoring the dedup store")
        registry_problem = self._registry_problem()
        if registry_problem:
            problems["schema registry"] = registry_problem
        return problems

    def _registry_problem(self) -> str:
        if self.schema_registry is None:
            return ""
        checked, problem = self._registry_checked
        if time.monotonic() - checked < 5.0:
            return problem
        try:
            self.schema_registry.ping()
            problem = ""
        except ServiceError as exc:
            problem = str(exc)
        self._registry_checked = (time.monotonic(), problem)
        return problem

    # -- running ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the HTTP endpoints and every queue loop."""
        self.http.start()
        logger.info("metrics and probes on port %d", self.http.port)
        for loop in self.loops:
            loop.thread = threading.Thread(
                target=self._run_loop, args=(loop,), name=f"queue-{loop.queue.name}"
            )
            loop.thread.start()

    def _run_loop(self, loop: _Loop) -> None:
        try:
            loop.dispatcher.consume_loop(loop.queue.name)
        except BaseException as exc:
            loop.error = exc
            logger.error(
                "queue %r stopped: %s: %s", loop.queue.name, type(exc).__name__, exc, exc_info=exc
            )
            self.stop()

    def stop(self) -> None:
        """Ask every loop to finish the message in hand and return. Thread- and signal-safe."""
        self._stopping.set()
        for loop in self.loops:
            loop.dispatcher.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every loop to end; False when ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for loop in self.loops:
            # short joins: the main thread must run often for a second signal to act at once
            while loop.thread is not None and loop.thread.is_alive():
                left = 0.1 if deadline is None else min(deadline - time.monotonic(), 0.1)
                if left <= 0:
                    return False
                loop.thread.join(left)
        return True

    def close(self) -> None:
        """Flush the producer and stop the HTTP endpoints."""
        try:
            self.backend.close()
        finally:
            self.http.close()
            if self.schema_registry is not None:
                self.schema_registry.close()

    def run(self) -> int:
        """Run until a signal or a failure; returns the exit code (see the module docstring)."""
        signals = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
        previous = {s: signal.getsignal(s) for s in signals}

        def on_signal(number: int, frame: FrameType | None) -> None:
            if self._stopping.is_set():
                logger.warning(
                    "%s again: exiting now; uncommitted work is redelivered",
                    signals.get(signal.Signals(number), number),
                )
                os._exit(1)
            self._stopping.set()  # first: a signal arriving during this handler exits at once
            logger.info(
                "%s: stopping (finishing the messages in hand)",
                signals.get(signal.Signals(number), number),
            )
            self.stop()

        for number in signals:
            signal.signal(number, on_signal)
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        # what start-up made (modules, configuration, clients) lives as long as the process:
        # frozen, the collector's full passes no longer walk it (docs/performance.md)
        gc.collect()
        gc.freeze()
        try:
            self.start()
            while not self._stopping.wait(0.5):
                pass
            if not self.wait(self.config.runtime.shutdown_timeout):
                logger.error(
                    "shutdown took over %.0fs: exiting; uncommitted work is redelivered "
                    "(where each thread was, below)",
                    self.config.runtime.shutdown_timeout,
                )
                faulthandler.dump_traceback(sys.stderr, all_threads=True)
                os._exit(1)
            self.close()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            faulthandler.unregister(signal.SIGUSR1)
            gc.unfreeze()  # a runner used again in this process (tests, embedding) frees it
        failed = [loop for loop in self.loops if loop.error is not None]
        return 1 if failed else 0


def _halted_of(dispatcher: MessageDispatcher) -> Callable[[], str | None]:
    def halted() -> str | None:
        return dispatcher.halted

    return halted


def _lag_of(dispatcher: MessageDispatcher) -> Callable[[], dict[tuple[str, int], int]]:
    def lag() -> dict[tuple[str, int], int]:
        subscription = dispatcher.subscription
        measure = getattr(subscription, "lag", None)
        return measure() if callable(measure) else {}

    return lag
