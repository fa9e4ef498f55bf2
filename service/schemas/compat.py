"""Avro schema compatibility: what stops a reader schema from reading a writer's data.

Avro's schema-resolution rules over schemas as parsed JSON (``json.load`` of an ``.avsc``).
``breaking_changes(new, old)`` checks BACKWARD compatibility, ``breaking_changes(old, new)``
FORWARD. Writer fields the reader lacks are skipped. A logical type is compared by its
underlying type, and its ``logicalType`` (a decimal's precision and scale too) must match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import ConfigurationError

__all__ = ["breaking_changes"]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
# Avro's promotions: the writer's type (key) is readable as any of the reader's types (value).
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
# Python types of a JSON default, per Avro type (bool is never a number in JSON).
_DEFAULT_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    **dict.fromkeys(("int", "long"), (int,)),
    **dict.fromkeys(("float", "double"), (int, float)),
    **dict.fromkeys(("bytes", "string", "fixed", "enum"), (str,)),
    **dict.fromkeys(("map", "record"), (dict,)),
    "array": (list,),
}


def breaking_changes(reader: Mapping[str, Any], writer: Mapping[str, Any]) -> list[str]:
    """Problems that stop ``reader`` from reading data written with ``writer``.

    Args:
        reader: the reading schema as parsed JSON, e.g. the new version for BACKWARD checks.
        writer: the writing schema as parsed JSON, e.g. the old version.

    Returns:
        One human-readable problem per incompatibility, each starting with the path of the
        field concerned (``payments.DoPayment.amount.currency``; ``[]`` marks array items and
        ``{}`` map values). An empty list means the schemas are compatible.

    Raises:
        ConfigurationError: a schema is malformed or refers to a type name it never defines.
    """
    checker = _Checker()
    reader_schema = _load(reader, checker.reader_names)
    writer_schema = _load(writer, checker.writer_names)
    root = reader_schema.get("name") if isinstance(reader_schema, dict) else None
    checker.compare(reader_schema, writer_schema, root if isinstance(root, str) else "<root>")
    return checker.problems


def _full_name(name: Any, namespace: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"invalid Avro name {name!r}: a name must be a non-empty string")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _get(schema: Mapping[str, Any], key: str) -> Any:
    try:
        return schema[key]
    except KeyError:
        raise ConfigurationError(f"Avro schema lacks {key!r}: {dict(schema)!r}") from None


def _load(schema: Any, names: dict[str, dict[str, Any]]) -> Any:
    """``schema`` with full names everywhere; its named types are recorded in ``names``."""
    references: set[str] = set()
    qualified = _qualify(schema, "", names, references)
    if undefined := sorted(references - names.keys()):
        raise ConfigurationError(f"Avro schema refers to undefined type(s) {undefined}")
    return qualified


def _qualify(schema: Any, namespace: str, names: dict[str, Any], references: set[str]) -> Any:
    """A copy of ``schema`` where every name and name reference is a full name."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return schema
        references.add(full := _full_name(schema, namespace))
        return full
    if isinstance(schema, list):
        return [_qualify(branch, namespace, names, references) for branch in schema]
    if not isinstance(schema, Mapping):
        raise ConfigurationError(f"not an Avro schema: {schema!r}")
    kind = _get(schema, "type")
    if not isinstance(kind, str) or (kind not in _PRIMITIVES | _NAMED | {"array", "map"}):
        return _qualify(kind, namespace, names, references)  # {"type": <a name, union or schema>}
    out = dict(schema)
    if kind in _NAMED:
        out["name"] = full = _full_name(_get(schema, "name"), schema.get("namespace", namespace))
        out.pop("namespace", None)
        inner = full.rpartition(".")[0]
        out["aliases"] = [_full_name(alias, inner) for alias in schema.get("aliases", [])]
        names[full] = out
        if kind in ("record", "error"):
            out["fields"] = [
                {**field, "type": _qualify(_get(field, "type"), inner, names, references)}
                for field in _get(schema, "fields")
            ]
    elif kind == "array":
        out["items"] = _qualify(_get(schema, "items"), namespace, names, references)
    elif kind == "map":
        out["values"] = _qualify(_get(schema, "values"), namespace, names, references)
    return out


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    kind = schema if isinstance(schema, str) else schema["type"]
    return "record" if kind == "error" else str(kind)


def _describe(schema: Any) -> str:
    """A short type expression for messages: ``string``, ``array<int>``, ``union[null, long]``."""
    kind = _kind(schema)
    if kind == "union":
        return f"union[{', '.join(_describe(branch) for branch in schema)}]"
    if isinstance(schema, str):
        return schema
    if kind in _NAMED:
        return str(schema["name"])
    if kind in ("array", "map"):
        return f"{kind}<{_describe(schema['items' if kind == 'array' else 'values'])}>"
    logical = schema.get("logicalType")
    return f"{kind} ({logical})" if logical else kind


class _Checker:
    """Walks a reader and a writer schema side by side, collecting problems."""

    def __init__(self) -> None:
        self.reader_names: dict[str, dict[str, Any]] = {}
        self.writer_names: dict[str, dict[str, Any]] = {}
        self.problems: list[str] = []
        self._active: set[tuple[str, str]] = set()  # record pairs being compared (recursion)

    def _deref(self, schema: Any, names: dict[str, dict[str, Any]]) -> Any:
        return names[schema] if isinstance(schema, str) and schema not in _PRIMITIVES else schema

    def _matches(self, reader: Any, writer: Any, *, exact: bool = False) -> bool:
        """Whether the writer's schema selects this reader schema (names, not contents)."""
        reader = self._deref(reader, self.reader_names)
        writer = self._deref(writer, self.writer_names)
        reader_kind, writer_kind = _kind(reader), _kind(writer)
        if reader_kind != writer_kind:
            return not exact and reader_kind in _PROMOTIONS.get(writer_kind, ())
        if reader_kind in _NAMED:
            return bool(writer["name"] == reader["name"] or writer["name"] in reader["aliases"])
        return reader_kind != "union"

    def _branch_for(self, union: list[Any], writer: Any) -> Any | None:
        """The reader union's branch that reads ``writer``: an exact match before a promotion."""
        for exact in (True, False):
            for branch in union:
                if self._matches(branch, writer, exact=exact):
                    return branch
        return None

    def compare(self, reader: Any, writer: Any, path: str) -> None:
        """Record every problem in reading ``writer`` data as ``reader``, at ``path``."""
        reader = self._deref(reader, self.reader_names)
        writer = self._deref(writer, self.writer_names)
        if isinstance(writer, list) or isinstance(reader, list):
            # Each branch the writer may have chosen must be read by the reader (or one branch).
            for branch in writer if isinstance(writer, list) else [writer]:
                target = self._branch_for(reader, branch) if isinstance(reader, list) else reader
                if target is not None and self._matches(target, branch):
                    self.compare(target, branch, path)
                else:
                    what = ("union branch " if isinstance(writer, list) else "") + _describe(branch)
                    self.problems.append(f"{path}: {what} not resolvable by {_describe(reader)}")
        elif not self._matches(reader, writer):
            kind = _kind(reader)
            if kind in _NAMED and kind == _kind(writer):
                change = f"{kind} name changed from {writer['name']} to {reader['name']}"
            else:
                change = f"type changed from {_describe(writer)} to {_describe(reader)}"
            self.problems.append(f"{path}: {change}")
        else:  # a bare primitive name is its {"type": name} form, so logical types compare
            self._compare_complex(
                reader if isinstance(reader, dict) else {"type": reader},
                writer if isinstance(writer, dict) else {"type": writer},
                path,
            )

    def _compare_complex(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> None:
        reader_logical, writer_logical = reader.get("logicalType"), writer.get("logicalType")
        if reader_logical != writer_logical:
            self.problems.append(
                f"{path}: logical type changed from {writer_logical or 'none'} "
                f"to {reader_logical or 'none'}"
            )
            return
        old, new = (f"{x.get('precision')}/{x.get('scale', 0)}" for x in (writer, reader))
        if reader_logical == "decimal" and old != new:
            self.problems.append(f"{path}: decimal precision/scale changed from {old} to {new}")
        kind = _kind(reader)
        if kind == "record":
            self._compare_records(reader, writer, path)
        elif kind == "enum":
            missing = [s for s in _get(writer, "symbols") if s not in _get(reader, "symbols")]
            if missing and "default" not in reader:
                self.problems.append(
                    f"{path}: enum symbol(s) {', '.join(missing)} removed from "
                    f"{reader['name']}, which has no default"
                )
        elif kind == "fixed" and _get(reader, "size") != _get(writer, "size"):
            self.problems.append(
                f"{path}: fixed size changed from {writer['size']} to {reader['size']}"
            )
        elif kind == "array":
            self.compare(reader["items"], writer["items"], f"{path}[]")
        elif kind == "map":
            self.compare(reader["values"], writer["values"], f"{path}{{}}")

    def _compare_records(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> None:
        pair = (reader["name"], writer["name"])
        if pair in self._active:  # a recursive type: this pair is already being compared
            return
        self._active.add(pair)
        written = {_get(field, "name"): field for field in writer["fields"]}
        for field in reader["fields"]:
            name = _get(field, "name")
            candidates = [name, *field.get("aliases", [])]
            source = next((written[n] for n in candidates if n in written), None)
            if source is not None:
                self.compare(field["type"], source["type"], f"{path}.{name}")
            elif "default" not in field:
                self.problems.append(f"{path}.{name}: added without a default")
            elif not self._default_fits(field["type"], field["default"]):
                kind = _describe(field["type"])
                kind = f"the first branch of {kind}" if isinstance(field["type"], list) else kind
                self.problems.append(
                    f"{path}.{name}: added with default {field['default']!r}, "
                    f"which does not match {kind}"
                )
        self._active.discard(pair)

    def _default_fits(self, schema: Any, value: Any) -> bool:
        """Whether a JSON default is, shallowly, of ``schema`` (a union's: of its first branch)."""
        schema = self._deref(schema, self.reader_names)
        kind = _kind(schema)
        if kind == "union":
            return bool(schema) and self._default_fits(schema[0], value)
        if kind == "enum" and value not in schema["symbols"]:
            return False
        return isinstance(value, _DEFAULT_TYPES[kind]) and isinstance(value, bool) == (
            kind == "boolean"
        )
