"""The value types of the configuration: how each is read, what it refuses, its JSON Schema.

Each type is a pydantic ``Annotated`` type whose validator raises a
:class:`~pydantic_core.PydanticCustomError` with a message that reads after the path
(``queues.q.concurrency: expected an integer >= 1``); the loader adds ``got ...``.
Values may arrive as text when they come from ``${env:NAME}``, so numbers, durations and
flags accept their text forms too.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from service.redaction import Secret

__all__ = [
    "Count",
    "Duration",
    "FactoryRef",
    "Imported",
    "MessageClassRef",
    "OptionalCount",
    "Port",
    "PositiveDuration",
    "Ratio",
    "SecretText",
    "Setting",
]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DURATION_SCHEMA = {"type": "string", "pattern": r"^\d+(\.\d+)?\s*(ms|s|m|h|d)?$"}


# -- integers ---------------------------------------------------------------------------
def _integer(value: Any, minimum: int, maximum: int | None, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        wanted = f"an integer >= {minimum}"
        if maximum is not None:
            wanted = f"an integer from {minimum} to {maximum}"
        if nullable:
            wanted += " or null"
        raise PydanticCustomError("integer", wanted)
    return value


Count = Annotated[
    int,
    PlainValidator(lambda v: _integer(v, 1, None, nullable=False)),
    WithJsonSchema({"type": "integer", "minimum": 1}),
]
"""An integer >= 1."""

OptionalCount = Annotated[
    int | None,
    PlainValidator(lambda v: _integer(v, 1, None, nullable=True)),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}),
]
"""An integer >= 1, or null (no limit)."""

Port = Annotated[
    int,
    PlainValidator(lambda v: _integer(v, 0, 65535, nullable=False)),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 65535}),
]
"""A TCP port; 0 picks a free one."""


# -- durations --------------------------------------------------------------------------
def _duration(value: Any, positive: bool) -> float:
    if isinstance(value, str) and (match := _DURATION.match(value.strip())):
        value = float(match[1]) * _UNITS[match[2]]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < 0
        or (positive and value == 0)
    ):
        bound = "> 0" if positive else ">= 0"
        raise PydanticCustomError(
            "duration",
            f"expected a duration {bound}: seconds, or text like 500ms, 30s, 5m, 2h, 7d",
        )
    return float(value)


Duration = Annotated[
    float,
    PlainValidator(lambda v: _duration(v, positive=False)),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, _DURATION_SCHEMA]}),
]
"""Seconds >= 0, as a number or as text with a unit (``500ms``, ``30s``, ``7d``)."""

PositiveDuration = Annotated[
    float,
    PlainValidator(lambda v: _duration(v, positive=True)),
    WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, _DURATION_SCHEMA]}),
]
"""Seconds > 0, as a number or as text with a unit."""


# -- ratios -----------------------------------------------------------------------------
def _ratio(value: Any) -> float:
    if isinstance(value, str) and re.fullmatch(r"\s*\d*\.?\d+\s*", value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise PydanticCustomError("ratio", "expected a share > 0 and <= 1 (0.5 is half)")
    return float(value)


Ratio = Annotated[
    float,
    PlainValidator(_ratio),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
]
"""A share: a number > 0 and <= 1."""


# -- secrets and pass-through settings --------------------------------------------------
def _secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    raise PydanticCustomError("secret", "expected text")


SecretText = Annotated[
    Secret,
    PlainValidator(_secret),
    WithJsonSchema({"type": "string", "writeOnly": True}),
]
"""Text held as a :class:`~service.redaction.Secret`."""


def _setting(value: Any) -> str | int | float | bool | Secret:
    if isinstance(value, str | int | float | bool | Secret):
        return value
    raise PydanticCustomError("setting", "expected text, a number or true/false")


Setting = Annotated[
    str | int | float | bool | Secret,
    PlainValidator(_setting),
    WithJsonSchema({"type": ["string", "integer", "number", "boolean"]}),
]
"""A librdkafka (or TLS) setting: passed through as it is, checked by the client library."""


# -- imported objects -------------------------------------------------------------------
@dataclass(frozen=True)
class Imported:
    """An object named ``module:attr`` in the configuration, and the object itself."""

    path: str
    target: Any = field(compare=False)


def _import(value: Any) -> Imported:
    if not isinstance(value, str) or not _IMPORT_PATH.match(value):
        raise PydanticCustomError("import_path", "expected 'module:attr'")
    module_name, attr = value.split(":")
    try:
        module = importlib.import_module(module_name)
        return Imported(value, getattr(module, attr))
    except (ImportError, AttributeError) as exc:
        raise PydanticCustomError(
            "import", "cannot import {path}: {error}", {"path": repr(value), "error": str(exc)}
        ) from exc
    except Exception as exc:  # user code ran on import: report where it is named, whatever it is
        raise PydanticCustomError(
            "import",
            "importing {path} failed: {error}",
            {"path": repr(value), "error": f"{type(exc).__name__}: {exc}"},
        ) from exc


def _factory(value: Any) -> Imported:
    imported = _import(value)
    if not callable(imported.target):
        raise PydanticCustomError(
            "factory", "{path} is not a class or factory", {"path": repr(imported.path)}
        )
    return imported


def _message_class(value: Any) -> Imported:
    imported = _import(value)
    if not isinstance(imported.target, type):
        raise PydanticCustomError("message_class", "{path} is not a class", {"path": repr(value)})
    return imported


_REF_SCHEMA = {"type": "string", "pattern": _IMPORT_PATH.pattern}

FactoryRef = Annotated[Imported, PlainValidator(_factory), WithJsonSchema(_REF_SCHEMA)]
"""``module:attr`` naming a callable that makes a consumer."""

MessageClassRef = Annotated[Imported, PlainValidator(_message_class), WithJsonSchema(_REF_SCHEMA)]
"""``module:Class`` naming a message class."""
