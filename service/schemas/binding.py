"""Binding a dataclass to its Avro record: checked once, then cheap conversions per message.

:func:`bind_record` walks the record schema and the class's type hints together. Every field
must exist on both sides with matching types, else a :class:`ConfigurationError` names the
class, the schema file and the field. The result converts instances to the dicts fastavro
writes, and the dicts fastavro reads back to instances; fields that need no conversion
(primitives, and the logical types fastavro already maps: ``datetime`` for timestamp-millis,
``Decimal`` for decimal, ``UUID`` for uuid, ``date`` for date) are passed through.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import types
import typing
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.consumers import manifest_of
from service.errors import ConfigurationError

__all__ = ["RecordCodec", "bind_record"]

Convert = Callable[[Any], Any]

_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (float,),
    "double": (float,),
    "bytes": (bytes,),
    "string": (str,),
}
_LOGICAL: dict[str, type] = {
    "timestamp-millis": datetime.datetime,
    "timestamp-micros": datetime.datetime,
    "date": datetime.date,
    "time-millis": datetime.time,
    "time-micros": datetime.time,
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
}


@dataclasses.dataclass(frozen=True, slots=True)
class RecordCodec:
    """Converts between one dataclass and fastavro's dicts for its record."""

    cls: type
    manifest: str
    to_avro: Convert
    from_avro: Convert


class _Mismatch(Exception):  # noqa: N818 - internal signal, turned into ConfigurationError
    pass


def bind_record(cls: type, parsed: dict[str, Any], path: Path) -> RecordCodec:
    """Check ``cls`` against the parsed record schema from ``path``; return its codec.

    Raises:
        ConfigurationError: ``cls`` is not a dataclass, its manifest is not the record's full
            name, or a field is missing, extra, or of another type.
    """
    try:
        if manifest_of(cls) != parsed["name"]:
            raise _Mismatch(
                f"the message class's manifest is {manifest_of(cls)!r}, the record is "
                f"{parsed['name']!r}: set {cls.__qualname__}.__manifest__ = {parsed['name']!r}"
            )
        return _record(cls, parsed, parsed.get("__named_schemas", {}), parsed["name"])
    except _Mismatch as exc:
        raise ConfigurationError(
            f"{cls.__qualname__} does not match the schema {path}: {exc}"
        ) from None


def _record(cls: type, schema: dict[str, Any], named: dict[str, Any], where: str) -> RecordCodec:
    if not dataclasses.is_dataclass(cls):
        raise _Mismatch(f"{where}: {cls.__qualname__} is not a dataclass")
    short_name = schema["name"].rsplit(".", 1)[-1]
    if manifest_of(cls) != schema["name"] and cls.__name__ != short_name:
        raise _Mismatch(
            f"{where}: record {schema['name']} cannot be class {cls.__qualname__} (a nested "
            f"record's class is named {short_name} or has __manifest__ {schema['name']!r})"
        )
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise _Mismatch(
            f"{where}: cannot resolve an annotation of {cls.__qualname__}: {exc}"
        ) from exc
    fields = [f.name for f in dataclasses.fields(cls)]
    avro_fields = [f["name"] for f in schema["fields"]]
    for name in fields:
        if name not in avro_fields:
            raise _Mismatch(f"{where}.{name}: the class has this field, the schema does not")
    for name in avro_fields:
        if name not in fields:
            raise _Mismatch(f"{where}.{name}: the schema has this field, the class does not")
    to_parts: list[tuple[str, Convert | None]] = []
    from_parts: list[tuple[str, Convert]] = []
    for field in schema["fields"]:
        name = field["name"]
        to, back = _convert(field["type"], hints[name], named, f"{where}.{name}")
        to_parts.append((name, to))
        if back is not None:
            from_parts.append((name, back))
    return RecordCodec(cls, schema["name"], _writer(to_parts), _reader(cls, from_parts))


def _writer(parts: list[tuple[str, Convert | None]]) -> Convert:
    def to_avro(obj: Any) -> dict[str, Any]:
        return {
            name: (getattr(obj, name) if to is None else to(getattr(obj, name)))
            for name, to in parts
        }

    return to_avro


def _reader(cls: type, parts: list[tuple[str, Convert]]) -> Convert:
    build = _constructor(cls)
    if not parts:
        return build

    def from_avro(record: dict[str, Any]) -> Any:
        for name, back in parts:
            record[name] = back(record[name])
        return build(record)

    return from_avro


def _constructor(cls: type) -> Convert:
    """Build ``cls`` from a dict holding every field.

    A plain (non-slotted) dataclass without ``__post_init__`` is built the way ``pickle``
    does, by filling its ``__dict__``: five times cheaper than ``__init__`` for a frozen
    dataclass, and the same object. Anything else goes through ``__init__``.
    """
    if "__slots__" in vars(cls) or hasattr(cls, "__post_init__"):
        return lambda record: cls(**record)
    new = object.__new__

    def build(record: dict[str, Any]) -> Any:
        obj: Any = new(cls)
        obj.__dict__.update(record)
        return obj

    return build


def _convert(
    avro: Any, hint: Any, named: dict[str, Any], where: str
) -> tuple[Convert | None, Convert | None]:
    """(to_avro, from_avro) for one value; ``None`` means no conversion is needed."""
    if isinstance(avro, str) and avro in named:
        avro = named[avro]
    if isinstance(avro, list):
        return _union(avro, hint, named, where)
    if isinstance(avro, str):
        return _primitive(avro, hint, where)
    kind, logical = avro["type"], avro.get("logicalType")
    if logical in _LOGICAL:
        _expect(hint, (_LOGICAL[logical],), f"{kind} ({logical})", where)
        return None, None
    if kind in _PRIMITIVES:
        return _primitive(kind, hint, where)
    if kind == "record":
        codec = _record(_class(hint, where), avro, named, where)
        return codec.to_avro, codec.from_avro
    if kind == "enum":
        return _enum(avro, hint, where)
    if kind in ("array", "map"):
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        container = list if kind == "array" else dict
        if origin is not container:
            raise _Mismatch(f"{where}: schema says {kind}, class says {_name(hint)}")
        inner = avro["items"] if kind == "array" else avro["values"]
        to, back = _convert(inner, args[-1], named, f"{where}[]")
        if kind == "array":
            return (
                None if to is None else (lambda v: [to(x) for x in v]),
                None if back is None else (lambda v: [back(x) for x in v]),
            )
        return (
            None if to is None else (lambda v: {k: to(x) for k, x in v.items()}),
            None if back is None else (lambda v: {k: back(x) for k, x in v.items()}),
        )
    raise _Mismatch(f"{where}: schema type {kind!r} is not supported by the binding")


def _primitive(kind: str, hint: Any, where: str) -> tuple[None, None]:
    if kind not in _PRIMITIVES:
        raise _Mismatch(f"{where}: unknown schema type {kind!r}")
    _expect(hint, _PRIMITIVES[kind], kind, where)
    return None, None


def _expect(hint: Any, allowed: tuple[type, ...], avro: str, where: str) -> None:
    if hint not in allowed or (hint is int and bool in allowed):
        raise _Mismatch(f"{where}: schema says {avro}, class says {_name(hint)}")


def _union(
    branches: list[Any], hint: Any, named: dict[str, Any], where: str
) -> tuple[Convert | None, Convert | None]:
    others = [b for b in branches if b != "null"]
    if len(others) != 1 or len(branches) != 2:
        raise _Mismatch(f'{where}: only ["null", T] unions are supported by the binding')
    args = typing.get_args(hint)
    is_optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and (
        type(None) in args
    )
    if not is_optional or len(args) != 2:
        raise _Mismatch(f"{where}: schema says optional, class says {_name(hint)}")
    inner = next(a for a in args if a is not type(None))
    to, back = _convert(others[0], inner, named, where)
    return (
        None if to is None else (lambda v: None if v is None else to(v)),
        None if back is None else (lambda v: None if v is None else back(v)),
    )


def _enum(avro: dict[str, Any], hint: Any, where: str) -> tuple[Convert, Convert]:
    if not (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        raise _Mismatch(f"{where}: schema says enum {avro['name']}, class says {_name(hint)}")
    members = [m.name for m in hint]
    if sorted(members) != sorted(avro["symbols"]):
        raise _Mismatch(
            f"{where}: enum {avro['name']} has symbols {avro['symbols']}, "
            f"{hint.__qualname__} has {members}"
        )
    return (lambda v: v.name), (lambda v: hint[v])


def _class(hint: Any, where: str) -> type:
    if not isinstance(hint, type):
        raise _Mismatch(f"{where}: schema says record, class says {_name(hint)}")
    return hint


def _name(hint: Any) -> str:
    return getattr(hint, "__qualname__", None) or repr(hint)
