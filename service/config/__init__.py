"""Service configuration: one YAML file, validated at start-up, with environment overrides."""

from service.config.loader import load_config, parse_config
from service.config.model import (
    DedupConfig,
    KafkaConfig,
    QueueConfig,
    RegistryConfig,
    RetryConfig,
    RuntimeConfig,
    ServiceConfig,
)

__all__ = [
    "DedupConfig",
    "KafkaConfig",
    "QueueConfig",
    "RegistryConfig",
    "RetryConfig",
    "RuntimeConfig",
    "ServiceConfig",
    "load_config",
    "parse_config",
]
