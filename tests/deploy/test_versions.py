"""deploy/versions.env is the one place that names the Kafka and Apicurio versions.

The local scripts (and the Maven POM through them) and tests/support read it; a version set in
the environment overrides it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import local_brokers

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"
VERSIONS = ROOT / "deploy" / "versions.env"
SCRIPT_ENV = ("KAFKA_VERSION", "APICURIO_VERSION", "KAFKA_LOCAL_CACHE", "APICURIO_LOCAL_CACHE")


def _named() -> dict[str, str]:
    pairs = re.findall(r"^([A-Z_]+)=(\S+)$", VERSIONS.read_text(encoding="utf-8"), re.MULTILINE)
    return dict(pairs)


def _script(name: str, command: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    result = subprocess.run(
        ["bash", str(LOCAL / name), command],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def test_versions_env_names_both() -> None:
    named = _named()
    assert set(named) >= {"KAFKA_VERSION", "APICURIO_VERSION"}
    for key in ("KAFKA_VERSION", "APICURIO_VERSION"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", named[key]), f"{key}={named[key]}"


@pytest.mark.parametrize(
    ("script", "command", "key", "cache"),
    [
        ("kafka-local.sh", "libdir", "KAFKA_VERSION", "kafka-{}/lib"),
        ("apicurio-local.sh", "appdir", "APICURIO_VERSION", "apicurio-{}/app"),
    ],
)
def test_local_scripts_read_versions_env(script: str, command: str, key: str, cache: str) -> None:
    assert _script(script, command).endswith(cache.format(_named()[key]))
    overridden = _script(script, command, **{key: "9.8.7"})
    assert overridden.endswith(cache.format("9.8.7")), "the environment overrides the file"


def test_test_harness_reads_versions_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_VERSION", raising=False)
    monkeypatch.delenv("APICURIO_VERSION", raising=False)
    named = _named()
    assert local_brokers.versions() == {
        "KAFKA_VERSION": named["KAFKA_VERSION"],
        "APICURIO_VERSION": named["APICURIO_VERSION"],
    }
    monkeypatch.setenv("KAFKA_VERSION", "9.8.7")
    assert local_brokers.versions()["KAFKA_VERSION"] == "9.8.7"


def test_nothing_else_hard_codes_the_versions() -> None:
    named = _named()
    files = [
        *LOCAL.glob("*.sh"),
        LOCAL / "pom.xml",
        ROOT / "tests" / "support" / "local_brokers.py",
    ]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for key in ("KAFKA_VERSION", "APICURIO_VERSION"):
            assert named[key] not in text, f"{path.name} hard-codes {key}={named[key]}"
    assert "<kafka.version>" not in (LOCAL / "pom.xml").read_text(encoding="utf-8")
