"""Loading and validating the YAML configuration.

Every error is a :class:`~service.errors.ConfigurationError` that names where and what, e.g.
``queues.payments.consumers[1]: cannot import 'examples.payment_service:Nope'``. Unknown keys
are errors. Values may be ``${env:NAME}`` or ``${file:/path}``; keys that hold secrets
(``*password*``, ``*secret*``, ``ssl.key.pem``...) become :class:`Secret`. Environment
overrides: ``KAFKA_BOOTSTRAP_SERVERS``, ``SCHEMA_REGISTRY_URL``, ``KAFKA_SASL_USERNAME``,
``KAFKA_SASL_PASSWORD``, ``SCHEMA_REGISTRY_USERNAME``, ``SCHEMA_REGISTRY_PASSWORD``.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from service.backends.base import default_dead_letter_topic
from service.config.model import (
    DedupConfig,
    KafkaConfig,
    QueueConfig,
    RegistryConfig,
    RetryConfig,
    RuntimeConfig,
    Secret,
    ServiceConfig,
)
from service.errors import ConfigurationError

__all__ = ["import_path", "load_config", "parse_config"]

_REFERENCE = re.compile(r"^\$\{(env|file):([^}]+)\}$")
_SECRET_KEY = re.compile(r"password|secret|ssl\.key\.pem|sasl\.oauthbearer", re.IGNORECASE)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read and validate the YAML file at ``path``.

    Raises:
        ConfigurationError: the file cannot be read or parsed, or a value is wrong.
    """
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(document, os.environ if env is None else env, str(path))


class _Section:
    """A mapping being read, which knows its path and refuses keys nobody read."""

    def __init__(self, data: Any, path: str, env: Mapping[str, str]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigurationError(f"{path or 'top level'}: expected a mapping")
        self.data, self.path, self.env, self.seen = data, path, env, set[str]()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        value = self.data.get(key, default)
        return _resolve(value, self.where(key), self.env, key)

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.raw(key, default)
        if value is None and required:
            raise ConfigurationError(f"{self.where(key)}: required")
        if value is not None and not isinstance(value, str | Secret):
            raise ConfigurationError(f"{self.where(key)}: expected text, got {value!r}")
        return value.reveal() if isinstance(value, Secret) else value

    def number(self, key: str, default: float, minimum: float = 0) -> float:
        value = self.raw(key, default)
        if isinstance(value, str) and (match := _DURATION.match(value.strip())):
            value = float(match[1]) * _UNITS[match[2]]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ConfigurationError(
                f"{self.where(key)}: expected a number >= {minimum} (durations like 30s, 7d), "
                f"got {value!r}"
            )
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigurationError(f"{self.where(key)}: expected true or false, got {value!r}")
        return value

    def section(self, key: str) -> _Section:
        self.seen.add(key)
        return _Section(self.data.get(key), self.where(key), self.env)

    def settings(self, key: str) -> dict[str, Any]:
        """A free-form librdkafka mapping: keys pass through, references resolve."""
        inner = self.section(key)
        return {k: inner.raw(k) for k in inner.data}

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise ConfigurationError(f"{self.where(unknown[0])}: unknown key (known: {known})")


def _resolve(value: Any, where: str, env: Mapping[str, str], key: str) -> Any:
    if isinstance(value, str) and (match := _REFERENCE.match(value.strip())):
        kind, name = match[1], match[2].strip()
        if kind == "env":
            if name not in env:
                raise ConfigurationError(f"{where}: environment variable {name} is not set")
            value = env[name]
        else:
            try:
                value = Path(name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigurationError(f"{where}: cannot read {name}: {exc.strerror}") from exc
    if isinstance(value, str) and _SECRET_KEY.search(key):
        return Secret(value)
    return value


def import_path(path: Any, where: str) -> Any:
    """The object named by ``module:attr``.

    Raises:
        ConfigurationError: the text is not ``module:attr`` or cannot be imported.
    """
    if not isinstance(path, str) or path.count(":") != 1:
        raise ConfigurationError(f"{where}: expected 'module:attr', got {path!r}")
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"{where}: cannot import {path!r}: {exc}") from exc


def parse_config(document: Any, env: Mapping[str, str], source: str = "<config>") -> ServiceConfig:
    """Validate a parsed YAML document (see :func:`load_config`)."""
    top = _Section(document, "", env)
    kafka = _kafka(top.section("kafka"), env)
    registry = _registry(top.section("schema_registry"), env)
    messages = _messages(top.section("messages"), registry)
    runtime = _runtime(top.section("service"))
    queues_section = top.section("queues")
    if not queues_section.data:
        raise ConfigurationError("queues: at least one queue is required")
    queues = {name: _queue(name, queues_section.section(str(name))) for name in queues_section.data}
    queues_section.seen.update(str(n) for n in queues_section.data)
    top.done()
    return ServiceConfig(kafka, queues, messages, registry, runtime, source)


def _kafka(section: _Section, env: Mapping[str, str]) -> KafkaConfig:
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or section.text("bootstrap_servers")
    section.seen.add("bootstrap_servers")
    if not bootstrap:
        raise ConfigurationError(
            "kafka.bootstrap_servers: required (or set KAFKA_BOOTSTRAP_SERVERS)"
        )
    client = section.settings("client")
    if env.get("KAFKA_SASL_USERNAME"):
        client["sasl.username"] = env["KAFKA_SASL_USERNAME"]
    if env.get("KAFKA_SASL_PASSWORD"):
        client["sasl.password"] = Secret(env["KAFKA_SASL_PASSWORD"])
    config = KafkaConfig(
        bootstrap,
        client,
        section.settings("consumer"),
        section.settings("producer"),
        int(section.number("partitions", 1, minimum=1)),
        int(section.number("replication_factor", 1, minimum=1)),
        section.number("startup_timeout", 30.0, minimum=0.1),
    )
    section.done()
    return config


def _registry(section: _Section, env: Mapping[str, str]) -> RegistryConfig | None:
    url = env.get("SCHEMA_REGISTRY_URL") or section.text("url")
    section.seen.add("url")
    if not url and not section.data:
        return None
    if not url:
        raise ConfigurationError("schema_registry.url: required (or set SCHEMA_REGISTRY_URL)")
    username = env.get("SCHEMA_REGISTRY_USERNAME") or section.text("username")
    password = section.raw("password")
    if env.get("SCHEMA_REGISTRY_PASSWORD"):
        password = Secret(env["SCHEMA_REGISTRY_PASSWORD"])
    strategy = section.text("subject_strategy", "record")
    if strategy not in ("record", "topic_record"):
        raise ConfigurationError(
            f"schema_registry.subject_strategy: 'record' or 'topic_record', not {strategy!r}"
        )
    config = RegistryConfig(
        url,
        section.text("schemas", "schemas") or "schemas",
        username,
        password if isinstance(password, Secret) or password is None else Secret(str(password)),
        section.settings("ssl"),
        strategy,  # type: ignore[arg-type]
        section.flag("auto_register", True),
    )
    section.done()
    return config


def _messages(section: _Section, registry: RegistryConfig | None) -> dict[type, str]:
    bound: dict[type, str] = {}
    for path in list(section.data):
        where = section.where(path)
        serializer = section.text(path)
        if serializer not in ("avro", "json"):
            raise ConfigurationError(f"{where}: serializer must be 'avro' or 'json'")
        if serializer == "avro" and registry is None:
            raise ConfigurationError(f"{where}: Avro needs schema_registry.url")
        cls = import_path(path, where)
        if not isinstance(cls, type):
            raise ConfigurationError(f"{where}: {path!r} is not a class")
        bound[cls] = serializer
    section.done()
    return bound


def _runtime(section: _Section) -> RuntimeConfig:
    log_format = section.text("log_format", "text")
    if log_format not in ("text", "json"):
        raise ConfigurationError(f"service.log_format: 'text' or 'json', not {log_format!r}")
    config = RuntimeConfig(
        int(section.number("metrics_port", 9100, minimum=0)),
        section.text("metrics_host", "0.0.0.0") or "0.0.0.0",  # noqa: S104 - see RuntimeConfig
        section.number("shutdown_timeout", 30.0, minimum=0.1),
        log_format,  # type: ignore[arg-type]
        (section.text("log_level", "INFO") or "INFO").upper(),
    )
    section.done()
    return config


def _queue(name: str, section: _Section) -> QueueConfig:
    topics = section.raw("topics")
    pattern = section.text("pattern")
    if topics is None:
        topics = [pattern] if pattern else [name]
    elif pattern:
        raise ConfigurationError(f"{section.path}: give topics or pattern, not both")
    if isinstance(topics, str):
        topics = [topics]
    if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
        raise ConfigurationError(f"{section.where('topics')}: expected a list of topic names")
    if pattern and not pattern.startswith("^"):
        raise ConfigurationError(f"{section.where('pattern')}: a pattern starts with '^'")
    paths = section.raw("consumers") or []
    if not isinstance(paths, list) or not paths:
        raise ConfigurationError(f"{section.where('consumers')}: expected a non-empty list")
    factories: list[Callable[[], Any]] = []
    for index, path in enumerate(paths):
        target = import_path(path, f"{section.where('consumers')}[{index}]")
        if not callable(target):
            raise ConfigurationError(
                f"{section.where('consumers')}[{index}]: {path!r} is not a class or factory"
            )
        factories.append(target)
    retry_section = section.section("retry")
    attempts = retry_section.raw("max_attempts", 5)
    if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
        raise ConfigurationError(f"{retry_section.where('max_attempts')}: an integer >= 1 or null")
    retry = RetryConfig(
        attempts,
        retry_section.number("backoff_base", 0.5),
        retry_section.number("backoff_max", 30.0),
    )
    if retry.backoff_max < retry.backoff_base:
        raise ConfigurationError(f"{retry_section.path}: backoff_max < backoff_base")
    retry_section.done()
    dedup_section = section.section("dedup")
    kind = dedup_section.text("kind", "none")
    if kind not in ("none", "memory", "compacted"):
        raise ConfigurationError(
            f"{dedup_section.where('kind')}: 'none', 'memory' or 'compacted', not {kind!r}"
        )
    dedup = DedupConfig(
        kind,  # type: ignore[arg-type]
        dedup_section.number("window", 7 * 86400.0, minimum=0.001),
        dedup_section.text("topic"),
    )
    dedup_section.done()
    ordering = section.text("ordering", "partition")
    if ordering not in ("partition", "key", "none"):
        raise ConfigurationError(
            f"{section.where('ordering')}: 'partition', 'key' or 'none', not {ordering!r}"
        )
    in_flight = section.raw("max_in_flight")
    if in_flight is not None and (not isinstance(in_flight, int) or in_flight < 1):
        raise ConfigurationError(f"{section.where('max_in_flight')}: an integer >= 1")
    config = QueueConfig(
        name,
        tuple(topics),
        section.text("group_id") or name,
        tuple(factories),
        tuple(paths),
        section.flag("always_ack", False),
        retry,
        section.text("dead_letter_topic") or default_dead_letter_topic(name),
        dedup,
        int(section.number("concurrency", 1, minimum=1)),
        ordering,  # type: ignore[arg-type]
        in_flight,
    )
    section.done()
    return config
