"""Key decoders (record.key): bytes, string, json, avro in Confluent's wire format."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from service.errors import ConfigurationError, DeserializationError
from service.serializers.keys import key_decoder

KEY_SCHEMA = {"type": "record", "name": "OrderKey", "fields": [{"name": "id", "type": "string"}]}


class FakeRegistry:
    def __init__(self) -> None:
        self.asked: list[int] = []

    def schema_text(self, schema_id: int) -> str:
        self.asked.append(schema_id)
        return json.dumps(KEY_SCHEMA)


def framed(value: dict[str, Any], schema_id: int = 7) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(KEY_SCHEMA), value)
    return b"\x00" + struct.pack(">I", schema_id) + out.getvalue()


def test_bytes_keys_stay_bytes_and_text_and_json_decode() -> None:
    assert key_decoder("bytes") is None
    assert key_decoder("string")(b"k-1") == "k-1"  # type: ignore[misc]
    assert key_decoder("json")(b'{"id": 1}') == {"id": 1}  # type: ignore[misc]


@pytest.mark.parametrize(("kind", "raw"), [("string", b"\xff\xfe"), ("json", b"{nope")])
def test_keys_that_do_not_decode_fail_the_message(kind: str, raw: bytes) -> None:
    decode = key_decoder(kind)
    assert decode is not None
    with pytest.raises(DeserializationError, match="record key"):
        decode(raw)


def test_avro_keys_decode_with_the_writer_schema_fetched_once() -> None:
    registry = FakeRegistry()
    decode = key_decoder("avro", registry)  # type: ignore[arg-type]
    assert decode is not None
    assert decode(framed({"id": "o-1"})) == {"id": "o-1"}
    assert decode(framed({"id": "o-2"})) == {"id": "o-2"}
    assert registry.asked == [7]
    with pytest.raises(DeserializationError, match="wire format"):
        decode(b"plain")


def test_bad_kinds_and_avro_without_a_registry_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="schema_registry"):
        key_decoder("avro")
    with pytest.raises(ConfigurationError, match="bytes, string, json or avro"):
        key_decoder("xml")
