"""Naming the field of a record that does not fit its schema (fastavro's errors often do not)."""

from __future__ import annotations

import io
from typing import Any

import fastavro

__all__ = ["locate_misfit"]


def locate_misfit(record: Any, parsed: dict[str, Any]) -> str | None:
    """``"<path>: <what is wrong>"`` for the first value of ``record`` that ``parsed`` refuses.

    Runs only after a write failed, so it may be slow. ``None`` when every leaf fits on its
    own (the failure lies elsewhere).
    """
    return _locate(record, parsed, parsed.get("__named_schemas", {}), parsed["name"])


def _locate(value: Any, avro: Any, named: dict[str, Any], path: str) -> str | None:
    if isinstance(avro, str) and avro in named:
        avro = named[avro]
    if isinstance(avro, list):
        if any(_locate(value, branch, named, path) is None for branch in avro):
            return None
        return f"{path}: {value!r} fits none of the union's branches {_names(avro)}"
    kind = avro.get("type") if isinstance(avro, dict) else avro
    if kind == "record":
        if not isinstance(value, dict):
            return f"{path}: expected a {avro['name']} record, got {type(value).__name__}"
        for field in avro["fields"]:
            name = field["name"]
            if name not in value and "default" not in field:
                return f"{path}.{name}: missing"
            found = _locate(value.get(name), field["type"], named, f"{path}.{name}")
            if found is not None:
                return found
        return None
    if kind == "array" and isinstance(avro, dict):
        if not isinstance(value, list | tuple):
            return f"{path}: expected an array, got {type(value).__name__}"
        return next(
            (
                f
                for i, v in enumerate(value)
                if (f := _locate(v, avro["items"], named, f"{path}[{i}]"))
            ),
            None,
        )
    if kind == "map" and isinstance(avro, dict):
        if not isinstance(value, dict):
            return f"{path}: expected a map, got {type(value).__name__}"
        return next(
            (
                f
                for k, v in value.items()
                if (f := _locate(v, avro["values"], named, f"{path}[{k!r}]"))
            ),
            None,
        )
    try:
        fastavro.schemaless_writer(io.BytesIO(), avro, value)
    except Exception as exc:  # noqa: BLE001 - any refusal of the leaf is the answer
        return f"{path}: {value!r} does not fit {_describe(avro)}: {exc}"
    return None


def _describe(avro: Any) -> str:
    if isinstance(avro, dict):
        logical = avro.get("logicalType")
        return f"{avro['type']} ({logical})" if logical else str(avro.get("name", avro["type"]))
    return str(avro)


def _names(branches: list[Any]) -> list[str]:
    return [b if isinstance(b, str) else _describe(b) for b in branches]
