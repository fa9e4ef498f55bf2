"""``topics create``, ``publish``, ``dlq inspect`` and ``dlq replay`` against the real broker.

Each test writes its own YAML configuration with unique topic and queue names and runs
``python -m service ...`` as a subprocess, as an operator would.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from examples.payment_service import messages as payment_messages
from service import Consumer, DeadLetterReason, Message, SerializationError
from service.cli.dlq import parse_since
from service.cli.publish import message_from_json
from tests.kafka_helpers import kafka_backend, read_topic, unique

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CONSUMER = "tests.integration.test_cli_ops:make_consumer"
_OVERRIDES = ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "SERVICE_CONFIG")


def make_consumer() -> Consumer:
    """The consumer factory the configurations name (never called by these commands)."""
    return Consumer(on_message=lambda message: None)


def cli(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    options = ["-c", str(config)] if config is not None else []
    return subprocess.run(
        [sys.executable, "-m", "service", *args, *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in _OVERRIDES},
    )


def write_config(
    tmp_path: Path, bootstrap: str, queues: dict[str, dict[str, Any]], **kafka: Any
) -> Path:
    for queue in queues.values():
        queue.setdefault("consumers", [CONSUMER])
    document = {
        "kafka": {"bootstrap_servers": bootstrap, "partitions": 2, "startup_timeout": 15, **kafka},
        "messages": {"tests.payments:DoPayment": "json"},
        "queues": queues,
    }
    path = tmp_path / f"{uuid.uuid4().hex}.yaml"
    path.write_text(json.dumps(document), encoding="utf-8")  # JSON is YAML
    return path


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in result.stdout.splitlines())


def end_offsets(bootstrap: str, topic: str) -> list[int]:
    consumer = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": unique("offsets")})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in sorted(partitions)
        ]
    finally:
        consumer.close()


def routing(message_id: str) -> tuple[tuple[str, bytes | None], ...]:
    return (
        ("trace", b"t-" + message_id.encode()),
        ("serializer_id", b"1"),
        ("manifest", b"DoPayment"),
        ("message_id", message_id.encode()),
    )


def dead_letter_some(
    bootstrap: str, queue: str, topic: str, ids: list[str], create_original: bool = True
) -> None:
    """Write one dead letter per id to ``<queue>.dlq``, as the dispatcher would."""
    backend = kafka_backend(bootstrap)
    backend.create_topics({f"{queue}.dlq": 2, **({topic: 2} if create_original else {})})
    reason = DeadLetterReason("ValueError", "amount must be positive " + "x" * 300, 5, ("c",))
    for offset, message_id in enumerate(ids):
        original = Message(
            topic,
            json.dumps({"order_id": message_id, "amount": -1, "card": "SECRET-PAYLOAD"}).encode(),
            routing(message_id),
            key=f"key-{message_id}".encode(),
            partition=1,
            offset=offset,
        )
        backend.publish(
            f"{queue}.dlq", original.value, key=original.key, headers=reason.headers_for(original)
        )
    backend.flush()


# -- topics create ------------------------------------------------------------------------
def test_topics_create_creates_then_reports_exists(kafka_bootstrap: str, tmp_path: Path) -> None:
    queue, topic, dedup = unique("q"), unique("orders"), unique("dedup")
    config = write_config(
        tmp_path,
        kafka_bootstrap,
        {
            queue: {
                "topics": [topic],
                "dedup": {"kind": "compacted", "window": "1h", "topic": dedup},
            },
            unique("other"): {"pattern": "^never-.*"},
        },
    )
    first = cli(config, "topics", "create", "--queue", queue)
    assert first.returncode == 0, first.stderr
    assert lines_of(first) == {topic: "created", f"{queue}.dlq": "created", dedup: "created"}
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert len(admin.list_topics(timeout=10).topics[topic].partitions) == 2
    resource = ConfigResource("topic", dedup)
    entries = admin.describe_configs([resource])[resource].result(timeout=10)
    assert entries["cleanup.policy"].value == "compact,delete"
    assert entries["retention.ms"].value == "3600000"

    again = cli(config, "topics", "create")  # every queue: the pattern is skipped with a note
    assert again.returncode == 0, again.stderr
    states = lines_of(again)
    assert states.pop("^never-.*").startswith("skipped")
    assert states[topic] == states[f"{queue}.dlq"] == states[dedup] == "exists"


def test_topics_create_reports_how_an_existing_topic_differs(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, topic, dedup = unique("q"), unique("orders"), unique("dedup")
    backend = kafka_backend(kafka_bootstrap)
    backend.create_topics({topic: 1})
    backend.create_topics({dedup: 2}, config={"cleanup.policy": "delete"})
    config = write_config(
        tmp_path,
        kafka_bootstrap,
        {queue: {"topics": [topic], "dedup": {"kind": "compacted", "window": 60, "topic": dedup}}},
    )
    result = cli(config, "topics", "create")
    assert result.returncode == 0, result.stderr
    states = lines_of(result)
    assert states[topic] == "exists, differs: partitions 1 (want 2)"
    assert states[dedup].startswith("exists, differs: cleanup.policy delete (want compact,delete)")
    assert "retention.ms" in states[dedup] and "(want 60000)" in states[dedup]
    assert states[f"{queue}.dlq"] == "created"


# -- publish ------------------------------------------------------------------------------
def test_publish_then_read_back(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = unique("orders")
    kafka_backend(kafka_bootstrap).create_topics({topic: 1})
    config = write_config(tmp_path, kafka_bootstrap, {unique("q"): {"topics": [topic]}})
    args = ("publish", "--topic", topic, "--manifest", "DoPayment")
    typed = cli(
        config,
        *args,
        "--json",
        '{"order_id": "o-1", "amount": 12}',
        "--key",
        "k-1",
        "--message-id",
        "m-1",
    )
    assert typed.returncode == 0, typed.stderr
    assert typed.stdout.strip() == f"published m-1 to {topic}"
    raw = cli(config, "publish", "--topic", topic, "--manifest", "dict", "--json", '{"a": 1.5}')
    assert raw.returncode == 0, raw.stderr
    generated_id = raw.stdout.split()[1]

    first, second = read_topic(kafka_bootstrap, topic, 2)
    assert json.loads(first.value or b"") == {"order_id": "o-1", "amount": 12}
    assert first.key == b"k-1"
    assert first.header("serializer_id") == b"1"
    assert first.header("manifest") == b"DoPayment"
    assert first.header("message_id") == b"m-1"
    assert json.loads(second.value or b"") == {"a": 1.5}
    assert second.header("manifest") == b"dict"
    assert second.header("message_id") == generated_id.encode()


def test_publish_refuses_json_that_does_not_fit_with_exit_2(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique("orders")
    config = write_config(tmp_path, kafka_bootstrap, {unique("q"): {"topics": [topic]}})
    args = ("publish", "--topic", topic, "--manifest")
    wrong = cli(config, *args, "DoPayment", "--json", '{"order_id": "o", "amount": "twelve"}')
    assert wrong.returncode == 2
    assert "$.amount: expected int, got str" in wrong.stderr
    missing = cli(config, *args, "DoPayment", "--json", '{"order_id": "o"}')
    assert missing.returncode == 2 and "$.amount: required field missing" in missing.stderr
    extra = cli(config, *args, "DoPayment", "--json", '{"order_id": "o", "amount": 1, "x": 0}')
    assert extra.returncode == 2 and "$.x: DoPayment has no such field" in extra.stderr
    unknown = cli(config, *args, "Nope", "--json", "{}")
    assert unknown.returncode == 2
    assert "'Nope'" in unknown.stderr and "known: DoPayment, dict" in unknown.stderr
    broken = cli(config, *args, "dict", "--json", "{nope")
    assert broken.returncode == 2 and "not valid JSON" in broken.stderr


def test_message_from_json_builds_nested_dataclasses_and_names_the_failing_field() -> None:
    payload: dict[str, Any] = {
        "payment_id": "0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b",
        "order_id": "6f1c2b8e-3d4a-4f5b-9c7d-1e2f3a4b5c6d",
        "amount": {"amount": 49.97, "currency": "EUR"},
        "method": "CARD",
        "merchant_reference": "INV-1",
        "requested_at": "2024-05-01T12:30:16.005Z",
        "metadata": {"k": "v"},
    }
    built = message_from_json(payment_messages.DoPayment, json.dumps(payload))
    assert built.amount == payment_messages.Money(Decimal("49.97"), "EUR")
    assert built.method is payment_messages.PaymentMethod.CARD
    assert built.requested_at == datetime.datetime(
        2024, 5, 1, 12, 30, 16, 5000, tzinfo=datetime.UTC
    )
    assert built.payment_id == uuid.UUID("0b9e8d7c-6a5f-4e3d-8c2b-1a0f9e8d7c6b")
    assert built.note is None

    def refused(cls: type, **changes: Any) -> str:
        with pytest.raises(SerializationError) as caught:
            message_from_json(cls, json.dumps({**payload, **changes}))
        return str(caught.value)

    money = {"amount": 1, "currency": 2}
    assert "$.amount.currency: expected str, got int" in refused(
        payment_messages.DoPayment, amount=money
    )
    assert "$.method: invalid enum value 'CHEQUE'" in refused(
        payment_messages.DoPayment, method="CHEQUE"
    )
    order = {
        "order_id": payload["order_id"],
        "customer": {
            "customer_id": payload["order_id"],
            "name": "Ada",
            "billing_address": {"line1": "1", "city": "L", "postal_code": "1", "country": "GB"},
        },
        "items": [
            {
                "sku": "a",
                "description": "d",
                "quantity": 1,
                "unit_price": {"amount": "1.00", "currency": "EUR"},
            },
            {"sku": "b", "description": "d", "quantity": 1},
        ],
        "total": {"amount": 1, "currency": "EUR"},
        "created_at": "2024-05-01T12:30:15Z",
        "metadata": {},
    }
    with pytest.raises(SerializationError, match=r"\$\.items\[1\]\.unit_price: required field"):
        message_from_json(payment_messages.OrderResponse, json.dumps(order))


# -- dlq ----------------------------------------------------------------------------------
def test_dlq_inspect_lists_dead_letters_without_payloads(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, topic = unique("q"), unique("orders")
    ids = [f"id-{n}" for n in range(3)]
    dead_letter_some(kafka_bootstrap, queue, topic, ids)
    config = write_config(tmp_path, kafka_bootstrap, {queue: {"topics": [topic]}})

    result = cli(config, "dlq", "inspect", "--queue", queue, "--since", "1h")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        _, when, original, attempts, error_class, error_text, _ = line.split("\t")
        assert datetime.datetime.fromisoformat(when) > datetime.datetime.now(datetime.UTC) - (
            datetime.timedelta(minutes=5)
        )
        assert original.startswith(f"{topic}[1]@") and attempts == "attempts 5"
        assert error_class == "ValueError" and len(error_text) == 200
        assert error_text.startswith("amount must be positive") and error_text.endswith("...")
    assert sorted(line.rsplit("\tmessage_id ", 1)[1] for line in lines) == ids
    assert "SECRET-PAYLOAD" not in result.stdout + result.stderr

    limited = cli(config, "dlq", "inspect", "--queue", queue, "--limit", "2")
    assert limited.returncode == 0 and len(limited.stdout.splitlines()) == 2
    future = cli(config, "dlq", "inspect", "--queue", queue, "--since", "2999-01-01T00:00:00")
    assert future.returncode == 0 and future.stdout == ""
    assert cli(config, "dlq", "inspect", "--queue", queue, "--since", "soon").returncode == 2
    assert cli(config, "dlq", "inspect", "--queue", "nope").returncode == 2


def test_dlq_replay_dry_run_then_replay_to_the_original_topic(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, topic = unique("q"), unique("orders")
    ids = [f"id-{n}" for n in range(4)]
    dead_letter_some(kafka_bootstrap, queue, topic, ids)
    config = write_config(tmp_path, kafka_bootstrap, {queue: {"topics": [topic]}})

    dry = cli(config, "dlq", "replay", "--queue", queue, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count(f" -> {topic}\tmessage_id id-") == 4
    assert "nothing was produced" in dry.stdout
    assert end_offsets(kafka_bootstrap, topic) == [0, 0]

    replay = cli(config, "dlq", "replay", "--queue", queue, "--message-id", "id-1", "id-3")
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.strip() == f"replayed 2 dead letter(s) to {topic}"
    assert "\r" not in replay.stderr and "\x1b" not in replay.stderr  # no bar: not a terminal
    replayed = read_topic(kafka_bootstrap, topic, 2)
    assert sorted(m.header("message_id") or b"" for m in replayed) == [b"id-1", b"id-3"]
    for message in replayed:
        message_id = (message.header("message_id") or b"").decode()
        assert message.headers == routing(message_id)  # original headers, no dlq.*, in order
        assert message.key == f"key-{message_id}".encode()
        assert json.loads(message.value or b"")["order_id"] == message_id
    assert sum(end_offsets(kafka_bootstrap, topic)) == 2


def test_dlq_replay_exits_1_when_the_broker_refuses_or_the_topic_is_missing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue, small, missing = unique("q"), unique("small"), unique("missing")
    kafka_backend(kafka_bootstrap).create_topics({small: 1}, config={"max.message.bytes": "100"})
    dead_letter_some(kafka_bootstrap, queue, small, ["too-big"])
    dead_letter_some(kafka_bootstrap, queue, missing, ["lost"], create_original=False)
    config = write_config(tmp_path, kafka_bootstrap, {queue: {"topics": [small]}})

    gone = cli(config, "dlq", "replay", "--queue", queue)
    assert gone.returncode == 1
    assert f"original topic(s) {missing} do not exist" in gone.stderr
    assert "Nothing was replayed" in gone.stderr

    refused = cli(config, "dlq", "replay", "--queue", queue, "--message-id", "too-big")
    assert refused.returncode == 1, refused.stderr
    assert f" -> {small}\tmessage_id too-big: MSG_SIZE_TOO_LARGE" in refused.stderr
    assert "1 of 1 record(s) were not replayed" in refused.stderr


def test_parse_since_reads_durations_and_iso_8601() -> None:
    now = 1_700_000_000.0
    assert parse_since("1h", now) == int((now - 3600) * 1000)
    assert parse_since("90s", now) == int((now - 90) * 1000)
    assert parse_since("2024-05-01T00:00:00Z") == parse_since("2024-05-01T00:00:00")


# -- usage --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [
        (),
        ("topics",),
        ("topics", "create"),
        ("publish",),
        ("dlq",),
        ("dlq", "inspect"),
        ("dlq", "replay"),
    ],
)
def test_help_exits_0(command: tuple[str, ...]) -> None:
    result = cli(None, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: kafka-dispatch")


def test_replay_help_says_replaying_twice_is_safe_with_dedup() -> None:
    result = cli(None, "dlq", "replay", "--help")
    assert "Replaying twice is safe with dedup" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    "command",
    [
        ("topics", "create"),
        ("publish", "--topic", "t", "--manifest", "dict", "--json", "{}"),
        ("dlq", "inspect", "--queue", "q"),
        ("dlq", "replay", "--queue", "q"),
    ],
)
def test_a_configuration_error_exits_2(command: tuple[str, ...], tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:9', partitons: 3}\n"
        f"queues: {{q: {{consumers: ['{CONSUMER}']}}}}\n",
        encoding="utf-8",
    )
    result = cli(config, *command)
    assert result.returncode == 2
    assert "kafka.partitons: unknown key" in result.stderr
