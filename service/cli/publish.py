"""``publish``: build one message from JSON and publish it with :class:`service.Publisher`.

The manifest selects the class among those bound in the configuration's ``messages``
(:func:`service.consumers.manifest_of`); the JSON object is converted field by field, driven
by the class's type hints: nested dataclasses, enums (by value, else by name), ``datetime``
(ISO 8601 text, naive taken as UTC, or epoch seconds), ``date``/``time`` (ISO 8601),
``Decimal`` (text or number, exactly), ``UUID`` (text), lists, tuples, sets, dicts,
``X | None`` and ``Literal``. Manifest ``dict`` publishes the JSON object as it is, with the
JSON serializer.

Exit codes: 0 published, 1 the broker refused or did not confirm, 2 unknown manifest, JSON
that does not fit (the message names the field), or a configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import json
import sys
import types
import typing
import uuid
from collections import abc
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar, Union

from service.cli.topics import add_config_option, admin_client, existing_topics, load
from service.consumers import manifest_of
from service.errors import BackendError, ConfigurationError, SerializationError
from service.publisher import Publisher
from service.serializers.json import DICT_MANIFEST
from service.wiring import build_backend, build_schema_registry, build_serializers

__all__ = ["from_json", "register"]

EXIT_OK, EXIT_USAGE = 0, 2
T = TypeVar("T")
_NONE = type(None)
_SEQUENCES = (list, tuple, abc.Sequence, abc.MutableSequence)
_SETS = (set, frozenset, abc.Set, abc.MutableSet)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)


def register(commands: Any) -> None:
    """Add ``publish``."""
    text = (
        "Publish one message built from a JSON object. The manifest picks the class bound in "
        "the configuration's messages; the object is converted field by field (nested "
        "dataclasses, enums, ISO 8601 datetime/date, Decimal, UUID). Manifest 'dict' publishes "
        "the object as is, as JSON. Exit 2 when the manifest is unknown or the JSON does not "
        "fit (the error names the field)."
    )
    publish = commands.add_parser(
        "publish", help="publish one message built from JSON", description=text
    )
    add_config_option(publish)
    publish.add_argument("--topic", required=True, metavar="T", help="the topic to publish to")
    publish.add_argument(
        "--manifest", required=True, metavar="M", help="the message type, e.g. payments.DoPayment"
    )
    publish.add_argument(
        "--json", required=True, metavar="OBJECT", dest="payload", help="the message as JSON"
    )
    publish.add_argument("--key", metavar="K", help="the record key (default: none)")
    publish.add_argument(
        "--message-id",
        metavar="ID",
        help="the message_id header (default: a random UUID); reuse one to test deduplication",
    )
    publish.set_defaults(handler=_publish_command)


def _publish_command(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        data = _message(config.messages, args.manifest, args.payload)
    except (ConfigurationError, SerializationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    timeout = config.kafka.startup_timeout
    if args.topic not in existing_topics(admin_client(config), timeout):
        raise BackendError(
            f"topic {args.topic!r} does not exist on {config.kafka.bootstrap_servers}: "
            "check the name, or create it (topics create)"
        )
    schema_registry = build_schema_registry(config)
    backend = build_backend(config)
    try:
        publisher = Publisher(build_serializers(config, schema_registry), backend)
        try:
            message_id = publisher.publish(
                args.topic, data, key=args.key, message_id=args.message_id
            )
        except SerializationError as exc:
            print(f"error: {args.manifest}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        backend.flush(max(timeout, 10.0))
    finally:
        if schema_registry is not None:
            schema_registry.close()
    print(f"published {message_id} to {args.topic}")
    return EXIT_OK


def _message(messages: Mapping[type, str], manifest: str, text: str) -> Any:
    """The object to publish: ``text`` decoded into the class bound to ``manifest``.

    Raises:
        ConfigurationError: no bound class has ``manifest``.
        SerializationError: ``text`` is not a JSON object or does not fit the class.
    """
    if manifest == DICT_MANIFEST:
        cls: type | None = dict
    else:
        cls = next((c for c in messages if manifest_of(c) == manifest), None)
    if cls is None:
        known = ", ".join(sorted([DICT_MANIFEST, *(manifest_of(c) for c in messages)]))
        raise ConfigurationError(
            f"no class bound in the configuration's messages has manifest {manifest!r} "
            f"(known: {known})"
        )
    try:
        # Floats as Decimal keep "12.10" exact for Decimal fields; plain dicts stay JSON-native.
        payload = json.loads(text, parse_float=None if cls is dict else Decimal)
    except ValueError as exc:
        raise SerializationError(f"--json is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise SerializationError(
            f"--json must be a JSON object, not a JSON {type(payload).__name__}"
        )
    return payload if cls is dict else from_json(cls, payload)


def from_json(cls: type[T], value: Any) -> T:
    """An instance of ``cls`` built from a decoded JSON value, guided by its type hints.

    Raises:
        SerializationError: ``value`` does not fit ``cls``; the text names the field, e.g.
            ``field 'amount.currency': expected text, got 12``.
    """
    built: T = _convert(cls, value, "")
    return built


def _misfit(where: str, expected: str, value: Any) -> SerializationError:
    shown = json.dumps(value, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    place = f"field {where!r}" if where else "the message"
    return SerializationError(f"{place}: expected {expected}, got {shown}")


def _convert(tp: Any, value: Any, where: str) -> Any:
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is not None:
        return _convert_generic(tp, origin, value, where)
    if value is None:
        raise _misfit(where, f"a value of type {_name(tp)} (it is not optional)", value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _misfit(where, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _misfit(where, "an integer", value)
    if tp is float:
        if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            return float(value)
        raise _misfit(where, "a number", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _misfit(where, "text", value)
    if tp is Decimal:
        return _decimal(value, where)
    if tp in (datetime.datetime, datetime.date, datetime.time):
        return _temporal(tp, value, where)
    if tp is uuid.UUID:
        try:
            return uuid.UUID(value)
        except (TypeError, ValueError, AttributeError):
            raise _misfit(where, "a UUID as text", value) from None
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _misfit(where, f"a {_name(tp)} (a type the JSON converter does not build)", value)


def _convert_generic(tp: Any, origin: Any, value: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        options = [a for a in args if a is not _NONE]
        if len(options) == 1:
            return _convert(options[0], value, where)
        for option in options:
            try:
                return _convert(option, value, where)
            except SerializationError:
                continue
        raise _misfit(where, " or ".join(_name(o) for o in options), value)
    if origin is Literal:
        if value in args:
            return value
        raise _misfit(where, "one of " + ", ".join(json.dumps(a) for a in args), value)
    if origin in _SEQUENCES or origin in _SETS:
        return _sequence(origin, args, value, where)
    if origin in _MAPPINGS:
        if not isinstance(value, dict):
            raise _misfit(where, "a JSON object", value)
        key_type, value_type = args or (Any, Any)
        return {
            _key(key_type, k, where): _convert(value_type, v, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    raise _misfit(where, f"a {_name(tp)} (a type the JSON converter does not build)", value)


def _sequence(origin: Any, args: tuple[Any, ...], value: Any, where: str) -> Any:
    if not isinstance(value, list):
        raise _misfit(where, "a JSON array", value)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise _misfit(where, f"an array of {len(args)} items", value)
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    item_type = args[0] if args else Any
    items = [_convert(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        return tuple(items)
    if origin in _SETS:
        try:
            return frozenset(items) if origin is frozenset else set(items)
        except TypeError:
            raise _misfit(where, "an array of hashable items", value) from None
    return items


def _key(tp: Any, key: str, where: str) -> Any:
    if tp is int:  # JSON object keys are text
        try:
            return int(key)
        except ValueError:
            raise _misfit(f"{where}[{key!r}]", "an integer key", key) from None
    return _convert(tp, key, f"{where}[{key!r}]")


def _dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise _misfit(where, f"a JSON object for {cls.__qualname__}", value)
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise SerializationError(f"{cls.__qualname__}: cannot resolve a type hint: {exc}") from exc
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise SerializationError(
            f"field {_join(where, unknown[0])!r}: unknown field of {cls.__qualname__} "
            f"(fields: {', '.join(fields)})"
        )
    kwargs: dict[str, Any] = {}
    for name, spec in fields.items():
        path = _join(where, name)
        if name in value:
            kwargs[name] = _convert(hints.get(name, Any), value[name], path)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise SerializationError(f"field {path!r}: required by {cls.__qualname__}, missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # raised by a __post_init__ check
        place = f"field {where!r}" if where else "the message"
        raise SerializationError(f"{place}: {cls.__qualname__} refused it: {exc}") from exc


def _enum(cls: type[enum.Enum], value: Any, where: str) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        if isinstance(value, str) and value in cls.__members__:
            return cls[value]
    choices = ", ".join(json.dumps(m.value, default=str) for m in cls)
    raise _misfit(where, f"one of {choices} ({cls.__qualname__})", value)


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            pass
        else:
            if number.is_finite():
                return number
    raise _misfit(where, 'a decimal number (JSON number or text such as "12.50")', value)


def _temporal(tp: Any, value: Any, where: str) -> Any:
    if tp is datetime.datetime and isinstance(value, int | Decimal) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(float(value), tz=datetime.UTC)
    if isinstance(value, str):
        try:
            parsed = tp.fromisoformat(value)
        except ValueError:
            pass
        else:
            if isinstance(parsed, datetime.datetime) and parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.UTC)
            return parsed
    expected = {
        datetime.datetime: "an ISO 8601 date-time (naive is UTC) or epoch seconds",
        datetime.date: "an ISO 8601 date such as 2024-05-06",
        datetime.time: "an ISO 8601 time such as 12:30:00",
    }[tp]
    raise _misfit(where, expected, value)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else str(tp).replace("typing.", "")
