"""The fault suite at a size that fits CI (``make chaos`` runs it at full size).

Every fault of the full suite happens here too, once at least: kills, graceful restarts, a
broker outage, a transient-failure window, a scale-out/scale-in while retries are pending, a
member frozen past ``max.poll.interval.ms``, and both DLQ refusal windows; every processed
message must have its follow-up event. About 2.5-3 minutes on a 2-core machine.

The exactly-once run (``--exactly-once``) has the same size and faults; a ``read_committed``
reader must see exactly one follow-up per input and exactly one dead letter per poison
message. About 1.5-2 minutes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def figure(table: str, name: str) -> str:
    found = re.search(rf"^\| {re.escape(name)} \| (.*) \|$", table, re.MULTILINE)
    assert found, f"no {name!r} in the table:\n{table}"
    return found.group(1)


def chaos(*args: str) -> str:
    """Run the suite with ``args``; its table (it must pass)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.chaos.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    table = "\n".join(
        line for line in result.stdout.splitlines() if line.startswith(("|", "FAIL", "logs"))
    )
    print(table)
    assert result.returncode == 0, f"{table}\n{result.stderr[-3000:]}"
    return table


def test_chaos_at_ci_size_loses_nothing() -> None:
    table = chaos(
        *("--messages", "10000", "--kills", "4", "--scales", "1"),
        *("--outage", "5", "8", "--seed", "7"),
    )
    assert figure(table, "lost") == "0"
    assert figure(table, "follow-ups missing") == "0"
    # the new faults happened, not just their events: members joined and left, a frozen
    # member saw its assignment lost, a dead letter went without payload, a member stopped
    assert re.fullmatch(
        r"1 \(([1-9]) / \1\)", figure(table, "scale-out/in events (members joined / left)")
    )
    assert figure(table, "members frozen past max.poll.interval (lost seen)") == "1 (1)"
    assert figure(table, "dead letters without payload") != "0"
    assert figure(table, "loud stops (DLQ refused, restarted)") != "0"


def test_chaos_exactly_once_at_ci_size_writes_each_output_once() -> None:
    table = chaos(
        "--exactly-once",
        *("--messages", "10000", "--kills", "4", "--scales", "1"),
        *("--outage", "5", "8", "--seed", "7"),
    )
    assert figure(table, "mode") == "exactly once"
    assert figure(table, "lost") == "0"
    assert figure(table, "duplicate outputs (read_committed)") == "0"
    assert figure(table, "outputs of poison messages") == "0"
    assert re.fullmatch(r"(\d+) of \1 \(\+0 repeats\)", figure(table, "dead letters (poison)"))
    assert int(figure(table, "kills (SIGKILL)")) >= 4
    # the faults hit open transactions: handlers ran again, aborted outputs were written
    assert figure(table, "handler runs repeated (outside Kafka)") != "0"
    assert figure(table, "members frozen past max.poll.interval (lost seen)") == "1 (1)"
    assert figure(table, "loud stops (DLQ refused, restarted)") != "0"
