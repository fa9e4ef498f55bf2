"""The consumer settings KafkaBackend.subscribe() passes: the service's fetch defaults, and
the user's ``consumer_config`` (``kafka.consumer``) winning over every one of them."""

from __future__ import annotations

from typing import Any

import pytest

from service.backends.kafka import backend as backend_module
from service.backends.kafka.backend import KafkaBackend

DEFAULTS = {
    "fetch.queue.backoff.ms": 10,
    "queued.min.messages": 20_000,
    "queued.max.messages.kbytes": 16_384,
}


def _config(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> dict[str, Any]:
    captured: dict[str, Any] = {}

    def subscription(backend: Any, queue: str, binding: Any, config: dict[str, Any]) -> Any:
        captured.update(config)
        return object()

    monkeypatch.setattr(backend_module, "KafkaSubscription", subscription)
    kafka = KafkaBackend("127.0.0.1:1", **kwargs)
    monkeypatch.setattr(kafka, "_check_dead_letter_room", lambda binding: None)
    kafka.subscribe("orders")
    return captured


def test_subscribe_sets_the_measured_fetch_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(monkeypatch)
    assert {key: config[key] for key in DEFAULTS} == DEFAULTS
    assert config["group.id"] == "orders"


def test_consumer_config_overrides_each_default(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = {
        "fetch.queue.backoff.ms": 1000,
        "queued.min.messages": 100_000,
        "queued.max.messages.kbytes": 65_536,
    }
    config = _config(monkeypatch, consumer_config=mine)
    assert {key: config[key] for key in mine} == mine
