"""Avro schema compatibility, decided by Apache Avro's checker and explained field by field.

``breaking_changes(new, old)`` checks BACKWARD compatibility, ``breaking_changes(old, new)``
FORWARD. Whether a reader can read a writer's data is decided by
:class:`avro.compatibility.ReaderWriterCompatibilityChecker` (Apache Avro's implementation
of the specification's schema resolution: promotions, unions, aliases, enum defaults, the
same rules the Java checker in the schema registries applies). This module only walks the
two schemas side by side to say *where* each problem is, as a field path, and adds two
checks the Avro checker leaves out:

* a **logical type** must stay the same (and a decimal's precision and scale): Avro resolves
  logical types by their underlying type, so a ``timestamp-millis`` read as
  ``timestamp-micros`` would pass, and be wrong by a factor of 1000;
* an added field's **default must match its type** (a union's: its first branch): the Java
  parser refuses such a schema at registration, the Python one does not.

Two deliberate differences from a hand-written reading of the specification, both the Avro
checker's (and the Java one's): a named type is matched by its unqualified name, so moving a
record to another namespace is compatible; and aliases name the *writer's* full name, an
unqualified alias being taken in the namespace of the type that declares it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import avro.errors
import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    lookup_writer_field,
    schema_name_equals,
)
from avro.name import Names
from avro.schema import (
    ArraySchema,
    EnumSchema,
    FixedSchema,
    MapSchema,
    NamedSchema,
    RecordSchema,
    Schema,
    UnionSchema,
)

from service.errors import ConfigurationError

__all__ = ["breaking_changes"]

# Python types of a JSON default, per Avro type (bool is never a number in JSON).
_DEFAULT_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    **dict.fromkeys(("int", "long"), (int,)),
    **dict.fromkeys(("float", "double"), (int, float)),
    **dict.fromkeys(("bytes", "string", "fixed", "enum"), (str,)),
    **dict.fromkeys(("map", "record", "error"), (dict,)),
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
    reader_schema, writer_schema = _parse(reader), _parse(writer)
    explainer = _Explainer()
    root = reader_schema.fullname if isinstance(reader_schema, NamedSchema) else "<root>"
    explainer.explain(reader_schema, writer_schema, root)
    return explainer.problems


def _parse(schema: Any) -> Schema:
    """``schema`` as Avro's schema object, aliases taken as full names.

    Raises:
        ConfigurationError: it is not a valid Avro schema.
    """
    names = Names()
    try:
        parsed = avro.schema.make_avsc_object(json.loads(json.dumps(schema)), names)
    except (avro.errors.AvroException, TypeError, ValueError, AttributeError) as exc:
        raise ConfigurationError(f"invalid Avro schema: {exc}") from exc
    for named in names.names.values():
        # The specification takes an unqualified alias in the declaring type's namespace;
        # the checker compares aliases with the writer's full name as written.
        aliases = named.props.get("aliases")
        if isinstance(aliases, list) and named.namespace:
            named.props["aliases"] = [
                a if "." in a else f"{named.namespace}.{a}" for a in aliases if isinstance(a, str)
            ]
    return parsed


def _describe(schema: Schema) -> str:
    """A short type expression for messages: ``string``, ``array<int>``, ``union[null, long]``."""
    if isinstance(schema, UnionSchema):
        return f"union[{', '.join(_describe(branch) for branch in schema.schemas)}]"
    if isinstance(schema, NamedSchema):
        return str(schema.fullname)
    if isinstance(schema, ArraySchema):
        return f"array<{_describe(schema.items)}>"
    if isinstance(schema, MapSchema):
        return f"map<{_describe(schema.values)}>"
    logical = schema.props.get("logicalType")
    return f"{schema.type} ({logical})" if logical else str(schema.type)


def _same_shape(reader: Schema, writer: Schema) -> bool:
    """Whether both are the same kind of schema (and, if named, the checker matches names)."""
    if reader.type != writer.type:
        return False
    if isinstance(reader, NamedSchema) and isinstance(writer, NamedSchema):
        return schema_name_equals(reader, writer)
    return True


class _Explainer:
    """Walks a reader and a writer schema side by side, collecting located problems."""

    def __init__(self) -> None:
        self._checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
        self._active: set[tuple[int, int]] = set()  # record pairs being walked (recursion)
        self.problems: list[str] = []

    def _compatible(self, reader: Schema, writer: Schema) -> bool:
        result = self._checker.get_compatibility(reader, writer)
        return result.compatibility is not SchemaCompatibilityType.incompatible

    def explain(self, reader: Schema, writer: Schema, path: str) -> None:
        """Record every problem in reading ``writer`` data as ``reader``, at ``path``."""
        if isinstance(reader, UnionSchema) or isinstance(writer, UnionSchema):
            self._unions(reader, writer, path)
        elif not _same_shape(reader, writer):
            named = isinstance(reader, NamedSchema) and isinstance(writer, NamedSchema)
            if named and reader.type == writer.type:  # one kind of named type: names differ
                self.problems.append(
                    f"{path}: {reader.type} name changed from {_describe(writer)} "
                    f"to {_describe(reader)}"
                )
            elif self._compatible(reader, writer):  # a promotion such as int -> long
                self._logical(reader, writer, path)
            else:
                self.problems.append(
                    f"{path}: type changed from {_describe(writer)} to {_describe(reader)}"
                )
        elif self._logical(reader, writer, path):
            self._inside(reader, writer, path)

    def _inside(self, reader: Schema, writer: Schema, path: str) -> None:
        """What is inside two schemas of the same shape."""
        if isinstance(reader, RecordSchema) and isinstance(writer, RecordSchema):
            self._fields(reader, writer, path)
        elif isinstance(reader, ArraySchema) and isinstance(writer, ArraySchema):
            self.explain(reader.items, writer.items, f"{path}[]")
        elif isinstance(reader, MapSchema) and isinstance(writer, MapSchema):
            self.explain(reader.values, writer.values, f"{path}{{}}")
        elif isinstance(reader, EnumSchema) and isinstance(writer, EnumSchema):
            if not self._compatible(reader, writer):
                missing = [s for s in writer.symbols if s not in reader.symbols]
                self.problems.append(
                    f"{path}: enum symbol(s) {', '.join(missing)} removed from "
                    f"{reader.fullname}, which has no default"
                )
        elif (
            isinstance(reader, FixedSchema)
            and isinstance(writer, FixedSchema)
            and not self._compatible(reader, writer)
        ):
            self.problems.append(f"{path}: fixed size changed from {writer.size} to {reader.size}")

    def _unions(self, reader: Schema, writer: Schema, path: str) -> None:
        """Each branch the writer may have chosen must be read by the reader."""
        branches = writer.schemas if isinstance(writer, UnionSchema) else [writer]
        for branch in branches:
            target = self._branch_for(reader, branch) if isinstance(reader, UnionSchema) else reader
            if target is not None and (
                self._compatible(target, branch) or _same_shape(target, branch)
            ):
                self.explain(target, branch, path)
            else:
                what = "union branch " if isinstance(writer, UnionSchema) else ""
                self.problems.append(
                    f"{path}: {what}{_describe(branch)} not resolvable by {_describe(reader)}"
                )

    def _branch_for(self, union: UnionSchema, writer: Schema) -> Schema | None:
        """The reader branch that reads ``writer``, if any.

        A branch of the same shape first, then one reading it by promotion; else a branch of
        the same shape that fails inside, to say where.
        """
        branches: list[Schema] = list(union.schemas)
        same_shape = [b for b in branches if _same_shape(b, writer)]
        for branch in same_shape:
            if self._compatible(branch, writer):
                return branch
        for branch in branches:
            if self._compatible(branch, writer):
                return branch
        return same_shape[0] if same_shape else None

    def _fields(self, reader: RecordSchema, writer: RecordSchema, path: str) -> None:
        pair = (id(reader), id(writer))
        if pair in self._active:  # a recursive type: this pair is already being walked
            return
        self._active.add(pair)
        for field in reader.fields:
            source = lookup_writer_field(writer_schema=writer, reader_field=field)
            where = f"{path}.{field.name}"
            if source is not None:
                self.explain(field.type, source.type, where)
            elif not field.has_default:
                self.problems.append(f"{where}: added without a default")
            elif not _default_fits(field.type, field.default):
                kind = _describe(field.type)
                if isinstance(field.type, UnionSchema):
                    kind = f"the first branch of {kind}"
                self.problems.append(
                    f"{where}: added with default {field.default!r}, which does not match {kind}"
                )
        self._active.discard(pair)

    def _logical(self, reader: Schema, writer: Schema, path: str) -> bool:
        """Whether the logical types match (not Avro's rule: see the module docstring).

        A mismatch is recorded as a problem at ``path``.
        """
        reader_logical = reader.props.get("logicalType")
        writer_logical = writer.props.get("logicalType")
        if reader_logical != writer_logical:
            self.problems.append(
                f"{path}: logical type changed from {writer_logical or 'none'} "
                f"to {reader_logical or 'none'}"
            )
            return False
        if reader_logical == "decimal":
            old, new = (
                f"{s.props.get('precision')}/{s.props.get('scale', 0)}" for s in (writer, reader)
            )
            if old != new:
                self.problems.append(f"{path}: decimal precision/scale changed from {old} to {new}")
                return False
        return True


def _default_fits(schema: Schema, value: Any) -> bool:
    """Whether a JSON default is, shallowly, of ``schema`` (a union's: of its first branch)."""
    if isinstance(schema, UnionSchema):
        return bool(schema.schemas) and _default_fits(schema.schemas[0], value)
    if isinstance(schema, EnumSchema) and value not in schema.symbols:
        return False
    kind = str(schema.type)
    return isinstance(value, _DEFAULT_TYPES[kind]) and isinstance(value, bool) == (
        kind == "boolean"
    )
