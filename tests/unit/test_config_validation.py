"""The configuration's validation: every problem at once, each with its path; secrets hidden."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service import Consumer
from service.backends.memory import InMemoryBackend
from service.config import config_schema, load_config, parse_config
from service.config.model import Secret, reveal
from service.errors import ConfigurationError
from service.wiring import build_dispatcher, build_serializers

ROOT = Path(__file__).resolve().parents[2]
CONSUMER = "tests.payments:json_registry"  # callable: enough for the loader
MAKE_CONSUMER = "tests.unit.test_config_validation:make_consumer"  # makes a Consumer
VALID: dict[str, Any] = {
    "kafka": {"bootstrap_servers": "127.0.0.1:9"},
    "queues": {"q": {"consumers": [CONSUMER]}},
}


def problems(document: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """The problem lines of ``document``; fails the test if it is valid."""
    with pytest.raises(ConfigurationError) as info:
        parse_config(document, env or {}, "bad.yaml")
    text = str(info.value)
    assert text.startswith("bad.yaml: ")
    lines = text.splitlines()
    if len(lines) == 1:
        return [lines[0].removeprefix("bad.yaml: ")]
    assert lines[0] == f"bad.yaml: {len(lines) - 1} problems:"
    return [line.strip() for line in lines[1:]]


def with_changes(**sections: Any) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    document.update(sections)
    return document


def test_every_problem_is_reported_at_once_each_with_its_path() -> None:
    document = {
        "kafka": {
            "bootstrap_servers": "127.0.0.1:9",
            "partitons": 3,
            "consumer": {"session.timeout.mss": 10000, "auto.offset.reset": "soonest"},
        },
        "service": {"log_format": "xml", "metrics_port": 70000},
        "queues": {
            "payments": {
                "consumers": [CONSUMER, "tests.payments:Nope", "no colon"],
                "concurrency": 0,
                "retry": {"max_attempts": 0, "backoff_base": "soon"},
                "colour": "blue",
            },
            "empty": None,
        },
    }
    found = problems(document)
    expected_starts = [
        'kafka.consumer.auto.offset.reset: librdkafka refuses it: Invalid value "soonest"',
        "kafka.consumer.session.timeout.mss: librdkafka refuses it: "
        'No such configuration property: "session.timeout.mss"',
        "kafka.partitons: unknown key (known: bootstrap_servers, client, consumer, partitions, "
        "producer, replication_factor, startup_timeout)",
        "queues.empty.consumers: required",
        "queues.payments.colour: unknown key (known: always_ack, ",
        "queues.payments.concurrency: an integer >= 1, got 0",
        "queues.payments.consumers[1]: cannot import 'tests.payments:Nope': ",
        "queues.payments.consumers[2]: expected 'module:attr', got 'no colon'",
        "queues.payments.retry.backoff_base: expected a duration >= 0: seconds, or text like",
        "queues.payments.retry.max_attempts: an integer >= 1 or null, got 0",
        "service.log_format: 'text' or 'json', got 'xml'",
        "service.metrics_port: an integer from 0 to 65535, got 70000",
    ]
    assert len(found) == len(expected_starts), found
    for line, start in zip(found, expected_starts, strict=True):
        assert line.startswith(start), (line, start)


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"kafka": {}}, "kafka.bootstrap_servers: required (or set KAFKA_BOOTSTRAP_SERVERS)"),
        ({"kafka": None}, "kafka.bootstrap_servers: required (or set KAFKA_BOOTSTRAP_SERVERS)"),
        ({"queues": {}}, "queues: at least one queue is required"),
        ({"schema_registry": {"schemas": "x"}}, "schema_registry.url: required"),
        ({"colour": 1}, "colour: unknown key (known: kafka, messages, queues, "),
        (
            {"schema_registry": {"url": "http://u:pw@r", "username": "u"}},
            "schema_registry: credentials in the url and in username: give them once",
        ),
        (
            {"schema_registry": {"url": "http://r", "ssl": {"ssl.key.location": "/k.pem"}}},
            "schema_registry: ssl.key.location and ssl.key.password need ssl.certificate.location",
        ),
        (
            {"schema_registry": {"url": "http://r", "ssl": {"ssl.ca.locatoin": "/ca.pem"}}},
            "schema_registry.ssl.ssl.ca.locatoin: expected one of ssl.ca.location, "
            "ssl.certificate.location, ssl.key.location, ssl.key.password, got 'ssl.ca.locatoin'",
        ),
        (
            {"messages": {"tests.payments:DoPayment": "avro"}},
            "messages: 'tests.payments:DoPayment': avro needs schema_registry.url",
        ),
        ({"messages": {CONSUMER: "json"}}, f"messages.{CONSUMER}: '{CONSUMER}' is not a class"),
        (
            {"messages": {"tests.payments:DoPayment": "xml"}},
            "messages.tests.payments:DoPayment: 'avro' or 'json', got 'xml'",
        ),
        (
            {"queues": {"q": {"consumers": [CONSUMER], "topics": ["a"], "pattern": "^a"}}},
            "queues.q: give topics or pattern, not both",
        ),
        (
            {"queues": {"q": {"consumers": [CONSUMER], "pattern": "a.*"}}},
            "queues.q.pattern: a pattern starts with '^', got 'a.*'",
        ),
        (
            {"queues": {"q": {"consumers": [CONSUMER], "retry": {"backoff_max": 0.1}}}},
            "queues.q.retry: backoff_max is below backoff_base",
        ),
        ({"queues": {"q": {"consumers": []}}}, "queues.q.consumers: must not be empty"),
        ({"queues": {"q": {}}}, "queues.q.consumers: required"),
        (
            {"queues": {"q": {"consumers": ["tests.payments:DoPayment.amount"]}}},
            "queues.q.consumers[0]: expected 'module:attr'",
        ),
        (
            {"queues": {"q": {"consumers": [CONSUMER], "dedup": {"window": 0}}}},
            "queues.q.dedup.window: expected a duration > 0",
        ),
        (
            {"kafka": {"bootstrap_servers": "x:1", "client": {"linger.ms": [1]}}},
            "kafka.client.linger.ms: expected text, a number or true/false",
        ),
        (
            {"kafka": {"bootstrap_servers": "x:1", "startup_timeout": "-1s"}},
            "kafka.startup_timeout: expected a duration > 0",
        ),
    ],
)
def test_each_problem_says_where_and_what(sections: dict[str, Any], expected: str) -> None:
    found = problems(with_changes(**sections))
    assert any(line.startswith(expected) for line in found), found


def test_durations_numbers_and_defaults() -> None:
    config = parse_config(
        with_changes(
            kafka={"bootstrap_servers": "k:9", "partitions": "6"},  # as ${env:} gives it
            queues={
                "payments": {
                    "consumers": [CONSUMER],
                    "topics": "payments",
                    "retry": {"backoff_base": "500ms", "backoff_max": "2m", "max_attempts": None},
                    "dedup": {"kind": "compacted", "window": "7d"},
                },
                "audit": {"consumers": [CONSUMER], "pattern": "^audit\\..*"},
            },
            service={"shutdown_timeout": "1h", "log_level": "debug"},
        ),
        {},
    )
    assert config.kafka.partitions == 6
    assert config.kafka.startup_timeout == 10.0  # the default: seconds to reach the brokers
    payments, audit = config.queues["payments"], config.queues["audit"]
    assert payments.topics == ("payments",)
    assert (payments.retry.backoff_base, payments.retry.backoff_max) == (0.5, 120.0)
    assert payments.retry.max_attempts is None
    assert payments.dedup.window == 7 * 86400.0
    assert payments.dedup_topic == "payments.dedup"
    assert payments.consumer_paths == (CONSUMER,)
    assert callable(payments.consumers[0])
    assert (audit.topics, audit.group_id, audit.dead_letter_topic) == (
        ("^audit\\..*",),
        "audit",
        "audit.dlq",
    )
    assert config.runtime.shutdown_timeout == 3600.0
    assert config.runtime.log_level == "DEBUG"


def test_references_resolve_and_report_where_they_fail(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text("from-a-file\n", encoding="utf-8")
    config = parse_config(
        with_changes(
            kafka={
                "bootstrap_servers": "${env:BROKERS}",
                "partitions": "${env:PARTITIONS}",
                "client": {"sasl.password": f"${{file:{secret_file}}}", "sasl.username": "u"},
            }
        ),
        {"BROKERS": "b:9092", "PARTITIONS": "3"},
    )
    assert config.kafka.bootstrap_servers == "b:9092"
    assert config.kafka.partitions == 3
    assert config.kafka.client["sasl.password"] == Secret("from-a-file")
    assert reveal(config.kafka.client)["sasl.password"] == "from-a-file"

    found = problems(
        with_changes(
            kafka={
                "bootstrap_servers": "${env:BROKERS}",
                "partitions": "${env:PARTITIONS}",
                "client": {"sasl.password": f"${{file:{tmp_path / 'nope'}}}"},
            }
        )
    )
    assert found == [
        "kafka.bootstrap_servers: environment variable BROKERS is not set",
        f"kafka.client.sasl.password: cannot read {tmp_path / 'nope'}: No such file or directory",
        "kafka.partitions: environment variable PARTITIONS is not set",  # and nothing more
    ]


def test_environment_overrides() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "env-broker:9092",
        "KAFKA_SASL_USERNAME": "alice",
        "KAFKA_SASL_PASSWORD": "env-pw",
        "SCHEMA_REGISTRY_URL": "http://registry:8080",
        "SCHEMA_REGISTRY_USERNAME": "bob",
        "SCHEMA_REGISTRY_PASSWORD": "registry-pw",
        "METRICS_PORT": "9464",
    }
    config = parse_config({"queues": {"q": {"consumers": [CONSUMER]}}}, env)
    assert config.kafka.bootstrap_servers == "env-broker:9092"
    assert config.runtime.metrics_port == 9464
    assert config.kafka.client == {"sasl.username": "alice", "sasl.password": Secret("env-pw")}
    assert config.registry is not None
    assert config.registry.url == "http://registry:8080"
    assert (config.registry.username, config.registry.password) == ("bob", Secret("registry-pw"))
    # registry credentials alone make no registry
    alone = parse_config(VALID, {"SCHEMA_REGISTRY_USERNAME": "bob"})
    assert alone.registry is None


def test_librdkafka_settings_are_checked_by_the_client_library() -> None:
    accepted = with_changes(
        kafka={
            "bootstrap_servers": "k:9",
            # these only make sense together, and the CA file exists only where deployed
            "client": {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "ssl.ca.location": "/nowhere/ca.pem",
            },
            "consumer": {"session.timeout.ms": 10000, "enable.auto.commit": False},
            "producer": {"linger.ms": 5, "compression.type": "zstd"},
        }
    )
    assert parse_config(accepted, {}).kafka.producer["linger.ms"] == 5
    found = problems(
        with_changes(
            kafka={
                "bootstrap_servers": "k:9",
                "client": {"on_commit": "x"},  # producers have no commit callback
                "consumer": {"enable.auto.commit": "maybe"},
                "producer": {"compression.type": "zip"},
            }
        )
    )
    assert [line.split(": librdkafka refuses it: ")[0] for line in found] == [
        "kafka.client.on_commit",
        "kafka.consumer.enable.auto.commit",
        "kafka.producer.compression.type",
    ]
    assert 'Expected bool value for "enable.auto.commit"' in found[1]


PLANTED = "hunter2-planted"


def make_consumer() -> Consumer:
    """A consumer factory for the configurations of these tests."""
    return Consumer(on_message=lambda message: None)


@pytest.mark.parametrize(
    "sections",
    [
        {"kafka": {"bootstrap_servers": "k:9", "client": {"sasl.password": [PLANTED]}}},
        {"kafka": {"bootstrap_servers": "k:9", "client": {"ssl.key.password": {"x": PLANTED}}}},
        {"schema_registry": {"url": f"http://u:{PLANTED}@r:8081", "colour": 1}},
        {"schema_registry": {"url": f"http://u:{PLANTED}@r:8081", "password": 12}},
        {"schema_registry": {"url": f"http://u:{PLANTED}@r:8081", "ssl": {"x": [1]}}},
        {"schema_registry": {"url": 5, "password": PLANTED, "username": 1}},
        {"kafka": {"bootstrap_servers": "k:9", "client": {"sasl.password": PLANTED, "x.y": 1}}},
        {"kafka": {"bootstrap_servers": f"http://u:{PLANTED}@k:9", "partitions": 0}},
    ],
)
def test_no_problem_shows_a_secret(sections: dict[str, Any]) -> None:
    document = with_changes(**sections)
    document["queues"]["q"]["concurrency"] = 0  # a problem even when the rest is valid
    text = "\n".join(problems(document))
    assert PLANTED not in text
    assert "queues.q.concurrency" in text


def test_secrets_are_masked_in_the_configured_objects() -> None:
    config = parse_config(
        with_changes(
            kafka={"bootstrap_servers": "k:9", "client": {"sasl.password": PLANTED}},
            schema_registry={
                "url": f"http://bob:{PLANTED}-url@registry:8081",
                "password": f"{PLANTED}-2",
                "ssl": {
                    "ssl.certificate.location": "/etc/tls/client.pem",
                    "ssl.key.location": "/etc/tls/client.key",
                    "ssl.key.password": f"{PLANTED}-3",
                },
            },
        ),
        {},
    )
    assert PLANTED not in repr(config)
    assert config.registry is not None
    assert "http://bob:***@registry:8081" in repr(config.registry)
    assert config.registry.url == f"http://bob:{PLANTED}-url@registry:8081"  # for the client


def test_load_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: [", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"broken\.yaml: not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"list\.yaml: expected a mapping"):
        load_config(listed)


# -- the JSON Schema --------------------------------------------------------------------
CONFIG_FILES = [
    ROOT / "examples" / "payment_service" / "service.yaml",
    ROOT / "deploy" / "compose" / "service.yaml",
]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_shipped_configurations_fit_the_json_schema(path: Path) -> None:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(document)
    load_config(path, env={})  # and the loader agrees


def test_the_json_schema_refuses_what_the_loader_refuses() -> None:
    validator = jsonschema.Draft202012Validator(config_schema())
    assert validator.is_valid(VALID)
    assert validator.is_valid(with_changes(queues={"q": {"consumers": [CONSUMER], "topics": "t"}}))
    for bad in (
        with_changes(colour=1),
        with_changes(kafka={"bootstrap_servers": "k:9", "partitions": 0}),
        with_changes(queues={"q": {"consumers": [CONSUMER], "ordering": "random"}}),
        with_changes(queues={"q": {"consumers": ["no colon"]}}),
        with_changes(queues={}),
        with_changes(service={"shutdown_timeout": "soon"}),
        with_changes(messages={"no colon": "json"}),
    ):
        assert not validator.is_valid(bad), json.dumps(bad)
        with pytest.raises(ConfigurationError):
            parse_config(bad, {})


# -- the dead-letter limit --------------------------------------------------------------
def test_the_dead_letter_limit_is_off_unless_configured_and_reaches_the_dispatcher() -> None:
    config = parse_config(
        with_changes(
            queues={
                "off": {"consumers": [MAKE_CONSUMER]},
                "defaults": {"consumers": [MAKE_CONSUMER], "dead_letter_limit": {}},
                "tuned": {
                    "consumers": [MAKE_CONSUMER],
                    "dead_letter_limit": {"ratio": "0.2", "window": "5m", "min_messages": 10},
                },
            }
        ),
        {},
    )
    assert config.queues["off"].dead_letter_limit is None
    defaults = config.queues["defaults"].dead_letter_limit
    assert defaults is not None
    assert (defaults.ratio, defaults.window, defaults.min_messages) == (0.5, 60.0, 100)
    tuned = config.queues["tuned"]
    serializers = build_serializers(config, None)
    dispatcher = build_dispatcher(config, tuned, InMemoryBackend(), serializers)  # type: ignore[arg-type]
    limit = dispatcher.dead_letter_limit
    assert limit is not None
    assert (limit.ratio, limit.window, limit.min_messages) == (0.2, 300.0, 10)
    assert (
        build_dispatcher(
            config,
            config.queues["off"],
            InMemoryBackend(),
            serializers,  # type: ignore[arg-type]
        ).dead_letter_limit
        is None
    )


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ({"ratio": 0}, "ratio: expected a share > 0 and <= 1 (0.5 is half), got 0"),
        ({"ratio": 1.5}, "ratio: expected a share > 0 and <= 1 (0.5 is half), got 1.5"),
        ({"window": "0s"}, "window: expected a duration > 0"),
        ({"min_messages": 0}, "min_messages: an integer >= 1, got 0"),
        ({"share": 0.5}, "share: unknown key (known: min_messages, ratio, window)"),
    ],
)
def test_a_wrong_dead_letter_limit_says_where(limit: dict[str, Any], expected: str) -> None:
    found = problems(
        with_changes(queues={"q": {"consumers": [CONSUMER], "dead_letter_limit": limit}})
    )
    assert any(line.startswith(f"queues.q.dead_letter_limit.{expected}") for line in found), found
