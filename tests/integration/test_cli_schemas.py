"""``kafka-dispatch schemas register|check`` against the real registry."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kafka_helpers import unique

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "schemas"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "SCHEMA_REGISTRY_URL"},
    )


def test_register_is_idempotent_and_prints_subject_version_id(
    schema_registry_url: str,
) -> None:
    topic = unique("cli")  # topic-record subjects keep this test's subjects its own
    first = cli("schemas", "register", "--registry", schema_registry_url, "--topic", topic)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 4
    assert all(line.endswith("\tregistered") and "\tversion 1\tid " in line for line in lines)
    assert f"{topic}-payments.DoPayment\tversion 1" in first.stdout
    again = cli("schemas", "register", "--registry", schema_registry_url, "--topic", topic)
    assert again.returncode == 0
    assert all(line.endswith("\tunchanged") for line in again.stdout.splitlines())


def test_check_names_the_breaking_field_and_register_refuses(
    schema_registry_url: str, tmp_path: Path
) -> None:
    topic = unique("cli")
    assert (
        cli("schemas", "register", "--registry", schema_registry_url, "--topic", topic).returncode
        == 0
    )
    changed = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", changed)
    shutil.copy(FIXTURES / "DoPayment.incompatible.avsc", changed / "DoPayment.avsc")
    for action in ("check", "register"):
        result = cli(
            "schemas",
            action,
            "--registry",
            schema_registry_url,
            "--topic",
            topic,
            "--schemas",
            str(changed),
        )
        assert result.returncode == 1
        assert "INCOMPATIBLE" in result.stderr
        assert "payments.DoPayment.merchant_reference: type changed from string to int" in (
            result.stderr
        )
        assert "payments.DoPayment.risk_score: added without a default" in result.stderr


def test_check_accepts_a_compatible_change(schema_registry_url: str, tmp_path: Path) -> None:
    topic = unique("cli")
    assert (
        cli("schemas", "register", "--registry", schema_registry_url, "--topic", topic).returncode
        == 0
    )
    changed = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", changed)
    shutil.copy(FIXTURES / "DoPayment.v2.avsc", changed / "DoPayment.avsc")
    check = cli(
        "schemas",
        "check",
        "--registry",
        schema_registry_url,
        "--topic",
        topic,
        "--schemas",
        str(changed),
    )
    assert check.returncode == 0, check.stderr
    assert "compatible with version 1" in check.stdout
    register = cli(
        "schemas",
        "register",
        "--registry",
        schema_registry_url,
        "--topic",
        topic,
        "--schemas",
        str(changed),
    )
    assert f"{topic}-payments.DoPayment\tversion 2" in register.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli("schemas", "check").returncode == 2  # no registry given
    missing = cli(
        "schemas", "check", "--registry", "http://127.0.0.1:9", "--schemas", str(tmp_path / "nope")
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    unreachable = cli("schemas", "check", "--registry", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
