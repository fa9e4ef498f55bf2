"""Serializers and their registry."""

from service.serializers.base import Serializer
from service.serializers.json import JsonSerializer
from service.serializers.registry import SerializerConfig, SerializerRegistry

__all__ = ["JsonSerializer", "Serializer", "SerializerConfig", "SerializerRegistry"]
