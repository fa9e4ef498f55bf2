"""A guard against Avro "bombs": arrays whose items take no bytes on the wire.

An Avro array is a block count followed by that many items. An item of a type that encodes
to zero bytes (``null``, a ``fixed`` of size 0, a record whose fields are all such types)
never runs out of input, so a 9-byte payload claiming 2**40 such items keeps a decoder
(fastavro's ``schemaless_reader``, which holds the GIL) looping for hours. Every other item
takes at least one byte (a map entry's key, a union's branch index, an enum's index, an
array's block count...), so its count is bounded by the payload's size, and only the writer
schema decides what the decoder loops over.

:func:`zero_width_array` finds such an array in a parsed writer schema; the decoders refuse
the schema (:class:`~service.errors.DeserializationError`, a dead letter) before decoding.
Legitimate schemas have no use for an array of values that carry no information but their
count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["zero_width_array"]

_NAMED = "__named_schemas"


def zero_width_array(schema: Any, named: Mapping[str, Any] | None = None) -> str | None:
    """Where ``schema`` has an array whose items encode to zero bytes, else ``None``.

    Args:
        schema: a schema parsed by ``fastavro.parse_schema``.
        named: the named types it refers to by name; by default its ``__named_schemas``.

    Returns:
        A path to the array, such as ``DoPayment.pad[]`` (``items`` is named after it).
    """
    if named is None:
        named = schema.get(_NAMED, {}) if isinstance(schema, dict) else {}
    return _find(schema, named, _root_name(schema), set())


def _root_name(schema: Any) -> str:
    if isinstance(schema, dict) and isinstance(schema.get("name"), str):
        return str(schema["name"])
    return "<schema>"


def _find(schema: Any, named: Mapping[str, Any], where: str, visited: set[str]) -> str | None:
    """The first array of zero-byte items reachable from ``schema`` (each named type once)."""
    if isinstance(schema, str):
        if schema in named and schema not in visited:
            visited.add(schema)
            return _find(named[schema], named, where, visited)
        return None
    if isinstance(schema, list):  # a union: look into each branch
        for branch in schema:
            found = _find(branch, named, where, visited)
            if found is not None:
                return found
        return None
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind in ("record", "error"):
        name = schema.get("name")
        if isinstance(name, str):
            visited.add(name)
        for field in schema.get("fields", ()):
            found = _find(field["type"], named, f"{where}.{field['name']}", visited)
            if found is not None:
                return found
        return None
    if kind == "array":
        items = schema["items"]
        if _zero_width(items, named, set()):
            return f"{where}[] (items: {_describe(items)})"
        return _find(items, named, f"{where}[]", visited)
    if kind == "map":
        return _find(schema["values"], named, f"{where}{{}}", visited)
    if isinstance(kind, (str, list, dict)) and kind not in ("enum", "fixed"):
        return _find(kind, named, where, visited)  # {"type": <type>, "logicalType": ...}
    return None


def _zero_width(schema: Any, named: Mapping[str, Any], expanding: set[str]) -> bool:
    """Whether every value of ``schema`` encodes to zero bytes."""
    if isinstance(schema, str):
        if schema == "null":
            return True
        if schema in named and schema not in expanding:
            return _zero_width(named[schema], named, expanding | {schema})
        return False  # other primitives take bytes; a record holding itself is not finite
    if not isinstance(schema, dict):
        return False  # a union writes its branch index
    kind = schema.get("type")
    if kind in ("record", "error"):
        inner = expanding | {schema["name"]} if isinstance(schema.get("name"), str) else expanding
        return all(_zero_width(f["type"], named, inner) for f in schema.get("fields", ()))
    if kind == "fixed":
        return schema.get("size") == 0
    if isinstance(kind, str) and kind not in ("enum", "array", "map"):
        return _zero_width(kind, named, expanding)
    return False


def _describe(schema: Any) -> str:
    if isinstance(schema, dict):
        return str(schema.get("name") or schema.get("type"))
    return str(schema)
