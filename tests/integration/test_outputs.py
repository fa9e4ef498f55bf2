"""Outputs inside the guarantee: what a handler publishes is tied to the message it handles."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service import Consumer, MessageDispatcher, Publisher, RetryPolicy
from service.backends.kafka import KafkaBackend
from tests.integration.test_service_run import Service, publish, wait_for
from tests.kafka_helpers import committed, kafka_backend, read_topic, unique
from tests.payments import DoPayment, json_registry

pytestmark = pytest.mark.integration


class Forwarder(Consumer):
    """Publishes one output per input to $OUTPUT_TOPIC (its own backend, $OUTPUT_LINGER_MS)."""

    def __init__(self) -> None:
        super().__init__()
        backend = KafkaBackend(
            os.environ["OUTPUT_BOOTSTRAP"],
            producer_config={"linger.ms": int(os.environ.get("OUTPUT_LINGER_MS", "5"))},
        )
        self._publisher = Publisher(json_registry(), backend)
        self._ledger = os.environ["LEDGER"]

    def process(self, message: Any, **kwargs: Any) -> None:
        self._publisher.publish(
            os.environ["OUTPUT_TOPIC"], message, message_id=f"out-{kwargs['message_id']}"
        )
        with open(self._ledger, "a") as ledger:
            ledger.write(f"{message.amount}\n")


def write_config(path: Path, bootstrap: str, queue: str) -> Path:
    document = {
        "kafka": {"bootstrap_servers": bootstrap, "consumer": {"session.timeout.ms": 6000}},
        "messages": {"tests.payments:DoPayment": "json"},
        "queues": {queue: {"consumers": ["tests.integration.test_outputs:Forwarder"]}},
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "20s"},
    }
    path.write_text(json.dumps(document))
    return path


def test_outputs_unconfirmed_at_a_sigkill_are_not_lost(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger = unique("outputs"), tmp_path / "ledger"
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_queue(queue)
    backend.declare_topic(output)
    publish(backend, queue, 5)
    config = write_config(tmp_path / "c.yaml", kafka_bootstrap, queue)
    os.environ.update(OUTPUT_BOOTSTRAP=kafka_bootstrap, OUTPUT_TOPIC=output)
    try:
        # outputs linger 6 s in the producer: sent, not yet confirmed
        os.environ["OUTPUT_LINGER_MS"] = "6000"
        member = Service(config, ledger)
        wait_for(lambda: ledger.exists() and len(ledger.read_text().split()) == 5, 30)
        time.sleep(2.0)  # past the 1 s commit interval: an unguarded loop commits here
        assert committed(kafka_bootstrap, queue, queue) == [-1001]  # nothing passes them
        member.proc.send_signal(signal.SIGKILL)
        member.proc.wait(10)
        assert member.proc.stderr is not None
        member.proc.stderr.close()
        assert read_topic(kafka_bootstrap, output, 1, timeout=2) == []  # died unconfirmed
        os.environ["OUTPUT_LINGER_MS"] = "5"
        again = Service(config, ledger)  # the inputs come again: their outputs with them
        try:
            wait_for(lambda: committed(kafka_bootstrap, queue, queue) == [5], 30)
        finally:
            assert again.stop() == 0
    finally:
        for name in ("OUTPUT_BOOTSTRAP", "OUTPUT_TOPIC", "OUTPUT_LINGER_MS"):
            os.environ.pop(name, None)
    outputs = read_topic(kafka_bootstrap, output, 5)
    ids = {dict(record.headers)["message_id"] for record in outputs}
    assert len(ids) == 5  # every input has its output
    backend.close()


class Oversized(Consumer):
    def __init__(self, publisher: Publisher, topic: str) -> None:
        super().__init__()
        self._publisher, self._topic = publisher, topic

    def process(self, message: Any, **kwargs: Any) -> None:
        self._publisher.publish(self._topic, DoPayment("x" * 2000, message.amount))


def test_a_refused_output_fails_the_handler_then_dead_letters_naming_it(
    kafka_bootstrap: str,
) -> None:
    queue = unique("refused-out")
    output = f"{queue}.out"
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_queue(queue)
    backend.create_topics({output: 1}, config={"max.message.bytes": "200"})
    publish(backend, queue, 2)
    errors: list[Exception] = []
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=2, backoff_base=0.1, backoff_max=0.1, jitter=0),
    )
    dispatcher.attach_consumer(Oversized(Publisher(json_registry(), backend), output))

    def stop_when_done(error: Exception) -> None:
        errors.append(error)

    loop = threading.Thread(target=dispatcher.consume_loop, args=(queue, stop_when_done))
    loop.start()
    try:
        letters = read_topic(kafka_bootstrap, f"{queue}.dlq", 2, timeout=30)
        wait_for(lambda: committed(kafka_bootstrap, queue, queue) == [2], 15)
    finally:
        dispatcher.stop()
        loop.join(20)
    assert len(letters) == 2
    headers = dict(letters[0].headers)
    text = headers["dlq.error_text"].decode()
    assert output in text and "MSG_SIZE_TOO_LARGE" in text, text
    assert headers["dlq.attempts"] == b"2"
    assert read_topic(kafka_bootstrap, output, 1, timeout=1) == []
    backend.close()
