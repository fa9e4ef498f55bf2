from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from service import (
    ConfigurationError,
    DeserializationError,
    JsonSerializer,
    SerializationError,
    Serializer,
    SerializerRegistry,
    UnknownManifestError,
    UnknownSerializerError,
)
from tests.payments import DoPayment, ExpressPayment, json_registry


class ReprSerializer(Serializer):
    def identifier(self) -> int:
        return 7

    def serialize(self, data: Any) -> bytes:
        return repr(data).encode()

    def deserialize(self, data: bytes, manifest: str | None = None) -> Any:
        return data.decode()


@dataclass
class Point:
    x: int
    y: int


def test_json_round_trips_bound_dataclasses_and_dicts() -> None:
    registry = json_registry()
    for obj in (DoPayment("o1", 3), ExpressPayment("o2", 4), {"k": [1, "two", None]}):
        serializer = registry.find_serializer_for(obj)
        payload = serializer.serialize(obj)
        back = registry.deserialize_with_serializerid(payload, 1, serializer.manifest(obj))
        assert back == obj
        assert type(back) is type(obj)


def test_json_unknown_manifest_is_an_unknown_manifest_error() -> None:
    with pytest.raises(UnknownManifestError, match="'Nope'"):
        JsonSerializer().deserialize(b"{}", "Nope")


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"{not json", b"[1, 2]", b'{"order_id": 1}'])
def test_json_bad_bytes_are_deserialization_errors(payload: bytes) -> None:
    with pytest.raises(DeserializationError):
        json_registry().deserialize_with_serializerid(payload, 1, "DoPayment")


def test_json_refuses_values_it_cannot_encode() -> None:
    with pytest.raises(SerializationError, match="cannot encode"):
        JsonSerializer().serialize({"x": object()})
    with pytest.raises(SerializationError, match="not str"):
        JsonSerializer().serialize("a string")


def test_most_specific_binding_wins_and_default_applies_otherwise() -> None:
    registry = SerializerRegistry(
        {
            "serializers": {"json": JsonSerializer, "repr": ReprSerializer()},
            "serializer_bindings": {DoPayment: "json", ExpressPayment: "repr"},
            "default": "repr",
        }
    )
    assert registry.find_serializer_for(DoPayment("a", 1)).identifier() == 1
    assert registry.find_serializer_for(ExpressPayment("a", 1)).identifier() == 7
    assert registry.find_serializer_for(Point(1, 2)).identifier() == 7


def test_subclass_without_own_binding_uses_base_binding() -> None:
    registry = SerializerRegistry(
        {"serializers": {"json": JsonSerializer}, "serializer_bindings": {DoPayment: "json"}}
    )
    assert registry.find_serializer_for(ExpressPayment("a", 1)).identifier() == 1


def test_no_binding_and_no_default_is_an_error() -> None:
    with pytest.raises(SerializationError, match="no serializer is bound to Point"):
        json_registry().find_serializer_for(Point(1, 2))


def test_lookup_by_unknown_id_is_an_unknown_serializer_error() -> None:
    with pytest.raises(UnknownSerializerError, match="identifier 99"):
        json_registry().get_serializer_by_id(99)


def test_configuration_mistakes_are_reported() -> None:
    with pytest.raises(ConfigurationError, match="share identifier 1"):
        SerializerRegistry({"serializers": {"a": JsonSerializer, "b": JsonSerializer}})
    with pytest.raises(ConfigurationError, match="'missing'"):
        SerializerRegistry({"serializers": {}, "serializer_bindings": {Point: "missing"}})
    with pytest.raises(ConfigurationError, match="default"):
        SerializerRegistry({"serializers": {}, "default": "x"})
    with pytest.raises(ConfigurationError, match="only bind dataclasses"):
        SerializerRegistry(
            {"serializers": {"json": JsonSerializer}, "serializer_bindings": {int: "json"}}
        )
