"""``publish``: build one message from JSON and publish it with :class:`service.Publisher`.

The manifest selects the class among those bound in the configuration's ``messages``
(:func:`service.consumers.manifest_of`); the JSON object is decoded into it by the same typed
decoder the JSON serializer uses (:mod:`service.serializers.typed`): nested dataclasses,
enums (by value), ``datetime``/``date``/``time`` (RFC 3339 text), ``Decimal`` (text or
number, exactly), ``UUID`` (text), lists, tuples, sets, dicts, ``X | None``, ``Literal`` and
pydantic models. Unlike the consuming side, which ignores fields a type does not declare,
``publish`` refuses them: a mistyped field name would otherwise vanish. Manifest ``dict``
publishes the JSON object as it is, with the JSON serializer.

Exit codes: 0 published, 1 the broker refused or did not confirm, 2 unknown manifest, JSON
that does not fit (the message names the field), or a configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from service.cli.topics import add_config_option, existing_topics, load, probe
from service.consumers import manifest_of
from service.errors import BackendError, ConfigurationError, SerializationError
from service.publisher import Publisher
from service.serializers.json import DICT_MANIFEST
from service.serializers.typed import decode_json_object, encode_json, json_codec
from service.wiring import build_backend, build_schema_registry, build_serializers

__all__ = ["message_from_json", "register"]

EXIT_OK, EXIT_USAGE = 0, 2


def register(commands: Any) -> None:
    """Add ``publish``."""
    text = (
        "Publish one message built from a JSON object. The manifest picks the class bound in "
        "the configuration's messages; the object is decoded field by field (nested "
        "dataclasses, enums, RFC 3339 datetime/date, Decimal, UUID); unknown fields are "
        "refused. Manifest 'dict' publishes "
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
    probe(config)
    if args.topic not in existing_topics(config):
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
        return decode_json_object(text.encode())
    cls = next((c for c in messages if manifest_of(c) == manifest), None)
    if cls is None:
        known = ", ".join(sorted([DICT_MANIFEST, *(manifest_of(c) for c in messages)]))
        raise ConfigurationError(
            f"no class bound in the configuration's messages has manifest {manifest!r} "
            f"(known: {known})"
        )
    return message_from_json(cls, text)


def message_from_json(cls: type, text: str) -> Any:
    """An instance of ``cls`` decoded from the JSON object ``text``, as the consumers decode it.

    Raises:
        ConfigurationError: ``cls`` cannot be decoded from JSON.
        SerializationError: ``text`` is not JSON, does not fit ``cls`` (the text names the
            field by its path: ``$.amount.currency: expected str, got int``), or names a
            field ``cls`` does not declare.
    """
    data = text.encode()
    built: Any = json_codec(cls).decode(data)
    unknown = _undeclared(decode_json_object(data), decode_json_object(encode_json(built)), "$")
    if unknown is not None:
        raise SerializationError(f"{unknown}: {cls.__qualname__} has no such field")
    return built


def _undeclared(sent: Any, kept: Any, path: str) -> str | None:
    """The path of the first field of ``sent`` missing from ``kept`` (its re-encoding).

    A decoded field is always encoded again, so a field that did not survive the round trip
    is one the type does not declare.
    """
    if isinstance(sent, dict) and isinstance(kept, dict):
        for name, value in sent.items():
            if name not in kept:
                return f"{path}.{name}"
            found = _undeclared(value, kept[name], f"{path}.{name}")
            if found is not None:
                return found
    elif isinstance(sent, list) and isinstance(kept, list):
        for index, (value, again) in enumerate(zip(sent, kept, strict=False)):
            found = _undeclared(value, again, f"{path}[{index}]")
            if found is not None:
                return found
    return None
