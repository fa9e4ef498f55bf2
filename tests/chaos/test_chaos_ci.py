"""The fault suite at a size that fits CI (``make chaos`` runs it at full size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_chaos_at_ci_size_loses_nothing() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.chaos.run",
            "--messages",
            "10000",
            "--kills",
            "5",
            "--outage",
            "5",
            "8",
            "--seed",
            "7",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    table = "\n".join(line for line in result.stdout.splitlines() if line.startswith(("|", "FAIL")))
    print(table)
    assert result.returncode == 0, f"{table}\n{result.stderr[-3000:]}"
    assert "| lost | 0 |" in table
