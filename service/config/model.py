"""The validated configuration: frozen dataclasses, built only by :mod:`service.config.loader`.

Secrets (passwords, SASL/SSL key material) are held as :class:`Secret`, whose ``repr`` and
``str`` never show the value, so they cannot leak into logs, metrics or error texts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DedupConfig",
    "KafkaConfig",
    "QueueConfig",
    "RegistryConfig",
    "RetryConfig",
    "RuntimeConfig",
    "Secret",
    "ServiceConfig",
]


class Secret:
    """A secret value; shown as ``***`` everywhere but :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value, for handing to a client library only."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def reveal(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with every :class:`Secret` replaced by its value (for librdkafka)."""
    return {k: v.reveal() if isinstance(v, Secret) else v for k, v in settings.items()}


@dataclass(frozen=True)
class KafkaConfig:
    """Broker connection and librdkafka pass-through settings."""

    bootstrap_servers: str
    client: Mapping[str, Any] = field(default_factory=dict)
    consumer: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=dict)
    partitions: int = 1
    replication_factor: int = 1
    startup_timeout: float = 30.0


@dataclass(frozen=True)
class RegistryConfig:
    """The schema registry and the local schemas."""

    url: str
    schemas: str = "schemas"
    username: str | None = None
    password: Secret | None = None
    ssl: Mapping[str, Any] = field(default_factory=dict)
    subject_strategy: Literal["record", "topic_record"] = "record"
    auto_register: bool = True


@dataclass(frozen=True)
class RetryConfig:
    """Retry policy of a queue."""

    max_attempts: int | None = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0


@dataclass(frozen=True)
class DedupConfig:
    """Deduplication store of a queue."""

    kind: Literal["none", "memory", "compacted"] = "none"
    window: float = 7 * 24 * 3600.0
    topic: str | None = None


@dataclass(frozen=True)
class QueueConfig:
    """One queue: its topics, group, consumers and policies."""

    name: str
    topics: tuple[str, ...]
    group_id: str
    consumers: tuple[Callable[[], Any], ...]
    consumer_paths: tuple[str, ...]
    always_ack: bool = False
    retry: RetryConfig = field(default_factory=RetryConfig)
    dead_letter_topic: str = ""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    concurrency: int = 1
    ordering: Literal["partition", "key", "none"] = "partition"
    max_in_flight: int | None = None

    @property
    def dedup_topic(self) -> str:
        """The dedup topic: configured, else ``<group>.dedup``."""
        return self.dedup.topic or f"{self.group_id}.dedup"


@dataclass(frozen=True)
class RuntimeConfig:
    """Process-level settings."""

    metrics_port: int = 9100
    metrics_host: str = "0.0.0.0"  # noqa: S104 - containers expose it; set 127.0.0.1 locally
    shutdown_timeout: float = 30.0
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"


@dataclass(frozen=True)
class ServiceConfig:
    """The whole configuration."""

    kafka: KafkaConfig
    queues: Mapping[str, QueueConfig]
    messages: Mapping[type, str]
    registry: RegistryConfig | None = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    source: str = "<config>"
