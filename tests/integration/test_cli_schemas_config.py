"""``schemas register|check -c``: the registry and the schemas directory from the configuration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kafka_helpers import unique

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
_OVERRIDES = ("SCHEMA_REGISTRY_URL", "SCHEMA_REGISTRY_USERNAME", "SCHEMA_REGISTRY_PASSWORD")


def cli(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "schemas", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if k not in _OVERRIDES},
            "PYTHONPATH": str(ROOT),
            **env,
        },
    )


def write_config(path: Path, registry: dict[str, str]) -> Path:
    path.write_text(
        json.dumps(
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:9"},
                "schema_registry": registry,
                "queues": {"q": {"consumers": ["tests.payments:json_registry"]}},
            }
        ),
        encoding="utf-8",
    )
    return path


def test_register_and_check_take_the_registry_and_schemas_from_the_config(
    schema_registry_url: str, tmp_path: Path
) -> None:
    topic = unique("cli-config")
    schemas = tmp_path / "my-schemas"
    shutil.copytree(ROOT / "schemas", schemas)
    config = write_config(
        tmp_path / "c.yaml", {"url": schema_registry_url, "schemas": str(schemas)}
    )
    registered = cli("register", "-c", str(config), "--topic", topic)
    assert registered.returncode == 0, registered.stderr
    lines = registered.stdout.splitlines()
    assert len(lines) == len(list(schemas.glob("*.avsc")))
    assert all(line.endswith("\tregistered") for line in lines)
    assert f"{topic}-payments.DoPayment\tversion 1" in registered.stdout
    checked = cli("check", "--topic", topic, SERVICE_CONFIG=str(config))  # $SERVICE_CONFIG
    assert checked.returncode == 0, checked.stderr
    assert all(line.endswith("\tunchanged") for line in checked.stdout.splitlines())


def test_registry_option_overrides_the_configured_url(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"url": "http://127.0.0.1:9/configured"})
    result = cli("check", "-c", str(config), "--registry", "http://127.0.0.1:9/given")
    assert result.returncode == 1
    assert "schema registry http://127.0.0.1:9/given: " in result.stderr


def test_the_configuration_is_checked_and_a_registry_is_required(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: {bootstrap_servers: 'k:9'}\nqueues: {}\n", encoding="utf-8")
    invalid = cli("check", "-c", str(bad))
    assert invalid.returncode == 2
    assert "queues: at least one queue is required" in invalid.stderr
    none = tmp_path / "none.yaml"
    none.write_text(
        "kafka: {bootstrap_servers: 'k:9'}\n"
        "queues: {q: {consumers: ['tests.payments:json_registry']}}\n",
        encoding="utf-8",
    )
    missing = cli("check", "-c", str(none))
    assert missing.returncode == 2
    assert f"{none} has no schema_registry" in missing.stderr
    # ./service.yaml is the default configuration when it exists
    shutil.copy(none, tmp_path / "service.yaml")
    default = cli("check", cwd=tmp_path)
    assert default.returncode == 2
    assert "service.yaml has no schema_registry" in default.stderr
