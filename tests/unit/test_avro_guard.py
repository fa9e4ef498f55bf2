"""Open-world guards: Avro arrays of zero-byte items, key leftovers, message_id field typos."""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

import fastavro
import pydantic
import pytest

from service.config.model import QueueConfig
from service.errors import ConfigurationError, DeserializationError
from service.serializers.avro_guard import zero_width_array
from service.serializers.json import JsonSerializer
from service.serializers.keys import key_decoder
from service.serializers.registry import SerializerRegistry
from service.wiring import build_routing


def parsed(definition: Any) -> tuple[Any, dict[str, Any]]:
    named: dict[str, Any] = {}
    return fastavro.parse_schema(definition, named_schemas=named), named


def record(*fields: tuple[str, Any], name: str = "a.R") -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


EMPTY = {"type": "record", "name": "E", "fields": []}


@pytest.mark.parametrize(
    ("definition", "where"),
    [
        (record(("pad", {"type": "array", "items": "null"})), "a.R.pad[]"),
        (record(("e", EMPTY), ("pad", {"type": "array", "items": "a.E"})), "a.R.pad[]"),
        (
            record(
                (
                    "m",
                    {
                        "type": "map",
                        "values": {
                            "type": "array",
                            "items": {"type": "fixed", "name": "F", "size": 0},
                        },
                    },
                )
            ),
            "a.R.m{}[]",
        ),
        (
            record(
                (
                    "u",
                    [
                        "null",
                        {"type": "array", "items": record(("n", "null"), ("e", EMPTY), name="W")},
                    ],
                )
            ),
            "a.R.u[]",
        ),
    ],
)
def test_arrays_of_zero_byte_items_are_found(definition: Any, where: str) -> None:
    schema, named = parsed(definition)
    found = zero_width_array(schema, named)
    assert found is not None and found.startswith(where), found
    assert zero_width_array(schema) == found  # named types from __named_schemas


@pytest.mark.parametrize(
    "definition",
    [
        record(("a", {"type": "array", "items": ["null", "int"]})),  # union index: 1 byte
        record(("m", {"type": "map", "values": "null"})),  # map keys take bytes
        record(("a", {"type": "array", "items": {"type": "enum", "name": "S", "symbols": ["x"]}})),
        record(("next", ["null", "a.R"]), ("all", {"type": "array", "items": "a.R"})),
        "string",
    ],
)
def test_arrays_whose_items_take_bytes_pass(definition: Any) -> None:
    schema, named = parsed(definition)
    assert zero_width_array(schema, named) is None


class KeyRegistry:
    def __init__(self, definition: Any) -> None:
        self.text = json.dumps(definition)

    def schema_text(self, schema_id: int) -> str:
        return self.text


def test_avro_keys_with_leftover_bytes_or_a_bomb_schema_are_refused() -> None:
    frame = struct.pack(">bI", 0, 3)
    decode = key_decoder("avro", KeyRegistry(record(("id", "string"))))  # type: ignore[arg-type]
    assert decode is not None
    assert decode(frame + b"\x04ab") == {"id": "ab"}
    with pytest.raises(DeserializationError, match="record key has 4 bytes left over"):
        decode(frame + b"\x04abtail")
    bomb = record(("pad", {"type": "array", "items": "null"}))
    decode = key_decoder("avro", KeyRegistry(bomb))  # type: ignore[arg-type]
    assert decode is not None
    with pytest.raises(DeserializationError, match="zero bytes"):
        decode(frame + b"\x80\x80\x80\x80\x80\x80\x02\x00")


@dataclasses.dataclass
class Order:
    order_id: str


class Refund(pydantic.BaseModel):
    refund_id: str
    order_id: str


class Plain:
    order_id: str
    other: int


def queue(message_id: str, headerless: type | None, *type_ids: type) -> QueueConfig:
    return QueueConfig(
        name="q",
        topics=("t",),
        group_id="g",
        consumers=(),
        consumer_paths=(),
        headerless=("json", headerless) if headerless else None,
        message_id=message_id,
        type_ids={cls.__name__: cls for cls in type_ids},
    )


SERIALIZERS = SerializerRegistry({"serializers": {"json": JsonSerializer()}})  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    "config",
    [
        queue("field:order_id", Order, Refund, Plain),
        queue("field:anything", dict),  # dict payloads: checked at run time
        queue("field:anything", None),  # no class named
        queue("header", Order),
    ],
)
def test_message_id_fields_the_classes_declare_are_accepted(config: QueueConfig) -> None:
    assert build_routing(config, SERIALIZERS).message_id == config.message_id


def test_a_message_id_field_a_class_lacks_is_refused_naming_the_classes() -> None:
    with pytest.raises(
        ConfigurationError, match=r"queues\.q\.message_id.*'refund_id'.*Order, Plain"
    ):
        build_routing(queue("field:refund_id", Order, Refund, Plain), SERIALIZERS)
