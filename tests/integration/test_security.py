"""Security on a real broker with SASL/SCRAM-SHA-512 and ACLs (issue 9, "Security").

One SASL broker for the module (``local_kafka(..., sasl=True)``): ``admin`` is a super user
that creates topics, ACLs and test records; ``alice`` starts without any ACL and gets exactly
what each test grants her. Every test uses its own topics and group.
"""

from __future__ import annotations

import ast
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from confluent_kafka.cimpl import NewTopic
from prometheus_client import CollectorRegistry, generate_latest

from service import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    Consumer,
    MessageDispatcher,
    ProduceError,
    Publisher,
    RetryPolicy,
)
from service.backends.kafka import KafkaBackend
from service.backends.kafka.dedup import CompactedTopicCache
from service.config.loader import parse_config
from service.config.model import Secret, reveal
from service.messages import Message
from service.metrics import ServiceMetrics
from tests.kafka_helpers import FAST_GROUP, read_topic, unique
from tests.payments import DoPayment, json_registry
from tests.support.local_brokers import SASL_USERS, local_kafka, sasl_client_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALICE = "User:alice"
ALICE_PASSWORD = SASL_USERS["alice"]
WRONG_PASSWORD = "wrong-password-xyz"  # noqa: S105 - the point of the test


# -- broker and admin ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sasl_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker whose only client listener is SASL_PLAINTEXT/SCRAM-SHA-512 with ACLs."""
    with local_kafka(tmp_path_factory.mktemp("kafka-sasl"), sasl=True) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="module")
def admin(sasl_bootstrap: str) -> AdminClient:
    return AdminClient(sasl_client_config(sasl_bootstrap, "admin"))


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Capture everything the service and the root logger say, down to DEBUG."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="service")


def create_topics(admin: AdminClient, *names: str, partitions: int = 1) -> None:
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1) for name in names], operation_timeout=15
    )
    for future in futures.values():
        future.result(timeout=20)


def allow(resource: ResourceType, name: str, *operations: AclOperation) -> list[AclBinding]:
    return [
        AclBinding(
            resource,
            name,
            ResourcePatternType.LITERAL,
            ALICE,
            "*",
            operation,
            AclPermissionType.ALLOW,
        )
        for operation in operations
    ]


def grant(admin: AdminClient, *bindings: list[AclBinding]) -> None:
    """Create the ACLs and wait until the broker answers with them."""
    wanted = [b for group in bindings for b in group]
    for future in admin.create_acls(wanted).values():
        future.result(timeout=15)


def admin_backend(bootstrap: str) -> KafkaBackend:
    config = sasl_client_config(bootstrap, "admin")
    del config["bootstrap.servers"]
    return KafkaBackend(bootstrap, client_config=config, startup_timeout=20)


def alice_backend(bootstrap: str, password: str = ALICE_PASSWORD, **options: Any) -> KafkaBackend:
    """Alice's backend, configured the way the service is: ``kafka.client`` pass-through."""
    config = sasl_client_config(bootstrap, "alice", password)
    del config["bootstrap.servers"]
    options.setdefault("consumer_config", FAST_GROUP)
    options.setdefault("startup_timeout", 20.0)
    return KafkaBackend(bootstrap, client_config=config, **options)


def publish_as_admin(bootstrap: str, topic: str, amounts: range) -> None:
    backend = admin_backend(bootstrap)
    publisher = Publisher(json_registry(), backend)
    for amount in amounts:
        publisher.publish(topic, DoPayment(f"o{amount}", amount), key=f"k{amount}")
    backend.close()


def read_as_admin(bootstrap: str, topic: str, count: int, timeout: float = 15.0) -> list[Message]:
    """Read ``topic`` from the beginning (as admin) until ``count`` records or ``timeout``."""
    admin = {
        k: v for k, v in sasl_client_config(bootstrap, "admin").items() if k != "bootstrap.servers"
    }
    return read_topic(bootstrap, topic, count, timeout, client=admin)


class Recorder(Consumer):
    def __init__(self, fail: Callable[[DoPayment], bool] = lambda m: False) -> None:
        super().__init__()
        self.amounts: list[int] = []
        self.fail = fail

    def process(self, message: Any, **kwargs: Any) -> None:
        if self.fail(message):
            raise RuntimeError(f"cannot handle {message.amount}")
        self.amounts.append(message.amount)


class Loop:
    """``consume_loop`` in a thread; remembers how it ended."""

    def __init__(self, dispatcher: MessageDispatcher, queue: str, **callbacks: Any) -> None:
        self.dispatcher = dispatcher
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self.started_at = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(queue,), kwargs=callbacks)
        self.thread.start()

    def _run(self, queue: str, **callbacks: Any) -> None:
        try:
            self.dispatcher.consume_loop(queue, **callbacks)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.dispatcher.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


def alice_queue(admin: AdminClient, *, read_topic: bool = True, read_group: bool = True) -> str:
    """A queue (topic, group and ``.dlq`` created by admin) with alice's consumer ACLs."""
    queue = unique("sec")
    create_topics(admin, queue, f"{queue}.dlq")
    topic_ops = [AclOperation.READ, AclOperation.DESCRIBE] if read_topic else []
    group_ops = [AclOperation.READ] if read_group else []
    grant(
        admin,
        allow(ResourceType.TOPIC, queue, *topic_ops),
        allow(ResourceType.GROUP, queue, *group_ops),
        allow(ResourceType.TOPIC, f"{queue}.dlq", AclOperation.WRITE),
    )
    return queue


# -- 1. the right credentials ------------------------------------------------------------------
def test_alice_with_her_acls_consumes(sasl_bootstrap: str, admin: AdminClient) -> None:
    queue = alice_queue(admin)
    publish_as_admin(sasl_bootstrap, queue, range(5))
    backend = alice_backend(sasl_bootstrap)
    recorder = Recorder()
    dispatcher = MessageDispatcher(json_registry(), backend=backend)
    dispatcher.attach_consumer(recorder)
    loop = Loop(dispatcher, queue)
    try:
        loop.until(lambda: len(recorder.amounts) == 5, timeout=30)
    finally:
        loop.stop()
        backend.close()
    assert loop.error is None
    assert sorted(recorder.amounts) == list(range(5))


# -- 2. a wrong password -------------------------------------------------------------------------
def test_wrong_password_fails_fast_without_showing_it(
    sasl_bootstrap: str,
    admin: AdminClient,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    queue = alice_queue(admin)
    backend = alice_backend(sasl_bootstrap, WRONG_PASSWORD, startup_timeout=30)
    started = time.monotonic()
    with pytest.raises(AuthenticationError) as caught:
        backend.subscribe(queue)
    elapsed = time.monotonic() - started
    print(f"authentication refused after {elapsed:.2f}s: {caught.value}")
    assert elapsed < 15
    text = str(caught.value)
    assert "SASL" in text or "uthentication" in text
    assert "sasl.password" in text  # says what to check
    assert WRONG_PASSWORD not in text
    assert WRONG_PASSWORD not in repr(caught.value)
    assert WRONG_PASSWORD not in caplog.text
    assert all(WRONG_PASSWORD not in str(record.args) for record in caplog.records)
    out, err = capfd.readouterr()  # librdkafka's own log lines go to stderr
    assert WRONG_PASSWORD not in out + err


# -- 3. no READ on the topic or the group ------------------------------------------------------
@pytest.mark.parametrize(
    ("missing", "code"),
    [("topic", "TOPIC_AUTHORIZATION_FAILED"), ("group", "GROUP_AUTHORIZATION_FAILED")],
)
def test_missing_read_acl_is_a_clear_error_not_a_hang(
    sasl_bootstrap: str, admin: AdminClient, missing: str, code: str
) -> None:
    queue = alice_queue(admin, read_topic=missing != "topic", read_group=missing != "group")
    publish_as_admin(sasl_bootstrap, queue, range(2))
    backend = alice_backend(sasl_bootstrap)
    recorder = Recorder()
    dispatcher = MessageDispatcher(json_registry(), backend=backend)
    dispatcher.attach_consumer(recorder)
    loop = Loop(dispatcher, queue)
    try:
        loop.thread.join(20)
        hung = loop.thread.is_alive()
    finally:
        loop.stop()
        backend.close()
    assert not hung, "consume_loop still running after 20 s: a hang, not an error"
    assert loop.ended_at is not None
    print(
        f"no {missing} READ: {type(loop.error).__name__} after "
        f"{loop.ended_at - loop.started_at:.2f}s: {loop.error}"
    )
    assert isinstance(loop.error, BackendError)
    assert isinstance(loop.error, AuthorizationError) or code in str(loop.error)
    assert code in str(loop.error)
    assert recorder.amounts == []


# -- 4. writing only to its own dead-letter topic ------------------------------------------
def test_writes_only_to_its_own_dead_letter_topic(sasl_bootstrap: str, admin: AdminClient) -> None:
    queue = alice_queue(admin)
    other = unique("other")
    create_topics(admin, other)
    good = (("serializer_id", b"1"), ("manifest", b"DoPayment"), ("message_id", b"g"))
    publisher = admin_backend(sasl_bootstrap)
    publisher.publish(queue, b"\x00\xffgarbage", key=b"x", headers=good)
    publisher.close()

    backend = alice_backend(sasl_bootstrap)
    dispatcher = MessageDispatcher(json_registry(), backend=backend)
    dispatcher.attach_consumer(Recorder())
    errors: list[Exception] = []
    letters: list[Message] = []

    def dead_lettered() -> bool:
        letters[:] = read_as_admin(sasl_bootstrap, f"{queue}.dlq", 1, timeout=0.5)
        return bool(letters)

    loop = Loop(dispatcher, queue, on_exception=errors.append)
    try:
        loop.until(dead_lettered, timeout=30)
    finally:
        loop.stop()
    assert loop.error is None
    assert [m.header("dlq.error_class") for m in letters] == [b"DeserializationError"]
    assert not [e for e in errors if isinstance(e, BackendError)]  # the DLQ write was allowed

    # anywhere else: refused, and the refusal surfaces from flush with the broker's code
    backend.publish(other, b"not allowed", key=b"x")
    started = time.monotonic()
    with pytest.raises(ProduceError, match="TOPIC_AUTHORIZATION_FAILED") as caught:
        backend.flush(15)
    print(f"refused after {time.monotonic() - started:.2f}s: {caught.value}")
    assert other in str(caught.value)
    assert not read_as_admin(sasl_bootstrap, other, 1, timeout=1)
    backend.close()


def test_writes_its_own_dedup_topic_without_create(sasl_bootstrap: str, admin: AdminClient) -> None:
    queue = alice_queue(admin)
    dedup_topic = f"{queue}.dedup"
    create_topics(admin, dedup_topic)  # provisioned by the operator: alice has no CREATE
    grant(admin, allow(ResourceType.TOPIC, dedup_topic, AclOperation.READ, AclOperation.WRITE))
    publish_as_admin(sasl_bootstrap, queue, range(3))
    backend = alice_backend(sasl_bootstrap)
    cache = CompactedTopicCache(backend, dedup_topic)
    recorder = Recorder()
    dispatcher = MessageDispatcher(json_registry(), cache=cache, backend=backend)
    dispatcher.attach_consumer(recorder)
    errors: list[Exception] = []
    loop = Loop(dispatcher, queue, on_exception=errors.append)
    try:
        loop.until(lambda: len(recorder.amounts) == 3, timeout=30)
    finally:
        loop.stop()
        backend.close()
    assert loop.error is None
    assert errors == []
    assert sorted(recorder.amounts) == [0, 1, 2]
    assert len(read_as_admin(sasl_bootstrap, dedup_topic, 3)) == 3

    # a topic that does not exist, without CREATE: a clear error naming it
    missing = unique("missing")
    with pytest.raises(AuthorizationError, match=f"{missing}.*TOPIC_AUTHORIZATION_FAILED"):
        alice_backend(sasl_bootstrap).declare_topic(missing)


# -- 5. no secret in logs, dead letters or metrics ----------------------------------------------
def test_the_password_appears_in_no_log_dead_letter_or_metric(
    sasl_bootstrap: str, admin: AdminClient, caplog: pytest.LogCaptureFixture
) -> None:
    queue = alice_queue(admin)
    publish_as_admin(sasl_bootstrap, queue, range(3))
    backend = alice_backend(sasl_bootstrap)
    metrics = ServiceMetrics(CollectorRegistry())
    queue_metrics = metrics.queue(queue)
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        retry=RetryPolicy(max_attempts=2, backoff_base=0.05, backoff_max=0.1, jitter=0),
        observer=queue_metrics,
    )
    dispatcher.listeners.append(queue_metrics)
    queue_metrics.lag = lambda: getattr(dispatcher.subscription, "lag", dict)()
    dispatcher.attach_consumer(Recorder(fail=lambda m: m.amount != 1))
    letters: list[Message] = []

    def dead_lettered() -> bool:
        letters[:] = read_as_admin(sasl_bootstrap, f"{queue}.dlq", 2, timeout=0.5)
        return len(letters) == 2

    loop = Loop(dispatcher, queue)
    try:
        loop.until(dead_lettered, timeout=30)
        exposition = generate_latest(metrics.registry).decode()  # while the loop runs
    finally:
        loop.stop()
        backend.close()
    assert loop.error is None
    assert len(letters) == 2
    assert "dead_lettered" in exposition and queue in exposition  # the metrics are wired
    exposition += generate_latest(metrics.registry).decode()

    secret = ALICE_PASSWORD.encode()
    for letter in letters:
        assert letter.header("dlq.error_class") == b"ConsumerError"
        assert secret not in (letter.value or b"")
        assert secret not in (letter.key or b"")
        for name, value in letter.headers:
            assert ALICE_PASSWORD not in name
            assert secret not in (value or b"")
    assert ALICE_PASSWORD not in exposition
    assert "dead-lettering" in caplog.text  # the logs were captured
    assert ALICE_PASSWORD not in caplog.text
    assert all(ALICE_PASSWORD not in str(record.args) for record in caplog.records)


def test_secrets_are_masked_in_the_configuration() -> None:
    assert "x" not in repr(Secret("x")).replace("Secret", "")
    assert str(Secret("hunter2")) == repr(Secret("hunter2")) == "Secret('***')"
    document = {
        "kafka": {
            "bootstrap_servers": "kafka:9093",
            "client": {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "alice",
                "sasl.password": "${env:TEST_SASL_PASSWORD}",
                "ssl.ca.location": "/etc/kafka/ca.pem",
                "ssl.key.password": "key-pass-123",
            },
        },
        "queues": {"payments": {"consumers": ["tests.payments:PaymentService"]}},
    }
    config = parse_config(document, {"TEST_SASL_PASSWORD": "s3cr3t-from-env"})
    client = config.kafka.client
    assert isinstance(client["sasl.password"], Secret)
    assert isinstance(client["ssl.key.password"], Secret)
    assert client["ssl.ca.location"] == "/etc/kafka/ca.pem"  # TLS settings pass through
    for shown in (repr(config), str(config), repr(client)):
        assert "s3cr3t-from-env" not in shown
        assert "key-pass-123" not in shown
    revealed = reveal(client)  # what librdkafka gets
    assert revealed["sasl.password"] == "s3cr3t-from-env"
    assert revealed["ssl.key.password"] == "key-pass-123"

    # the environment override is masked too
    document["kafka"]["client"] = {"security.protocol": "SASL_SSL"}  # type: ignore[index]
    config = parse_config(
        document, {"KAFKA_SASL_USERNAME": "bob", "KAFKA_SASL_PASSWORD": "env-override-pw"}
    )
    assert isinstance(config.kafka.client["sasl.password"], Secret)
    assert "env-override-pw" not in repr(config)


# -- 6. no unsafe deserialization ---------------------------------------------------------
UNSAFE_NAMES = frozenset(
    {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "eval", "exec"}
)
UNSAFE_YAML = frozenset({"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load"})


def unsafe_uses(source: str) -> list[str]:
    """Code (not comments or docstrings) that could deserialize or run untrusted input."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name) and node.id in UNSAFE_NAMES:
            found.append(f"{line}: {node.id}")
        elif isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if a.name in UNSAFE_NAMES]
        elif isinstance(node, ast.ImportFrom) and node.module in UNSAFE_NAMES:
            found.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in UNSAFE_NAMES:
            found.append(f"{line}: .{node.attr}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "yaml"
            and node.attr in UNSAFE_YAML
        ):
            found.append(f"{line}: yaml.{node.attr} (use yaml.safe_load)")
        elif isinstance(node, ast.keyword) and node.arg == "Loader":
            found.append(f"{line}: Loader= (use yaml.safe_load)")
    return found


def test_no_unsafe_deserialization_in_the_service() -> None:
    sources = sorted((ROOT / "service").rglob("*.py"))
    assert len(sources) > 20
    found = [
        f"{path.relative_to(ROOT)}:{use}"
        for path in sources
        for use in unsafe_uses(path.read_text(encoding="utf-8"))
    ]
    assert found == []
    # and a plain grep, for what the AST walk could miss (e.g. __import__("pickle"))
    grep = re.compile(r"""["']pickle["']|["']marshal["']|yaml\.load\(|\beval\(|\bexec\(""")
    hits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if grep.search(line)
    ]
    assert hits == []


def test_the_unsafe_use_check_finds_what_it_looks_for() -> None:
    assert unsafe_uses("import pickle\npickle.loads(b'')")
    assert unsafe_uses("from marshal import loads")
    assert unsafe_uses("x = eval(text)")
    assert unsafe_uses("exec(code)")
    assert unsafe_uses("import yaml\nyaml.load(stream, Loader=yaml.Loader)")
    assert unsafe_uses("import yaml\nyaml.unsafe_load(stream)")
    assert not unsafe_uses("import yaml\nyaml.safe_load(stream)")
    assert not unsafe_uses('"""Built the way ``pickle`` does."""  # eval( in a comment')
