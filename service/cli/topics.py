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
``dlq``): the ``-c/--config`` option, queue selection, the broker probe and the topic admin
(:class:`~service.backends.kafka.admin.TopicAdmin`, where confluent-kafka is used).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from service.backends.kafka.admin import TopicAdmin, TopicState, WantedTopic
from service.backends.kafka.connection import probe_brokers
from service.config import QueueConfig, ServiceConfig, load_config
from service.config.model import reveal
from service.errors import ConfigurationError

__all__ = [
    "DEFAULT_CONFIG",
    "WantedTopic",
    "add_config_option",
    "admin_client",
    "client_config",
    "existing_topics",
    "load",
    "probe",
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


def client_config(config: ServiceConfig) -> dict[str, Any]:
    """The connection settings every client of ``config`` needs: brokers, SASL, SSL..."""
    return {"bootstrap.servers": config.kafka.bootstrap_servers, **reveal(config.kafka.client)}


def probe(config: ServiceConfig) -> None:
    """Return once the brokers answer, within ``kafka.startup_timeout``.

    Raises:
        BrokerUnavailableError: they cannot be reached; the text names them and the cause.
        AuthenticationError: they refused the credentials.
    """
    probe_brokers(client_config(config), config.kafka.startup_timeout)


def admin_client(config: ServiceConfig) -> TopicAdmin:
    """A topic admin with the configured connection settings, waiting ``startup_timeout``."""
    return TopicAdmin(client_config(config), config.kafka.startup_timeout)


def existing_topics(config: ServiceConfig) -> set[str]:
    """The names of the cluster's topics (those the principal may see).

    Raises:
        BackendError: the brokers did not answer within ``startup_timeout`` or refused.
    """
    return set(admin_client(config).topics())


# -- topics create ------------------------------------------------------------------------
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
    probe(config)
    wanted, patterns = wanted_topics(config, select_queues(config, args.queue))
    for pattern in patterns:
        print(f"{pattern}\tskipped: a pattern; create the topics it should match yourself")
    admin = admin_client(config)
    existing = admin.topics()
    states = admin.create([w for w in wanted if w.name not in existing])
    if any(state == "exists" for state in states.values()):  # created meanwhile by another
        existing = admin.topics()
    present = [w for w in wanted if states.get(w.name, "exists") == "exists"]
    settings = admin.settings([w for w in present if w.config])
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


def _differences(topic: WantedTopic, state: TopicState, settings: Mapping[str, str]) -> list[str]:
    """How an existing topic differs from ``topic``, e.g. ``partitions 3 (want 6)``."""
    differences: list[str] = []
    if state.partitions != topic.partitions:
        differences.append(f"partitions {state.partitions} (want {topic.partitions})")
    replicas = state.replication_factors
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
