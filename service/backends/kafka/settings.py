"""Checking librdkafka settings at load time, by asking the client library itself.

The configuration passes ``kafka.client``, ``kafka.consumer`` and ``kafka.producer`` through
to librdkafka, which knows hundreds of properties; rather than copy its list, each setting is
handed to confluent-kafka's own configuration parser, one at a time, followed by a sentinel
property that is sure to be refused. When the parser gets as far as the sentinel, the
setting was accepted; any other refusal is the setting's ("No such configuration property",
"Invalid value", "Expected bool value"...). No client is ever created, so nothing
connects and no thread starts.

Settings are checked one by one so that every bad one is reported, and so that settings
that only make sense together (``security.protocol: SASL_SSL`` with its ``sasl.mechanism``,
certificate files that exist only where the service is deployed) are not judged here: those
are the broker connection's to report at start-up.

A few settings are the service's own (:data:`OWNED`): the service sets them because its
delivery guarantees rest on them, so any other value in the configuration is refused
(:func:`service_owned`), and the backend sets them after the configured settings anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from service.redaction import Secret, is_secret_key, mask_text

__all__ = ["OWNED", "SECTIONS", "refusals", "service_owned"]

SECTIONS: Mapping[str, tuple[str, ...]] = {
    "client": ("consumer", "producer"),
    "consumer": ("consumer",),
    "producer": ("producer",),
}
"""Each settings section and the kinds of client that receive it."""

_OFFSETS = "the service commits by hand only the offsets of messages whose handlers are done"
_ACKS = "a dead letter counts as delivered only once every in-sync replica has it"
OWNED: Mapping[str, Mapping[str, tuple[frozenset[str], str]]] = {
    "consumer": {
        "enable.auto.commit": (frozenset({"false"}), _OFFSETS),
        "auto.commit.enable": (frozenset({"false"}), _OFFSETS),
        "enable.auto.offset.store": (frozenset({"false"}), _OFFSETS),
        "group.id": (frozenset(), "each queue has its own group (queues.<name>.group_id)"),
        "partition.assignment.strategy": (
            frozenset({"cooperative-sticky"}),
            "the service relies on cooperative-sticky rebalancing",
        ),
    },
    "producer": {
        "enable.idempotence": (
            frozenset({"true"}),
            "dead letters need an idempotent producer (no duplicates, in order)",
        ),
        "acks": (frozenset({"all", "-1"}), _ACKS),
        "request.required.acks": (frozenset({"all", "-1"}), _ACKS),
    },
}
"""The settings the service sets itself, by kind of client: the values it sets, and why."""

_SENTINEL = "kafka-dispatch.config.check"
_SENTINEL_REFUSAL = f'No such configuration property: "{_SENTINEL}"'
_CHECK_GROUP = "kafka-dispatch-config-check"
_FACTORIES: Mapping[str, Callable[[dict[str, Any]], Any]] = {
    "consumer": Consumer,
    "producer": Producer,
}


def refusals(section: str, settings: Mapping[str, Any]) -> dict[str, str]:
    """Why librdkafka refuses each refused setting of ``section``.

    Args:
        section: ``client``, ``consumer`` or ``producer`` (see :data:`SECTIONS`); ``client``
            settings go to consumers and producers alike, so both must accept them.
        settings: the section's settings; :class:`~service.redaction.Secret` values are
            revealed to the parser and masked in what is returned.

    Returns:
        The refused keys, each with librdkafka's reason; empty when all are accepted.

    Raises:
        KeyError: ``section`` is not one of :data:`SECTIONS`.
    """
    kinds = SECTIONS[section]
    found: dict[str, str] = {}
    for key, value in settings.items():
        for kind in kinds:
            reason = _refusal(kind, key, value)
            if reason is not None:
                found[key] = reason
                break
    return found


def service_owned(section: str, key: str, value: Any) -> str | None:
    """Why ``key: value`` in ``section`` is refused as the service's own setting, or None.

    A setting of :data:`OWNED` is refused unless its value is the one the service sets
    (``enable.auto.commit: false`` is harmless; ``true`` would commit unfinished work).

    Raises:
        KeyError: ``section`` is not one of :data:`SECTIONS`.
    """
    for kind in SECTIONS[section]:
        if key in OWNED[kind]:
            allowed, why = OWNED[kind][key]
            if str(value).strip().lower() not in allowed:
                return f"set by the service, not configurable: {why}"
    return None


def _refusal(kind: str, key: str, value: Any) -> str | None:
    plain = value.reveal() if isinstance(value, Secret) else value
    properties: dict[str, Any] = {"group.id": _CHECK_GROUP} if kind == "consumer" else {}
    properties[key] = plain
    properties[_SENTINEL] = "refused"  # set last: reaching it means `key` was accepted
    try:
        client = _FACTORIES[kind](properties)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        text = error.str() if isinstance(error, KafkaError) else str(exc)
        if text == _SENTINEL_REFUSAL:
            return None
        return _masked(key, plain, text)
    except (TypeError, ValueError) as exc:  # confluent-kafka's own checks (callbacks...)
        return _masked(key, plain, str(exc))
    _close(client)  # never reached while librdkafka refuses the sentinel; tidy up if it does
    return None


def _masked(key: str, value: Any, text: str) -> str:
    secrets = [str(value)] if is_secret_key(key) and value not in (None, "") else []
    return mask_text(text, secrets)


def _close(client: Any) -> None:
    if isinstance(client, Consumer):
        client.close()
    else:
        client.flush(0)
