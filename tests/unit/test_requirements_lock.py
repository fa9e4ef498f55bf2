"""deploy/requirements.lock, which the image builds from, satisfies pyproject's dependencies.

The image build checks the whole closure (``pip check`` in deploy/Dockerfile); this catches a
dependency added to pyproject.toml without ``deploy/images/lock.sh`` long before an image is
built.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "deploy" / "requirements.lock"


def _locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(encoding="utf-8"), re.M)
    return {canonicalize_name(name): version for name, version in pins}


def test_lock_pins_every_runtime_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    locked = _locked()
    wrong = []
    for text in project["dependencies"]:
        requirement = Requirement(text)
        version = locked.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement} (locked: {version or 'missing'})")
    assert not wrong, f"run deploy/images/lock.sh: {', '.join(wrong)}"


def test_lock_entries_are_pinned_with_hashes() -> None:
    text = LOCK.read_text(encoding="utf-8")
    entries = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.split("\n", 1)[1])
    pinned = [e for e in entries if re.match(r"[A-Za-z0-9_.-]+==", e)]
    assert len(pinned) == len(_locked()) > 0
    assert all("--hash=sha256:" in entry for entry in pinned)
