"""Serializers and their registry."""

from service.serializers.avro import AvroSerializer
from service.serializers.base import Serializer
from service.serializers.json import JsonSerializer
from service.serializers.registry import SerializerConfig, SerializerRegistry

__all__ = [
    "AvroSerializer",
    "JsonSerializer",
    "Serializer",
    "SerializerConfig",
    "SerializerRegistry",
]
