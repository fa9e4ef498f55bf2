"""``run --processes N``: N group members as child processes under one supervisor.

One Python process uses about one core; a host with more cores runs more members. The
supervisor builds no consumer itself: it validates the configuration, starts N children
(``python -m service run`` with an internal report pipe), and serves the one ``/metrics``,
``/healthz`` and ``/readyz`` of the host on the configured port.

Contract:

* every child is a :class:`~service.runner.ServiceRunner` with every configured queue, so
  each is one more member of each queue's consumer group; Kafka splits the partitions
  among them (members beyond a topic's partition count sit idle);
* the first SIGTERM/SIGINT is forwarded to every child (each finishes the messages in hand,
  commits and leaves its group) and no child is restarted any more; :meth:`run` returns 0
  when every child exited 0, 1 otherwise, and 1 when they take longer than
  ``shutdown_timeout`` (+5 s; the stragglers are killed). A second signal is forwarded
  (each child then exits at once, as a single process does) and the supervisor exits 1.
  Children live in their own process groups so a terminal's Ctrl-C reaches them once, through
  the supervisor; a child whose supervisor vanished (SIGKILL) sees its stdin close and stops
  as on a first signal;
* a child that exits unasked (a crash, a kill, a queue loop that died) is restarted after a
  back-off of 1, 2, 4, 8 s (doubling, capped at 30 s); a child that had run for
  :data:`STABLE_SECONDS` starts again from 1 s. At the :data:`MAX_CRASHES`-th exit in a row
  without a stable run in between the supervisor gives up: it stops the other children as on
  SIGTERM and returns 1, so the orchestrator (systemd, Docker, Kubernetes) sees the failure
  and applies its own back-off. A crash loop thus costs at most a few seconds of CPU;
* ``/metrics``: counters, histograms and gauges come from prometheus-client's multiprocess
  mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh directory per run; counts of a dead child stay
  in the totals; gauges are summed over the live children); the values read at scrape time
  (lag, seconds since the last poll, halted) are read from each live child at scrape time
  and merged (:class:`~service.metrics.ChildrenCollector`). The supervisor adds
  ``kafka_dispatch_process_restarts_total{process}``;
* ``/healthz`` and ``/readyz``: each child's own verdict, its problems named
  ``process <i>: <component>``; a child that is down (waiting for its restart) is a problem
  of both, a child still starting is a problem of readiness only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from types import FrameType
from typing import IO

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import mark_process_dead

from service.config.model import ServiceConfig
from service.health import HealthServer
from service.metrics import ChildrenCollector, ChildrenFilesCollector
from service.runner import ServiceRunner
from service.wiring import MEMBER_INDEX_ENV

__all__ = ["MAX_CRASHES", "STABLE_SECONDS", "Supervisor", "run_child"]

logger = logging.getLogger(__name__)

STABLE_SECONDS = 60.0
"""A child that ran this long before exiting starts its back-off again from the first step."""
MAX_CRASHES = 5
"""Unasked exits in a row (none after a stable run) before the supervisor gives up."""
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
CHILD_TIMEOUT = 2.0
"""Seconds the supervisor waits for a child's probe or metrics answer."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    port: int | None = None
    started: float = 0.0
    crashes: int = 0
    restart_at: float | None = None
    reaped: bool = False

    @property
    def name(self) -> str:
        return f"process {self.index}"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Runs ``processes`` children of ``config_path`` and serves the host's endpoints.

    Args:
        config: the validated configuration (its ``service:`` section: port, shutdown timeout).
        config_path: the path the children load (the same file, the same environment).
        processes: how many children (>= 2; one process needs no supervisor).
    """

    def __init__(self, config: ServiceConfig, config_path: str, processes: int) -> None:
        self.config = config
        self.config_path = config_path
        self.children = [_Child(i) for i in range(1, processes + 1)]
        base = os.environ.get(MULTIPROC_ENV) or None
        self.metrics_dir = tempfile.mkdtemp(prefix="kafka-dispatch-metrics-", dir=base)
        self.registry = CollectorRegistry()
        ChildrenFilesCollector(self.registry, self.metrics_dir)
        self.registry.register(ChildrenCollector(self._child_metrics))
        self.restarts = Counter(
            "kafka_dispatch_process_restarts",
            "Children restarted by the supervisor after an unasked exit.",
            ["process"],
            registry=self.registry,
        )
        runtime = config.runtime
        try:
            self.http = HealthServer(
                runtime.metrics_host,
                runtime.metrics_port,
                self.registry,
                self.problems_of_health,
                self.problems_of_readiness,
            )
        except OSError:  # the port is taken: nothing ran, leave nothing behind
            self._cleanup()
            raise
        self._stopping = threading.Event()
        self._gave_up = False

    # -- probes -------------------------------------------------------------------------
    def problems_of_health(self) -> dict[str, str]:
        """Every child's health problems, and every child that is down."""
        return self._problems("/healthz", starting_is_a_problem=False)

    def problems_of_readiness(self) -> dict[str, str]:
        """Every child's readiness problems, every child down or still starting."""
        return self._problems("/readyz", starting_is_a_problem=True)

    def _problems(self, path: str, *, starting_is_a_problem: bool) -> dict[str, str]:
        problems: dict[str, str] = {}
        for child in self.children:
            port = child.port
            if not child.is_running():
                problems[child.name] = self._down(child)
            elif port is None:
                if starting_is_a_problem:
                    problems[child.name] = "starting"
            else:
                try:
                    answer = json.loads(_get(port, path))
                except (OSError, ValueError) as exc:
                    problems[child.name] = f"does not answer {path}: {exc}"
                    continue
                for component, problem in answer.get("problems", {}).items():
                    problems[f"{child.name}: {component}"] = str(problem)
        return problems

    def _down(self, child: _Child) -> str:
        if child.proc is None:
            return "not started"
        code = child.proc.returncode
        if child.restart_at is None or self._stopping.is_set():
            return f"exited with code {code}"
        wait = max(0.0, child.restart_at - time.monotonic())
        return f"exited with code {code} ({child.crashes} in a row); restarting in {wait:.0f}s"

    def _child_metrics(self) -> list[str]:
        texts = []
        for child in self.children:
            port = child.port
            if port is not None and child.is_running():
                with contextlib.suppress(OSError):
                    texts.append(_get(port, "/metrics"))
        return texts

    # -- children -----------------------------------------------------------------------
    def _spawn(self, child: _Child) -> None:
        read, write = os.pipe()
        env = {**os.environ, MULTIPROC_ENV: self.metrics_dir}
        command = [sys.executable, "-m", "service", "run", "-c", self.config_path]
        command += ["--child", f"{child.index}:{write}"]
        try:
            child.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                command, stdin=subprocess.PIPE, env=env, pass_fds=(write,), process_group=0
            )
        except OSError:
            os.close(read)
            raise
        finally:
            os.close(write)
        if self._stopping.is_set():  # a signal came while it was being started
            child.proc.send_signal(signal.SIGTERM)
        child.port, child.started, child.restart_at = None, time.monotonic(), None
        child.reaped = False
        reports = os.fdopen(read, "rb")
        threading.Thread(
            target=self._read_reports, args=(child, child.proc, reports), daemon=True
        ).start()
        logger.info("%s started (pid %d)", child.name, child.proc.pid)

    def _read_reports(
        self, child: _Child, proc: subprocess.Popen[bytes], reports: IO[bytes]
    ) -> None:
        with reports:
            for line in reports:
                if child.proc is proc and line.strip().isdigit():  # not an earlier child's
                    child.port = int(line)

    def _reap(self, child: _Child) -> None:
        """Note a child's exit and plan its restart (or give up)."""
        proc = child.proc
        if proc is None:
            return
        code = proc.returncode
        mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        child.port = None
        if self._stopping.is_set():
            logger.info("%s (pid %d) exited with code %d", child.name, proc.pid, code)
            return
        now = time.monotonic()
        child.crashes = 1 if now - child.started >= STABLE_SECONDS else child.crashes + 1
        if child.crashes >= MAX_CRASHES:
            logger.error(
                "%s exited with code %d, %d times in a row: giving up, stopping the others",
                child.name,
                code,
                child.crashes,
            )
            self._gave_up = True
            self.stop()
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (child.crashes - 1))
        child.restart_at = now + delay
        logger.warning(
            "%s (pid %d) exited with code %d (%d in a row): restarting in %.0fs",
            child.name,
            proc.pid,
            code,
            child.crashes,
            delay,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop restarting and send ``sig`` to every running child."""
        self._stopping.set()
        for child in self.children:
            if child.proc is not None and child.is_running():
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(sig)

    # -- running ------------------------------------------------------------------------
    def run(self) -> int:
        """Run until a signal or giving up; returns the exit code (see the module docstring)."""
        signals = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
        previous = {s: signal.getsignal(s) for s in signals}

        def on_signal(number: int, frame: FrameType | None) -> None:
            name = signals.get(signal.Signals(number), str(number))
            if self._stopping.is_set():
                logger.warning("%s again: children exit now; uncommitted work is redelivered", name)
                self.stop(signal.SIGTERM)
                self._cleanup()
                os._exit(1)
            logger.info("%s: stopping every child (finishing the messages in hand)", name)
            self.stop(signal.SIGTERM)

        for number in signals:
            signal.signal(number, on_signal)
        try:
            self.http.start()
            logger.info(
                "metrics and probes on port %d (%d processes)", self.http.port, len(self.children)
            )
            for child in self.children:
                self._spawn(child)
            return self._supervise()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.http.close()
            self._cleanup()

    def _supervise(self) -> int:
        deadline: float | None = None
        while True:
            now = time.monotonic()
            for child in self.children:
                if child.proc is not None and not child.reaped and child.proc.poll() is not None:
                    child.reaped = True
                    self._reap(child)
                if not self._stopping.is_set() and child.restart_at and now >= child.restart_at:
                    self.restarts.labels(str(child.index)).inc()
                    self._spawn(child)
            if self._stopping.is_set():
                if not any(child.is_running() for child in self.children):
                    break
                deadline = deadline or now + self.config.runtime.shutdown_timeout + 5.0
                if now > deadline:
                    logger.error("children still running after the shutdown timeout: killing")
                    self.stop(signal.SIGKILL)
                    return 1
            time.sleep(0.1)
        codes = [child.proc.returncode for child in self.children if child.proc is not None]
        return 1 if self._gave_up or any(codes) else 0

    def _cleanup(self) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


def _get(port: int, path: str) -> str:
    """GET a child's endpoint on the loopback; its body whatever the status."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=CHILD_TIMEOUT) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as exc:  # 503 carries the problems
        return str(exc.read().decode())


class _ChildRunner(ServiceRunner):
    """A :class:`ServiceRunner` that tells the supervisor its port once it serves."""

    def __init__(self, config: ServiceConfig, report: IO[bytes]) -> None:
        super().__init__(config)
        self._report = report

    def start(self) -> None:
        """Start as usual, then write the probe port to the supervisor's pipe."""
        super().start()
        self._report.write(f"{self.http.port}\n".encode())
        self._report.flush()


def run_child(config: ServiceConfig, spec: str) -> int:
    """Run one child of a supervisor: ``spec`` is ``<index>:<report fd>``.

    The child serves its endpoints on a free loopback port (the supervisor reads them),
    labels its logs with its index, and stops as on SIGTERM when its stdin closes (the
    supervisor is gone).
    """
    index, fd = (int(part) for part in spec.split(":", 1))
    _label_logs(index)
    os.environ[MEMBER_INDEX_ENV] = str(index)  # a stable transactional id per member
    runtime = config.runtime.model_copy(update={"metrics_host": "127.0.0.1", "metrics_port": 0})
    config = dataclasses.replace(config, runtime=runtime)
    with os.fdopen(fd, "wb") as report:
        runner = _ChildRunner(config, report)
        threading.Thread(target=_watch_supervisor, args=(runner,), daemon=True).start()
        return runner.run()


def _watch_supervisor(runner: ServiceRunner) -> None:
    # os.read, not sys.stdin: a daemon thread blocked in a buffered read aborts the
    # interpreter's shutdown (it holds the buffer's lock)
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass  # the supervisor never writes; EOF means it closed the pipe or died
    logger.warning("the supervisor is gone: stopping")
    runner.stop()


def _label_logs(index: int) -> None:
    """Put ``[process i]`` in every text line and ``process_index: i`` in every JSON line."""

    def label(record: logging.LogRecord) -> bool:
        record.process_index = index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(label)
        formatter = handler.formatter
        if formatter is not None and formatter._fmt and "%(name)s:" in formatter._fmt:
            handler.setFormatter(
                logging.Formatter(
                    formatter._fmt.replace("%(name)s:", f"[process {index}] %(name)s:")
                )
            )
