"""The chaos suite's member processes: start, wait until ready, stop, freeze, watch.

Each member is one ``python -m service run`` process with its own log file, so a fault can
be traced to the member it hit. :class:`Fleet` holds the members of the group in slots and
watches them from a thread: a member that exits on its own (a loud stop, e.g. a dead-letter
topic that refuses even the payload-less copy) is recorded with the reason its log gives and
replaced, so the group keeps its size and the run goes on; the driver judges the exits later.

Each member also gets its *index* (``KAFKA_DISPATCH_MEMBER_INDEX``, as ``run --processes``
gives its children): the slot's number for the group's members, ``MEMBERS`` and up for the
extras. An exactly-once member's default transactional id ends with it, so live members
never share one, and a member started in a slot takes over its predecessor's id (its
``init_transactions`` aborts what the predecessor left open).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from service.wiring import MEMBER_INDEX_ENV

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "metrics and probes on port"  # logged after the signal handlers are installed
_ASSIGNED = re.compile(r"queue '[^']+' assigned (?!nothing)")
_LOST = re.compile(r"queue '[^']+' lost .* without commit")
_STOPPED = re.compile(r"queue '[^']+' stopped: (\w+)")
_REBALANCE = re.compile(r"^(\S+ \S+),\d+ .*queue '[^']+' (?:assigned|revoked|lost) ", re.MULTILINE)
_RESTORED = re.compile(r"dedup \S+: restored ")


class Member:
    """One member process; ``name`` is unique in the run and names its log."""

    def __init__(
        self, name: str, config_path: Path, logs: Path, env: dict[str, str], index: int
    ) -> None:
        self.name, self.index = name, index
        self.log = logs / f"{name}.log"
        self._out = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "-c", str(config_path)],
            cwd=ROOT,
            env={**env, MEMBER_INDEX_ENV: str(index)},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        self.stopping = False  # the driver is stopping it: its exit is expected

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float, after: int = 0) -> bool:
        """Wait until the log (from character ``after``) matches ``pattern``."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if regex.search(self.text(), after):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Signal handlers installed: a SIGTERM now is a graceful stop."""
        return self.wait_for(READY_LINE, timeout)

    def wait_assigned(self, timeout: float = 60.0) -> bool:
        """Owns partitions (was assigned some at least once)."""
        return self.wait_for(_ASSIGNED, timeout)

    def quiet(self, seconds: float) -> bool:
        """No rebalance for ``seconds`` and every assignment's dedup restore has finished."""
        text = self.text()
        events = _REBALANCE.findall(text)
        if not events:
            return False
        last = datetime.strptime(events[-1], "%Y-%m-%d %H:%M:%S")
        restoring = len(_ASSIGNED.findall(text)) > len(_RESTORED.findall(text))
        return not restoring and (datetime.now() - last).total_seconds() >= seconds

    def lost_count(self) -> int:
        return len(_LOST.findall(self.text()))

    def stop_reason(self) -> str:
        """The error class the member logged when its queue stopped, or ``""``."""
        found = _STOPPED.findall(self.text())
        return found[-1] if found else ""

    def signal(self, sig: int) -> int:
        """Send ``sig`` and wait for the exit (SIGTERM waits for readiness first)."""
        self.stopping = True
        if sig == signal.SIGTERM:
            self.wait_ready()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(90)
        finally:
            self._out.close()

    def tail(self, lines: int = 30) -> str:
        keep = [
            line
            for line in self.text().splitlines()
            if "ERROR" in line or "Error" in line or "stopped" in line or "lost" in line
        ]
        return f"[{self.name}]\n" + "\n".join(keep[-lines:])


@dataclass
class Exit:
    """A member that ended without being asked to."""

    member: str
    code: int | None
    reason: str
    tail: str


class Fleet:
    """The group's members in slots; replaces members that exit on their own."""

    def __init__(self, config_path: Path, logs: Path, env: dict[str, str]) -> None:
        self._config_path, self._logs, self._env = config_path, logs, env
        self._lock = threading.RLock()
        self._serial = 0
        self.slots: list[Member] = []
        self.extras: list[Member] = []
        self.every: list[Member] = []  # every member ever started
        self.exits: list[Exit] = []
        self._stop = threading.Event()
        self.restarts = threading.Event()  # cleared while the broker is away: starts would fail
        self.restarts.set()
        self._down: set[int] = set()  # slots whose member exited on its own, to restart
        self._watcher = threading.Thread(target=self._watch, name="fleet-watch", daemon=True)

    def new_member(self, index: int) -> Member:
        """Start a member with ``index`` (see the module docstring)."""
        with self._lock:
            self._serial += 1
            name = f"member-{self._serial:02d}"
            member = Member(name, self._config_path, self._logs, self._env, index)
            self.every.append(member)
            return member

    def start(self, count: int) -> None:
        self.slots = [self.new_member(index) for index in range(count)]
        self._watcher.start()

    def replace(self, slot: int, sig: int) -> tuple[Member, int]:
        """Stop the member in ``slot`` with ``sig``, start a new one there; the old, its code."""
        with self._lock:
            member = self.slots[slot]
            member.stopping = True
        code = member.signal(sig)
        with self._lock:
            self.slots[slot] = self.new_member(slot)
            self._down.discard(slot)
        return member, code

    def wait_quiet(self, timeout: float = 90.0, seconds: float = 3.0) -> bool:
        """Wait until no member is rebalancing or restoring (see :meth:`Member.quiet`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(member.quiet(seconds) for member in self.members()):
                return True
            time.sleep(0.5)
        return False

    def add_extra(self) -> Member:
        with self._lock:
            taken = {extra.index for extra in self.extras}
            index = next(i for i in range(len(self.slots), 1 << 16) if i not in taken)
            member = self.new_member(index)
            self.extras.append(member)
            return member

    def remove_extra(self, member: Member) -> int:
        member.stopping = True
        code = member.signal(signal.SIGTERM)
        with self._lock:
            self.extras.remove(member)
        return code

    def members(self) -> list[Member]:
        with self._lock:
            return [*self.slots, *self.extras]

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for index, member in enumerate(self.slots):
                    code = member.proc.poll()
                    if code is None or member.stopping:
                        continue
                    self.exits.append(Exit(member.name, code, member.stop_reason(), member.tail()))
                    member.stopping = True
                    self._down.add(index)
                if self.restarts.is_set():
                    for index in self._down:
                        self.slots[index] = self.new_member(index)
                    self._down.clear()

    def close(self) -> list[tuple[str, int]]:
        """Stop watching and stop every member gracefully; the exit codes (name, code)."""
        self._stop.set()
        self._watcher.join(5)
        return [(member.name, member.signal(signal.SIGTERM)) for member in self.members()]

    def kill_all(self) -> None:
        """Leave no process behind (after a failure of the driver)."""
        self._stop.set()
        for member in self.every:
            if member.proc.poll() is None:
                os.kill(member.proc.pid, signal.SIGCONT)  # a frozen member dies too
                member.proc.kill()
