"""``topics create``: create each queue's missing topics and report how the others differ.

For every queue (or the one named by ``--queue``) the wanted topics are its named topics, its
dead-letter topic and, when ``dedup.kind`` is ``compacted``, its dedup topic with
``cleanup.policy=compact,delete`` and ``retention.ms`` = the dedup window. Partitions and
replication factor come from ``kafka.partitions`` and ``kafka.replication_factor``. A topic
that exists is never altered: the command reports, one line per topic, ``created``, ``exists``
or ``exists, differs: ...``. Topic patterns (``^...``) are skipped with a note.

Exit codes: 0 done (even when an existing topic differs), 1 the broker failed or refused a
creation, 2 usage or configuration error.

This module also holds the helpers the operating commands share (``topics``, ``publish``,
``dlq``): the ``-c/--config`` option, queue selection and the admin client.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

# Defined there; confluent_kafka.admin re-exports them without declaring it (mypy --strict).
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from service.backends.kafka.errors import translate
from service.config import QueueConfig, ServiceConfig, load_config
from service.config.model import reveal
from service.errors import BrokerUnavailableError, ConfigurationError

__all__ = [
    "DEFAULT_CONFIG",
    "WantedTopic",
    "add_config_option",
    "admin_client",
    "existing_topics",
    "load",
    "register",
    "select_queues",
    "wanted_topics",
]

EXIT_OK, EXIT_FAILURE = 0, 1
DEFAULT_CONFIG = "service.yaml"
COMPACTED_POLICY = "compact,delete"


# -- shared by the operating commands ---------------------------------------------------
def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config PATH`` (default ``$SERVICE_CONFIG``, else ``service.yaml``)."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=os.environ.get("SERVICE_CONFIG") or DEFAULT_CONFIG,
        help=f"the YAML configuration (default: $SERVICE_CONFIG, else {DEFAULT_CONFIG})",
    )


def load(args: argparse.Namespace) -> ServiceConfig:
    """The configuration named by ``args.config``.

    Raises:
        ConfigurationError: it cannot be read or is invalid.
    """
    return load_config(args.config)


def select_queues(config: ServiceConfig, name: str | None) -> list[QueueConfig]:
    """Every queue of ``config``, or only the one called ``name``.

    Raises:
        ConfigurationError: no queue is called ``name``.
    """
    if name is None:
        return list(config.queues.values())
    queue = config.queues.get(name)
    if queue is None:
        known = ", ".join(sorted(config.queues))
        raise ConfigurationError(f"{config.source}: no queue {name!r} (queues: {known})")
    return [queue]


def admin_client(config: ServiceConfig) -> AdminClient:
    """An admin client with the configured connection settings (SASL, SSL...)."""
    return AdminClient(
        {"bootstrap.servers": config.kafka.bootstrap_servers, **reveal(config.kafka.client)}
    )


def existing_topics(admin: AdminClient, timeout: float) -> Mapping[str, Any]:
    """The cluster's topics, name -> ``TopicMetadata``.

    Raises:
        BackendError: the brokers did not answer within ``timeout`` or refused.
    """
    try:
        topics: Mapping[str, Any] = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise translate(exc, "listing topics") from exc
    return topics


# -- topics create ------------------------------------------------------------------------
@dataclass(frozen=True)
class WantedTopic:
    """A topic as the configuration wants it.

    Attributes:
        name: the topic name.
        partitions: its partition count.
        replication_factor: its replication factor.
        config: topic settings it must have (``cleanup.policy``, ``retention.ms``).
    """

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


def register(commands: Any) -> None:
    """Add ``topics create``."""
    topics = commands.add_parser("topics", help="create the queues' topics")
    actions = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = (
        "Create the missing topics of every queue (named topics, dead-letter topic, compacted "
        "dedup topic) and report per topic: created, exists, or exists, differs: ... "
        "(existing topics are never altered; exit 0 even when one differs, 1 when the broker "
        "fails). Topic patterns are skipped."
    )
    create = actions.add_parser(
        "create", help="create the missing topics and report the others", description=text
    )
    add_config_option(create)
    create.add_argument("--queue", metavar="Q", help="only this queue (default: every queue)")
    create.set_defaults(handler=_create_command)


def wanted_topics(
    config: ServiceConfig, queues: Sequence[QueueConfig]
) -> tuple[list[WantedTopic], list[str]]:
    """The topics ``queues`` need, each once, in order; and the patterns skipped."""
    partitions, replication = config.kafka.partitions, config.kafka.replication_factor
    wanted: dict[str, WantedTopic] = {}
    patterns: list[str] = []
    for queue in queues:
        for topic in queue.topics:
            if topic.startswith("^"):
                patterns.append(topic)
            else:
                wanted.setdefault(topic, WantedTopic(topic, partitions, replication))
        dead_letters = queue.dead_letter_topic
        wanted.setdefault(dead_letters, WantedTopic(dead_letters, partitions, replication))
        if queue.dedup.kind == "compacted":
            settings = {
                "cleanup.policy": COMPACTED_POLICY,
                "retention.ms": str(int(queue.dedup.window * 1000)),
            }
            dedup = queue.dedup_topic
            wanted.setdefault(dedup, WantedTopic(dedup, partitions, replication, settings))
    return list(wanted.values()), patterns


def _create_command(args: argparse.Namespace) -> int:
    config = load(args)
    wanted, patterns = wanted_topics(config, select_queues(config, args.queue))
    for pattern in patterns:
        print(f"{pattern}\tskipped: a pattern; create the topics it should match yourself")
    timeout = config.kafka.startup_timeout
    admin = admin_client(config)
    existing = existing_topics(admin, timeout)
    states = _create_missing(admin, [w for w in wanted if w.name not in existing], timeout)
    if any(state == "exists" for state in states.values()):  # created meanwhile by another
        existing = existing_topics(admin, timeout)
    present = [w for w in wanted if states.get(w.name, "exists") == "exists"]
    settings = _describe(admin, [w for w in present if w.config], timeout)
    failed = False
    for topic in wanted:
        state = states.get(topic.name, "exists")
        if state == "exists":
            differences = _differences(topic, existing[topic.name], settings.get(topic.name, {}))
            if differences:
                state = "exists, differs: " + ", ".join(differences)
        failed |= state.startswith("failed")
        print(f"{topic.name}\t{state}")
    return EXIT_FAILURE if failed else EXIT_OK


def _create_missing(
    admin: AdminClient, missing: Sequence[WantedTopic], timeout: float
) -> dict[str, str]:
    """Create ``missing``; name -> ``created``, ``exists`` (lost a race) or ``failed: ...``."""
    if not missing:
        return {}
    new = [
        NewTopic(t.name, t.partitions, t.replication_factor, config=dict(t.config)) for t in missing
    ]
    futures = admin.create_topics(new, request_timeout=timeout, operation_timeout=timeout)
    states: dict[str, str] = {}
    for name, future in futures.items():
        try:
            future.result(timeout=timeout + 5)
            states[name] = "created"
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                states[name] = "exists"
            else:
                states[name] = f"failed: {translate(exc, 'the broker refused')}"
        except concurrent.futures.TimeoutError:
            states[name] = f"failed: no answer within {timeout}s"
    return states


def _describe(
    admin: AdminClient, topics: Sequence[WantedTopic], timeout: float
) -> dict[str, dict[str, str]]:
    """The current values of the settings each of ``topics`` wants.

    Raises:
        BackendError: the brokers refused or did not answer.
    """
    if not topics:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, t.name) for t in topics]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    found: dict[str, dict[str, str]] = {}
    for topic, resource in zip(topics, resources, strict=True):
        try:
            entries = futures[resource].result(timeout=timeout + 5)
        except KafkaException as exc:
            raise translate(exc, f"describing topic {topic.name!r}") from exc
        except concurrent.futures.TimeoutError as exc:
            raise BrokerUnavailableError(
                f"describing topic {topic.name!r}: no answer within {timeout}s"
            ) from exc
        found[topic.name] = {key: str(entries[key].value) for key in topic.config if key in entries}
    return found


def _differences(topic: WantedTopic, metadata: Any, settings: Mapping[str, str]) -> list[str]:
    """How an existing topic differs from ``topic``, e.g. ``partitions 3 (want 6)``."""
    differences: list[str] = []
    partitions = metadata.partitions
    if len(partitions) != topic.partitions:
        differences.append(f"partitions {len(partitions)} (want {topic.partitions})")
    replicas = {len(p.replicas) for p in partitions.values()}
    if replicas and replicas != {topic.replication_factor}:
        shown = "/".join(str(r) for r in sorted(replicas))
        differences.append(f"replication factor {shown} (want {topic.replication_factor})")
    for key, want in topic.config.items():
        have = settings.get(key)
        if not _same_setting(key, have, want):
            differences.append(f"{key} {have if have is not None else 'unset'} (want {want})")
    return differences


def _same_setting(key: str, have: str | None, want: str) -> bool:
    if have is None:
        return False
    if key == "cleanup.policy":  # a list: "delete,compact" is "compact,delete"
        return {p.strip() for p in have.split(",")} == {p.strip() for p in want.split(",")}
    return have.strip() == want
