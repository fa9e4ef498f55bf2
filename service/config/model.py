"""The configuration's model: the YAML document as pydantic validates it, and the service's view.

Two layers:

* the **document** (:class:`ConfigDocument` and its sections) mirrors the YAML file key for
  key; pydantic validates it, reporting every error with its path, and its JSON Schema is
  what ``kafka-dispatch config schema`` prints. Unknown keys are refused everywhere except in
  the librdkafka and TLS pass-through mappings (those are checked by the client library);
* the **service's view** (:class:`ServiceConfig`, :class:`QueueConfig`) is built from a valid
  document by :mod:`service.config.loader`, with every default that depends on a queue's
  name filled in and consumer factories and message classes imported. The sections that need
  no such work (:class:`KafkaConfig`, :class:`RegistryConfig`, :class:`RetryConfig`,
  :class:`DedupConfig`, :class:`RuntimeConfig`) are shared by both layers.

Everything is frozen. Secrets (passwords, SASL/SSL key material) are held as
:class:`~service.redaction.Secret`, whose ``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.config.types import (
    Count,
    Duration,
    FactoryRef,
    Imported,
    MessageClassRef,
    OptionalCount,
    Port,
    PositiveDuration,
    Ratio,
    SecretText,
    Setting,
)
from service.redaction import Secret, mask_url, reveal

__all__ = [
    "ConfigDocument",
    "DeadLetterLimitConfig",
    "DedupConfig",
    "KafkaConfig",
    "QueueConfig",
    "QueueSection",
    "RegistryConfig",
    "RetryConfig",
    "RuntimeConfig",
    "Secret",
    "ServiceConfig",
    "TransactionConfig",
    "reveal",
]

Name = Annotated[str, Field(min_length=1)]
LogLevel = Annotated[
    Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"],
    BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v),
]


class _Section(BaseModel):
    """A mapping of the document: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        # `kafka:` with nothing under it is YAML's null: read it as an empty mapping
        return {} if data is None else data


class KafkaConfig(_Section):
    """Broker connection and librdkafka pass-through settings (``kafka:``)."""

    bootstrap_servers: Name = Field(
        description="host:port[,host:port...]; $KAFKA_BOOTSTRAP_SERVERS overrides it"
    )
    client: dict[str, Setting] = Field(
        default_factory=dict, description="librdkafka settings of every client (SASL, TLS...)"
    )
    consumer: dict[str, Setting] = Field(
        default_factory=dict, description="librdkafka settings of the consumers only"
    )
    producer: dict[str, Setting] = Field(
        default_factory=dict, description="librdkafka settings of the producers only"
    )
    partitions: Count = Field(default=1, description="partitions of the topics the service creates")
    replication_factor: Count = Field(default=1, description="replication factor of those topics")
    startup_timeout: PositiveDuration = Field(
        default=10.0, description="how long to try reaching the brokers at start-up"
    )


_REGISTRY_TLS_KEYS = (
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
)


def _registry_tls_key(key: str) -> str:
    if key not in _REGISTRY_TLS_KEYS:
        raise PydanticCustomError(
            "registry_tls_key", "expected one of {keys}", {"keys": ", ".join(_REGISTRY_TLS_KEYS)}
        )
    return key


SubjectStrategy = Literal["topic", "record", "topic_record"]
"""How the registry subject of a published record is named (``docs/serializers.md``)."""

RegistryTlsKey = Annotated[
    str, AfterValidator(_registry_tls_key), WithJsonSchema({"enum": list(_REGISTRY_TLS_KEYS)})
]
"""The TLS settings the registry client takes."""


class RegistryConfig(_Section):
    """The schema registry and the local schemas (``schema_registry:``)."""

    url: Name = Field(description="the registry's base URL; $SCHEMA_REGISTRY_URL overrides it")
    schemas: str = Field(default="schemas", description="the directory of .avsc files")
    username: str | None = Field(default=None, description="basic auth user")
    password: SecretText | None = Field(default=None, description="basic auth password")
    ssl: dict[RegistryTlsKey, Setting] = Field(
        default_factory=dict, description="TLS: CA, client certificate, key and its password"
    )
    subject_strategy: SubjectStrategy = Field(
        default="record",
        description="registry subjects: record (<record>), topic (<topic>-value, Confluent's "
        "default) or topic_record (<topic>-<record>); see docs/serializers.md",
    )
    subject_strategies: dict[MessageClassRef, SubjectStrategy] = Field(
        default_factory=dict,
        description="module:Class -> the subject strategy of that message type (wins over "
        "the queue's and the default)",
    )
    auto_register: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.username is not None and urlsplit(self.url).username is not None:
            raise PydanticCustomError(
                "registry_auth", "credentials in the url and in username: give them once"
            )
        if {"ssl.key.location", "ssl.key.password"} & set(self.ssl) and (
            "ssl.certificate.location" not in self.ssl
        ):
            raise PydanticCustomError(
                "registry_tls",
                "ssl.key.location and ssl.key.password need ssl.certificate.location",
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The fields, with the URL's user-info masked (a repr may end up in a log)."""
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "url" else value


class RetryConfig(_Section):
    """Retry policy of a queue."""

    max_attempts: OptionalCount = Field(default=5, description="null: retry for ever")
    backoff_base: Duration = 0.5
    backoff_max: Duration = 30.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.backoff_max < self.backoff_base:
            raise PydanticCustomError("backoff", "backoff_max is below backoff_base")
        return self


class TransactionConfig(_Section):
    """The transactions of an exactly-once queue (``processing: exactly_once``)."""

    interval: PositiveDuration = Field(
        default=0.1, description="seconds between transaction commits (the added latency)"
    )
    max_messages: Count = Field(
        default=1000, description="...or commit after this many done messages"
    )
    transactional_id: str | None = Field(
        default=None,
        description="the member's transactional id, unique among live members and stable "
        "across its restarts; default <group>.<queue>.<hostname>.<process index>",
    )
    timeout: PositiveDuration = Field(
        default=30.0, description="seconds each transactional call may take"
    )
    transaction_timeout: PositiveDuration = Field(
        default=60.0,
        description="the broker aborts a transaction left open this long (a crashed "
        "member's); read_committed readers of its outputs wait at most this",
    )


class DedupConfig(_Section):
    """Deduplication store of a queue."""

    kind: Literal["none", "memory", "compacted"] = "none"
    window: PositiveDuration = 7 * 24 * 3600.0
    topic: Name | None = Field(default=None, description="default: <group_id>.dedup")


class DeadLetterLimitConfig(_Section):
    """When a queue dead-letters too much, it stops taking messages until a restart."""

    ratio: Ratio = Field(
        default=0.5, description="the share of messages dead-lettered that trips it"
    )
    window: PositiveDuration = Field(default=60.0, description="over the last window of time")
    min_messages: Count = Field(
        default=100, description="messages settled within the window before the ratio counts"
    )


class HeaderlessConfig(_Section):
    """How to read records without routing headers (written by other producers)."""

    serializer: Literal["json", "avro"] = Field(
        default="json", description="the serializer every such record is decoded with"
    )
    type: MessageClassRef = Field(description="module:Class every such record decodes into")


def _message_id_rule(rule: str) -> str:
    if rule in ("header", "key", "offset") or (rule.startswith("field:") and len(rule) > 6):
        return rule
    raise PydanticCustomError("message_id", "expected header, key, offset or field:<name>")


MessageIdRule = Annotated[
    str,
    AfterValidator(_message_id_rule),
    WithJsonSchema({"type": "string", "pattern": "^(header|key|offset|field:.+)$"}),
]


class RuntimeConfig(_Section):
    """Process-level settings (``service:``)."""

    metrics_port: Port = 9100
    # containers expose it; set 127.0.0.1 to keep it local
    metrics_host: Name = "0.0.0.0"  # noqa: S104
    shutdown_timeout: PositiveDuration = 30.0
    log_format: Literal["text", "json"] = "text"
    log_level: LogLevel = "INFO"


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _anchored(pattern: str) -> str:
    if not pattern.startswith("^"):
        raise PydanticCustomError("pattern", "a pattern starts with '^'")
    return pattern


TopicNames = Annotated[
    list[Name],
    BeforeValidator(_one_or_many),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}},
            ]
        }
    ),
]


class QueueSection(_Section):
    """One queue as written in the document (``queues.<name>:``)."""

    topics: TopicNames | None = Field(
        default=None, description="a topic or a list of topics; default: the queue's name"
    )
    pattern: Annotated[str, AfterValidator(_anchored)] | None = Field(
        default=None, description="a topic regular expression starting with ^ (instead of topics)"
    )
    group_id: Name | None = Field(default=None, description="default: the queue's name")
    consumers: list[FactoryRef] = Field(
        min_length=1, description="module:attr of each consumer class or factory"
    )
    always_ack: bool = False
    processing: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once",
        description="exactly_once: outputs, dead letters, dedup entries and offsets commit "
        "in one Kafka transaction (readers of the outputs use isolation.level=read_committed)",
    )
    transaction: TransactionConfig = Field(default_factory=TransactionConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    dead_letter_topic: Name | None = Field(default=None, description="default: <queue>.dlq")
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    concurrency: Count = 1
    ordering: Literal["partition", "key", "none"] = "partition"
    max_in_flight: OptionalCount = None
    max_in_flight_bytes: OptionalCount = Field(
        default=None, description="keys and values taken and not settled, at most (32 MiB)"
    )
    subject_strategy: SubjectStrategy | None = Field(
        default=None,
        description="the subject strategy of Avro records published to this queue's topics "
        "(default: schema_registry.subject_strategy)",
    )
    dead_letter_limit: DeadLetterLimitConfig | None = Field(
        default=None, description="stop the queue when it dead-letters too much; off when absent"
    )
    headerless: HeaderlessConfig | None = Field(
        default=None,
        description="records without routing headers: one serializer and type for all of them",
    )
    message_id: MessageIdRule = Field(
        default="header",
        description="the deduplication id: header (else <topic>/<partition>/<offset>), key, "
        "offset, or field:<name> of the decoded payload",
    )
    type_ids: dict[str, MessageClassRef] = Field(
        default_factory=dict,
        description="Spring __TypeId__ header values -> module:Class",
        json_schema_extra={
            "additionalProperties": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"}
        },
    )
    key: Literal["bytes", "string", "json", "avro"] = Field(
        default="bytes", description="how record keys are decoded for handlers (record.key)"
    )

    @model_validator(mode="after")
    def _topics_or_pattern(self) -> Self:
        if self.topics is not None and self.pattern is not None:
            raise PydanticCustomError("topics_or_pattern", "give topics or pattern, not both")
        if self.processing == "exactly_once" and self.dedup.kind == "memory":
            raise PydanticCustomError(
                "exactly_once_dedup",
                "processing exactly_once needs dedup kind compacted or none: memory entries "
                "would outlive an aborted transaction",
            )
        return self


class ConfigDocument(_Section):
    """The configuration file, key for key."""

    model_config = ConfigDict(title="kafka-dispatch configuration")

    kafka: KafkaConfig
    schema_registry: RegistryConfig | None = None
    messages: dict[MessageClassRef, Literal["avro", "json"]] = Field(
        default_factory=dict,
        description="module:Class of each message type: its serializer",
        json_schema_extra={"additionalProperties": False},
    )
    service: RuntimeConfig = Field(default_factory=RuntimeConfig)
    queues: dict[Name, QueueSection] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _avro_needs_a_registry(
        cls, messages: dict[Imported, str], info: ValidationInfo
    ) -> dict[Imported, str]:
        # schema_registry is validated first; absent from info.data when it was invalid
        avro = [ref.path for ref, serializer in messages.items() if serializer == "avro"]
        if avro and "schema_registry" in info.data and info.data["schema_registry"] is None:
            raise PydanticCustomError(
                "avro_registry",
                "{paths}: avro needs schema_registry.url",
                {"paths": ", ".join(repr(path) for path in avro)},
            )
        return messages


# -- the service's view -----------------------------------------------------------------
@dataclass(frozen=True)
class QueueConfig:
    """One queue: its topics, group, consumers and policies, every default filled in."""

    name: str
    topics: tuple[str, ...]
    group_id: str
    consumers: tuple[Callable[[], Any], ...]
    consumer_paths: tuple[str, ...]
    always_ack: bool = False
    processing: Literal["at_least_once", "exactly_once"] = "at_least_once"
    transaction: TransactionConfig = field(default_factory=TransactionConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    dead_letter_topic: str = ""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    concurrency: int = 1
    ordering: Literal["partition", "key", "none"] = "partition"
    max_in_flight: int | None = None
    max_in_flight_bytes: int | None = None
    subject_strategy: SubjectStrategy | None = None
    dead_letter_limit: DeadLetterLimitConfig | None = None
    headerless: tuple[str, type] | None = None
    """(serializer name, class) of records without routing headers."""
    message_id: str = "header"
    type_ids: Mapping[str, type] = field(default_factory=dict)
    key: Literal["bytes", "string", "json", "avro"] = "bytes"

    @property
    def dedup_topic(self) -> str:
        """The dedup topic: configured, else ``<group>.dedup``."""
        return self.dedup.topic or f"{self.group_id}.dedup"


@dataclass(frozen=True)
class ServiceConfig:
    """The whole configuration, as the service uses it."""

    kafka: KafkaConfig
    queues: Mapping[str, QueueConfig]
    messages: Mapping[type, str]
    registry: RegistryConfig | None = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    source: str = "<config>"
