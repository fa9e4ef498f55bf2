"""Service configuration: one YAML file, validated at start-up, with environment overrides.

See :mod:`service.config.loader` for how a file is read and checked, and
:mod:`service.config.model` for what it may hold.
"""

from service.config.loader import config_schema, load_config, parse_config
from service.config.model import (
    ConfigDocument,
    DeadLetterLimitConfig,
    DedupConfig,
    KafkaConfig,
    QueueConfig,
    RegistryConfig,
    RetryConfig,
    RuntimeConfig,
    ServiceConfig,
    TransactionConfig,
)

__all__ = [
    "ConfigDocument",
    "DeadLetterLimitConfig",
    "DedupConfig",
    "KafkaConfig",
    "QueueConfig",
    "RegistryConfig",
    "RetryConfig",
    "RuntimeConfig",
    "ServiceConfig",
    "TransactionConfig",
    "config_schema",
    "load_config",
    "parse_config",
]
