"""``${env:NAME}`` and ``${file:/path}`` references, and where a problem is in the document.

:func:`resolve_references` runs before the model: it copies the parsed YAML document with
every reference replaced by its value and every value at a secret key (``*password*``,
``*secret*``, ``ssl.key.pem``...) wrapped in a :class:`~service.redaction.Secret`. A reference
that cannot be resolved is a :class:`Problem` at its path and stays in place as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.redaction import Secret, is_secret_key

__all__ = ["Location", "Problem", "format_location", "resolve_references"]

Location = tuple[str | int, ...]
"""Where a value is: mapping keys and list indexes from the top of the document."""

_REFERENCE = re.compile(r"^\$\{(env|file):([^}]+)\}$")
_NO_SECRETS = frozenset({"messages", "queues"})
"""Top-level sections whose keys name classes and queues, never secrets."""


def format_location(where: Location) -> str:
    """``queues.payments.consumers[1]``; ``top level`` for the empty location."""
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "top level"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, and where."""

    where: Location
    text: str

    def __str__(self) -> str:
        return f"{format_location(self.where)}: {self.text}"


def resolve_references(
    document: Mapping[Any, Any],
    env: Mapping[str, str],
    referenced: dict[Location, str] | None = None,
) -> tuple[dict[Any, Any], list[Problem]]:
    """A copy of ``document`` with references resolved and secrets wrapped, and the problems.

    Args:
        document: the parsed YAML document (a mapping).
        env: the environment ``${env:NAME}`` reads.
        referenced: when given, receives the location and value of every resolved
            reference: such a value may be a secret put in the wrong place, so problems
            must never quote it.
    """
    problems: list[Problem] = []
    found: dict[Location, str] = {} if referenced is None else referenced
    resolved = {
        key: _walk(value, (key,), env, problems, found, secrets=key not in _NO_SECRETS)
        for key, value in document.items()
    }
    return resolved, problems


def _walk(
    value: Any,
    where: Location,
    env: Mapping[str, str],
    problems: list[Problem],
    referenced: dict[Location, str],
    secrets: bool,
) -> Any:
    if isinstance(value, dict):
        return {
            k: _walk(v, (*where, k), env, problems, referenced, secrets) for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _walk(v, (*where, i), env, problems, referenced, secrets) for i, v in enumerate(value)
        ]
    if isinstance(value, str) and (match := _REFERENCE.match(value.strip())):
        kind, name = match[1], match[2].strip()
        if kind == "env" and name not in env:
            problems.append(Problem(where, f"environment variable {name} is not set"))
            return value
        if kind == "env":
            value = env[name]
        else:
            try:
                value = Path(name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(Problem(where, f"cannot read {name}: {exc.strerror}"))
                return value
        referenced[where] = value
    key = where[-1]
    if secrets and isinstance(key, str) and is_secret_key(key) and value is not None:
        return value if isinstance(value, Secret) else Secret(str(value))
    return value
