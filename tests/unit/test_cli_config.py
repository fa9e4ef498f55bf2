"""``kafka-dispatch --version``, ``config schema`` and ``config check``."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest

from service.cli import main
from service.config import config_schema

ROOT = Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_package_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout == f"kafka-dispatch {version('kafka-dispatch-service')}\n"


def test_config_schema_prints_a_valid_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == config_schema()
    jsonschema.Draft202012Validator.check_schema(printed)
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert printed["additionalProperties"] is False
    assert set(printed["properties"]) == {
        "kafka",
        "schema_registry",
        "messages",
        "service",
        "queues",
    }
    assert printed["required"] == ["kafka", "queues"]
    kafka = printed["$defs"]["KafkaConfig"]["properties"]
    assert kafka["startup_timeout"]["default"] == 10.0
    assert "description" in kafka["startup_timeout"]  # editors show it on hover


def test_config_check_prints_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "kafka: {bootstrap_servers: 'k:9'}\n"
        "queues: {q: {consumers: ['tests.payments:json_registry']}}\n",
        encoding="utf-8",
    )
    assert main(["config", "check", "-c", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: valid (1 queues: q)\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kafka: {bootstrap_servers: 'k:9', consumer: {session.timeout.mss: 1}}\n"
        "queues: {q: {consumers: ['tests.payments:json_registry'], concurrency: 0}}\n",
        encoding="utf-8",
    )
    assert main(["config", "check", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: 2 problems:\n")
    assert (
        "  kafka.consumer.session.timeout.mss: librdkafka refuses it: No such configuration" in err
    )
    assert "  queues.q.concurrency: an integer >= 1, got 0" in err


def test_run_refuses_a_misspelt_librdkafka_setting_before_connecting(tmp_path: Path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(
        "kafka:\n"
        "  bootstrap_servers: 127.0.0.1:9\n"  # nothing listens: the check must come first
        "  consumer: {session.timeout.mss: 10000}\n"
        "queues: {q: {consumers: ['tests.payments:json_registry']}}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "service", "run", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {config}: kafka.consumer.session.timeout.mss: librdkafka refuses it: "
        'No such configuration property: "session.timeout.mss"\n'
    )
    assert result.stdout == ""
