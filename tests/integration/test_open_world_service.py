"""``kafka-dispatch run`` on records written by producers that know nothing of this project."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from service import Consumer, Record
from tests.integration.test_service_run import Service
from tests.kafka_helpers import committed, kafka_backend, read_topic, unique

pytestmark = pytest.mark.integration


class RecordLedger(Consumer):
    """Writes one JSON line per message: the message and its record (sync)."""

    def __init__(self) -> None:
        super().__init__()
        self._file = open(os.environ["LEDGER"], "a", buffering=1)  # noqa: SIM115

    def process(self, message: Any, **kwargs: Any) -> None:
        record: Record = kwargs["record"]
        line = {
            "type": type(message).__name__,
            "order_id": message.order_id,
            "amount": message.amount,
            "key": record.key,
            "message_id": record.message_id,
            "offset": record.offset,
        }
        self._file.write(json.dumps(line) + "\n")


class AsyncRecordLedger(RecordLedger):
    """The same, as an ``async def`` handler that really awaits."""

    async def process(self, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0.001)
        super().process(message, **kwargs)


def config(path: Path, bootstrap: str, queue: str, consumer: str, **queue_extra: Any) -> Path:
    document = {
        "kafka": {"bootstrap_servers": bootstrap, "consumer": {"session.timeout.ms": 6000}},
        "queues": {
            queue: {"consumers": [f"tests.integration.test_open_world_service:{consumer}"]}
            | queue_extra
        },
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "20s"},
    }
    path.write_text(json.dumps(document))
    return path


def lines(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines() if line]


def wait_for(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def plain_producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap})


@pytest.mark.parametrize("handler", ["RecordLedger", "AsyncRecordLedger"])
def test_header_less_json_from_a_plain_producer_is_consumed_and_deduplicated_by_key(
    kafka_bootstrap: str, tmp_path: Path, handler: str
) -> None:
    queue, ledger = unique("legacy"), tmp_path / "ledger"
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_queue(queue)
    backend.close()
    producer = plain_producer(kafka_bootstrap)
    for i in range(20):
        value = json.dumps({"order_id": f"o-{i}", "amount": i}).encode()
        producer.produce(queue, value, key=f"pay-{i}".encode())
    producer.produce(queue, json.dumps({"order_id": "o-3", "amount": 3}), key=b"pay-3")  # re-send
    producer.produce(queue, b"not json at all", key=b"pay-bad")
    producer.flush(10)
    service = Service(
        config(
            tmp_path / "c.yaml",
            kafka_bootstrap,
            queue,
            handler,
            headerless={"serializer": "json", "type": "tests.payments:DoPayment"},
            message_id="key",
            key="string",
            dedup={"kind": "compacted", "window": "1h"},
        ),
        ledger,
    )
    try:
        wait_for(lambda: sum(committed(kafka_bootstrap, queue, queue)) == 22, 60)
    finally:
        assert service.stop() == 0, "".join(service.lines[-20:])
    seen = lines(ledger)
    assert sorted(line["amount"] for line in seen) == list(range(20))  # the re-send: a duplicate
    assert {line["type"] for line in seen} == {"DoPayment"}
    assert all(line["key"] == line["message_id"] == f"pay-{line['amount']}" for line in seen)
    [letter] = read_topic(kafka_bootstrap, f"{queue}.dlq", 1)
    assert letter.value == b"not json at all"
    assert dict(letter.headers)["dlq.error_class"] == b"DeserializationError"


def test_spring_type_ids_route_json_records_to_their_classes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, ledger = unique("spring"), tmp_path / "ledger"
    backend = kafka_backend(kafka_bootstrap)
    backend.declare_queue(queue)
    backend.close()
    producer = plain_producer(kafka_bootstrap)
    for i in range(5):
        producer.produce(
            queue,
            json.dumps({"order_id": f"o-{i}", "amount": i}).encode(),
            headers=[("__TypeId__", b"com.acme.payments.DoPayment")],
        )
    producer.produce(queue, b"{}", headers=[("__TypeId__", b"com.acme.Unknown")])
    producer.flush(10)
    service = Service(
        config(
            tmp_path / "c.yaml",
            kafka_bootstrap,
            queue,
            "RecordLedger",
            type_ids={"com.acme.payments.DoPayment": "tests.payments:DoPayment"},
        ),
        ledger,
    )
    try:
        wait_for(lambda: sum(committed(kafka_bootstrap, queue, queue)) == 6, 60)
    finally:
        assert service.stop() == 0, "".join(service.lines[-20:])
    seen = lines(ledger)
    assert sorted(line["amount"] for line in seen) == list(range(5))
    # no message_id header: the offset id, which still suppresses redeliveries of a record
    assert {line["message_id"] for line in seen} == {f"{queue}/0/{i}" for i in range(5)}
    [letter] = read_topic(kafka_bootstrap, f"{queue}.dlq", 1)
    assert b"com.acme.Unknown" in dict(letter.headers)["dlq.error_text"]
