"""Attacks on the operations work (issue 15), as a new user and as an operator would try.

A reviewer's tests, on the real broker: configuration files with many problems at once and
with settings that would quietly undo the service's guarantees, secrets planted in every
place they can go, ``kafka-dispatch run`` against brokers that cannot be had (timed end to
end), JSON logs, the dead-letter flood guard at its edges and across a rebalance, and
``dlq replay`` of a large dead-letter topic with stderr not a terminal.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as KafkaConsumer

from service.config import config_schema, parse_config
from service.errors import ConfigurationError
from tests.integration.test_dlq_streaming import create, fill, total_records
from tests.integration.test_open_world_attacks import (
    charge,
    dead_letter_list,
    dead_letters,
    document,
    loop_errors,
    new_queue,
    produce,
    running,
    wait_until,
)
from tests.kafka_helpers import committed, unique

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
HERE = "tests.integration.test_open_world_attacks"
_OVERRIDES = ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "SERVICE_CONFIG")
SLACK = 6.0  # interpreter start-up and imports on a loaded 2-core machine


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m service *args``: the result and how long it took."""
    environment = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
    environment.update(env or {})
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environment,
    )
    return result, time.monotonic() - started


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    return path


def minimal(bootstrap: str, **kafka: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap, **kafka},
        "queues": {"q": {"topics": ["t"], "consumers": [f"{HERE}:Recorder"]}},
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1"},
    }


# == configuration =========================================================================
def test_config_check_reports_every_problem_at_once_with_its_path(tmp_path: Path) -> None:
    doc = minimal("127.0.0.1:9")
    doc["kafka"]["client"] = {"sasl.pasword": "x", "compression.type": "zip"}
    doc["kafka"]["consumer"] = {"session.timeout.ms": "abc", "fetch.wait.max.ms": [1, 2]}
    doc["kafka"]["producer"] = {"acks": "maybe"}
    doc["kafka"]["partitions"] = 0
    doc["queues"]["q"].update(
        consumers=["tests.payments:Nope"],
        message_id="field",
        headerless={"serializer": "json", "type": "nope"},
        dead_letter_limit={"ratio": 1.5, "window": "-1s"},
        retry={"backoff_base": "5 lightyears"},
        key="utf8",
        bogus=1,
    )
    doc["service"]["log_format"] = "yaml"
    result, _ = cli("config", "check", "-c", str(write(tmp_path / "c.yaml", doc)))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for path in [
        "kafka.client.sasl.pasword",
        "kafka.client.compression.type",
        "kafka.consumer.session.timeout.ms",
        "kafka.consumer.fetch.wait.max.ms",
        "kafka.producer.acks",
        "kafka.partitions",
        "queues.q.consumers[0]",
        "queues.q.message_id",
        "queues.q.headerless.type",
        "queues.q.dead_letter_limit.ratio",
        "queues.q.dead_letter_limit.window",
        "queues.q.retry.backoff_base",
        "queues.q.key",
        "queues.q.bogus",
        "service.log_format",
    ]:
        assert f"\n  {path}:" in result.stderr, f"{path} not reported:\n{result.stderr}"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("consumer", "enable.auto.commit", True),
        ("consumer", "enable.auto.offset.store", True),
        ("consumer", "group.id", "one-group-for-every-queue"),
        ("client", "partition.assignment.strategy", "range"),
        ("producer", "enable.idempotence", False),
        ("producer", "acks", 0),
    ],
)
def test_settings_that_undo_the_delivery_guarantees_are_refused(
    tmp_path: Path, section: str, key: str, value: Any
) -> None:
    """The service commits by hand only what is done, one group per queue, with cooperative
    rebalancing, an idempotent ``acks=all`` producer whose delivery reports judge every
    dead letter; ``kafka.consumer``/``kafka.producer`` are merged over those (backend.py)
    and librdkafka accepts the values, so these pass the check and then quietly lose
    messages (auto-commit with offsets stored on poll; dead letters acknowledged by
    ``acks=0`` before the broker has them) or mix queues in one group."""
    doc = minimal("127.0.0.1:9")
    doc["kafka"][section] = {key: value}
    result, _ = cli("config", "check", "-c", str(write(tmp_path / "c.yaml", doc)))
    assert result.returncode == 2, f"accepted kafka.{section}.{key}: {value!r}"
    assert f"kafka.{section}.{key}" in result.stderr


@pytest.mark.parametrize("auto_commit", [False, True], ids=["control", "auto-commit"])
def test_auto_commit_from_the_config_commits_messages_no_handler_finished(
    kafka_bootstrap: str, auto_commit: bool
) -> None:
    """The runtime side of the previous test: with ``kafka.consumer: {enable.auto.commit:
    true, enable.auto.offset.store: true}`` the group's committed offsets pass messages
    whose handlers are still running; a crash now loses them."""
    from tests.integration.test_open_world_attacks import AsyncMisbehaving, new_queue

    queue = new_queue(kafka_bootstrap)
    AsyncMisbehaving.RELEASE.clear()
    produce(
        kafka_bootstrap,
        queue,
        [(f"k{i}".encode(), json.dumps(charge(f"hang-{i}")).encode(), None) for i in range(5)],
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["AsyncMisbehaving"],
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
        concurrency=4,
        ordering="key",
    )
    if auto_commit:
        doc["kafka"]["consumer"].update(
            {
                "enable.auto.commit": True,
                "enable.auto.offset.store": True,
                "auto.commit.interval.ms": 200,
            }
        )
        # the guarantee holds by refusal: such a configuration never starts
        with pytest.raises(ConfigurationError, match=r"enable\.auto\.commit"):
            parse_config(doc, env={})
        return
    try:
        with running(doc):
            time.sleep(8)  # every handler hangs: nothing is done
            done_early = sum(max(o, 0) for o in committed(kafka_bootstrap, queue, queue))
            AsyncMisbehaving.RELEASE.set()
    finally:
        AsyncMisbehaving.RELEASE.set()
    assert done_early == 0, f"committed {done_early} while every handler was still running"


def test_the_published_schema_accepts_the_shipped_configs_and_references(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    result, _ = cli("config", "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema == json.loads(json.dumps(config_schema()))
    import yaml

    example = yaml.safe_load((ROOT / "examples/payment_service/service.yaml").read_text())
    jsonschema.validate(example, schema)
    # what the loader accepts, an editor must not flag
    with_references = minimal("${env:BOOTSTRAP}", partitions="${env:PARTITIONS}")
    parse_config(with_references, env={"BOOTSTRAP": "b:9092", "PARTITIONS": "3"})
    errors = sorted(
        e.json_path for e in jsonschema.Draft202012Validator(schema).iter_errors(with_references)
    )
    assert errors == [], errors


def test_version(tmp_path: Path) -> None:
    result, _elapsed = cli("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"kafka-dispatch \d+\.\d+\.\d+\S*\n", result.stdout)


# == secrets =================================================================================
PLANTED = "Pl4nted-S3cret"


def test_secrets_in_every_place_stay_hidden_from_every_channel(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A password in SASL settings via ``${env:}``, in the registry via ``${file:}``, in a
    registry URL's user-info, in an OAuth secret and an SSL key password; then a config with
    problems, ``config check``, ``schemas check`` and ``dlq inspect``: no output may hold
    the password (``run`` is covered by test_secrets.py). The URL's password holds an
    unencoded ``@``, which a naive ``user:pass@`` pattern would cut in two."""
    secret_file = tmp_path / "pw"
    secret_file.write_text(PLANTED + "-file\n")
    env = {"KPW": PLANTED + "-env"}
    base = minimal(kafka_bootstrap)
    base["kafka"]["client"] = {
        "sasl.username": "svc",
        "sasl.password": "${env:KPW}",
        "sasl.oauthbearer.client.secret": PLANTED + "-oauth",
        "ssl.key.password": PLANTED + "-sslkey",
    }
    base["schema_registry"] = {
        "url": f"http://svc:{PLANTED}-u@rl@127.0.0.1:1/apis/ccompat/v7",
        "schemas": str(ROOT / "schemas"),
    }
    outputs = []
    good = write(tmp_path / "good.yaml", base)
    outputs.append(cli("config", "check", "-c", str(good), env=env)[0])
    outputs.append(cli("schemas", "check", "-c", str(good), env=env)[0])
    outputs.append(cli("dlq", "inspect", "--queue", "q", "-c", str(good), env=env)[0])
    # the same secrets in a file with problems
    bad = json.loads(json.dumps(base))
    bad["kafka"]["client"]["sasl.pasword"] = PLANTED + "-typo"  # a typo of a secret's name
    bad["kafka"]["client"]["sasl.password"] = {"value": PLANTED + "-nested"}  # wrong shape
    bad["schema_registry"]["password"] = "${file:" + str(secret_file) + "}"
    outputs.append(cli("config", "check", "-c", str(write(tmp_path / "bad.yaml", bad)), env=env)[0])
    leaks = []
    for result in outputs:
        for channel in (result.stdout, result.stderr):
            for line in channel.splitlines():
                if PLANTED in line or "S3cret" in line:
                    leaks.append(f"{' '.join(result.args[2:4])}: {line.strip()}")
    assert not leaks, "\n".join(leaks)


def test_a_secret_reference_in_the_wrong_place_is_not_echoed_in_the_error(
    tmp_path: Path,
) -> None:
    """``${env:KAFKA_PASSWORD}`` one indentation level off lands in a field that is not a
    secret; the error quotes the resolved value, so the password is printed. The error
    should quote the reference (``${env:KPW}``), not what it resolved to."""
    doc = minimal("127.0.0.1:9")
    doc["kafka"]["partitions"] = "${env:KPW}"
    doc["kafka"]["startup_timeout"] = "${file:" + str(tmp_path / "pw") + "}"
    (tmp_path / "pw").write_text(PLANTED + "-file\n")
    result, _ = cli(
        "config", "check", "-c", str(write(tmp_path / "c.yaml", doc)), env={"KPW": PLANTED}
    )
    assert result.returncode == 2
    assert "kafka.partitions" in result.stderr and "kafka.startup_timeout" in result.stderr
    assert PLANTED not in result.stderr, result.stderr


# == an unreachable broker, timed end to end with `run` ==========================================
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts TCP connections and never answers a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for connection in accepted:
        connection.close()
    server.close()


@pytest.mark.parametrize("case", ["refused", "dns", "tls", "black hole", "default timeout"])
def test_run_against_a_broker_that_cannot_be_had_fails_fast_in_one_line(
    case: str, kafka_bootstrap: str, black_hole: str, tmp_path: Path
) -> None:
    timeout = 3.0
    kafka: dict[str, Any] = {"startup_timeout": timeout}
    address, cause = {
        "refused": (f"127.0.0.1:{closed_port()}", "connection refused"),
        "dns": ("no-such-broker.invalid:9092", "DNS"),
        "tls": (kafka_bootstrap, "TLS"),
        "black hole": (black_hole, ""),
        "default timeout": (f"127.0.0.1:{closed_port()}", "connection refused"),
    }[case]
    if case == "tls":
        kafka["client"] = {"security.protocol": "SSL"}
    if case == "default timeout":
        kafka, timeout = {}, 10.0
    config = write(tmp_path / "c.yaml", minimal(address, **kafka))
    result, elapsed = cli("run", "-c", str(config))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "cannot reach Kafka" in line]
    assert len(errors) == 1, result.stderr
    assert address in errors[0] and cause in errors[0], errors[0]
    assert len(result.stderr.splitlines()) <= 3, result.stderr  # no flood, no traceback
    assert elapsed < timeout + SLACK, f"{elapsed:.1f}s"


# == JSON logs ================================================================================
def test_json_logs_of_a_failing_consumer_and_a_dead_letter_carry_the_fields(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Every log line is one JSON object; the lines about a consumer failure and a dead
    letter carry topic, partition, offset, message_id, consumer and queue as fields."""
    queue = new_queue(kafka_bootstrap)
    produce(kafka_bootstrap, queue, [(b"k", json.dumps(charge("raise-1")).encode(), None)])
    doc = document(
        kafka_bootstrap,
        queue,
        ["AsyncMisbehaving"],
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
        message_id="key",
    )
    doc["service"]["log_format"] = "json"
    config = write(tmp_path / "c.yaml", doc)
    environment = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
    environment["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "run", "-c", str(config)],
        cwd=ROOT,
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while sum(max(o, 0) for o in committed(kafka_bootstrap, queue, queue)) < 1:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.3)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    records = []
    for line in err.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    about = [
        r
        for r in records
        if "raise-1" in str(r.get("message")) or str(r.get("message")).startswith("dead-lettering")
    ]
    assert len(about) >= 2, err  # a failure per delivery, then the dead letter
    wanted = {"topic", "partition", "offset", "message_id", "consumer", "queue"}
    problems = [f"{sorted(wanted - set(r))} missing in {r}" for r in about if wanted - set(r)]
    assert not problems, "\n".join(problems)


# == the dead-letter flood guard =================================================================
def test_a_flood_guard_with_ratio_1_trips_when_everything_is_dead_lettered(
    kafka_bootstrap: str,
) -> None:
    """``ratio: 1`` is accepted (0 < ratio <= 1) but the trip test is ``dead > ratio *
    settled``: with ratio 1 it can never hold, so the guard never fires even when every
    message is dead-lettered."""
    queue = new_queue(kafka_bootstrap)
    produce(kafka_bootstrap, queue, [(None, b"not json", None)] * 40)
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
        dead_letter_limit={"ratio": 1, "window": "60s", "min_messages": 10},
    )
    with running(doc) as runner:
        deadline = time.monotonic() + 30
        while runner.loops[0].dispatcher.halted is None and time.monotonic() < deadline:
            assert not loop_errors(runner)
            time.sleep(0.2)
        halted = runner.loops[0].dispatcher.halted
    letters = dead_letters(kafka_bootstrap, queue, 40, timeout=3)
    assert halted is not None, f"never halted; {len(letters)} of 40 dead-lettered"


def test_the_flood_guard_holds_with_concurrency_and_across_a_rebalance(
    kafka_bootstrap: str,
) -> None:
    """Concurrency 4, 3 partitions, every message bad: the queue halts; another member joins
    and leaves (two rebalances); the halted member takes its partitions back paused: no
    more dead letters, nothing committed past what was dead-lettered."""
    queue = new_queue(kafka_bootstrap, partitions=3)
    produce(
        kafka_bootstrap,
        queue,
        [(f"k{i}".encode(), b"not json", None) for i in range(600)],
    )
    doc = document(
        kafka_bootstrap,
        queue,
        ["Recorder"],
        partitions=3,
        headerless={"serializer": "json", "type": f"{HERE}:Charge"},
        dead_letter_limit={"ratio": 0.5, "window": "60s", "min_messages": 20},
        concurrency=4,
        ordering="key",
    )
    with running(doc) as runner:
        dispatcher = runner.loops[0].dispatcher
        wait_until(lambda: dispatcher.halted is not None, 60, runner)
        time.sleep(2)
        before = len(dead_letter_list(kafka_bootstrap, queue, 600, timeout=3))
        intruder = KafkaConsumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": queue,
                "partition.assignment.strategy": "cooperative-sticky",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
            }
        )
        intruder.subscribe([queue])
        deadline = time.monotonic() + 20
        while not intruder.assignment() and time.monotonic() < deadline:
            intruder.poll(0.2)
        took = list(intruder.assignment())
        intruder.close()
        time.sleep(8)  # the halted member takes the partitions back
        assert dispatcher.halted is not None
        assert not loop_errors(runner)
    after = len(dead_letter_list(kafka_bootstrap, queue, 600, timeout=3))
    done = sum(max(o, 0) for o in committed(kafka_bootstrap, queue, queue, 3))
    assert took, "the intruder got no partition: no rebalance happened"
    assert before < 200, f"{before} dead letters before halting (min_messages 20)"
    assert after == before, f"{after - before} dead letters after the rebalance"
    assert done <= after, f"committed {done} but only {after} dead-lettered"


# == dlq replay ===================================================================================
def test_replay_of_a_large_dead_letter_topic_to_a_pipe_draws_no_bar_and_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    queue = unique("replay")
    original = f"{queue}-orig"
    count = 20_000
    create(kafka_bootstrap, f"{queue}.dlq", original)
    fill(kafka_bootstrap, f"{queue}.dlq", original, count, 64)
    doc = minimal(kafka_bootstrap)
    doc["queues"] = {queue: {"topics": [original], "consumers": [f"{HERE}:Recorder"]}}
    result, _elapsed = cli(
        "dlq", "replay", "--queue", queue, "-c", str(write(tmp_path / "c.yaml", doc))
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr, result.stderr[-500:]
    assert len(result.stderr.splitlines()) < 10, result.stderr[-2000:]
    assert total_records(kafka_bootstrap, original) == count
    assert str(count) in result.stdout + result.stderr
