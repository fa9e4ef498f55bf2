"""The dead-letter flood guard on the real broker: `run` halts, says why, and a restart resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from service import Consumer
from tests.integration.test_service_run import Service, amounts, publish, wait_for
from tests.kafka_helpers import committed, kafka_backend, read_topic, unique

pytestmark = pytest.mark.integration
TOTAL = 200


class BadDeploy(Consumer):
    """Fails every message while $BROKEN is set; else appends the amount to $LEDGER."""

    def process(self, message: Any, **kwargs: Any) -> None:
        if os.environ.get("BROKEN"):
            raise RuntimeError("a bad deploy")
        with open(os.environ["LEDGER"], "a") as ledger:
            ledger.write(f"{message.amount}\n")


def write_config(path: Path, bootstrap: str, queue: str) -> Path:
    document = {
        "kafka": {"bootstrap_servers": bootstrap, "consumer": {"session.timeout.ms": 6000}},
        "messages": {"tests.payments:DoPayment": "json"},
        "queues": {
            queue: {
                "consumers": ["tests.integration.test_dead_letter_limit_kafka:BadDeploy"],
                "retry": {"max_attempts": 1},
                "dead_letter_limit": {"ratio": 0.5, "window": "60s", "min_messages": 20},
            }
        },
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "20s"},
    }
    path.write_text(json.dumps(document))
    return path


def test_a_dead_letter_flood_halts_the_queue_until_a_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger = unique("flood"), tmp_path / "ledger"
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_queue(queue)
    publish(backend, queue, TOTAL)
    config = write_config(tmp_path / "c.yaml", kafka_bootstrap, queue)
    os.environ["BROKEN"] = "1"
    try:
        service = Service(config, ledger)
    finally:
        del os.environ["BROKEN"]
    try:
        wait_for(lambda: service.metric("kafka_dispatch_queue_halted", queue=queue) == 1, 30)
        status, body = service.get("/readyz")
        assert status == 503 and "dead-letter limit exceeded" in body, body
        assert service.get("/healthz")[0] == 200  # alive and polling: not a restart loop
        written = len(read_topic(kafka_bootstrap, f"{queue}.dlq", TOTAL, timeout=3))
        assert 20 <= written < 60, written  # halted soon after the limit, not at full speed
        position = committed(kafka_bootstrap, queue, queue)[0]
        assert position <= written  # nothing committed past messages not dead-lettered
    finally:
        assert service.stop() == 0, "".join(service.lines[-20:])
    assert amounts(ledger) == []

    fixed = Service(config, ledger)  # the fix is deployed: a restart resumes
    try:
        wait_for(lambda: len(set(amounts(ledger))) == TOTAL - written, 60)
        assert fixed.get("/readyz")[0] == 200
    finally:
        assert fixed.stop() == 0
    assert committed(kafka_bootstrap, queue, queue) == [TOTAL]
    backend.close()
