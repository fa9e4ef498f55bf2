"""Cause classification and repeat collapsing of service.backends.kafka.connection."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from service.backends.kafka.connection import (
    Cause,
    ConnectionWatch,
    LibrdkafkaLogger,
    RepeatCollapser,
    classify,
)

REFUSED = (
    "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused "
    "(after {}ms in state CONNECT)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("code", "text", "cause"),
    [
        (KafkaError._TRANSPORT, REFUSED.format(0), Cause.REFUSED),
        (
            KafkaError._RESOLVE,
            "x.invalid:9092/bootstrap: Failed to resolve 'x.invalid:9092': Name or service "
            "not known",
            Cause.DNS,
        ),
        (
            KafkaError._TRANSPORT,
            "ssl://127.0.0.1:1/bootstrap: SSL handshake failed: Disconnected: SSL connection "
            "closed by peer: connecting to a PLAINTEXT broker listener?",
            Cause.TLS,
        ),
        (KafkaError._SSL, "certificate verify failed", Cause.TLS),
        (
            KafkaError._TRANSPORT,
            "sasl_ssl://k:9093/1: Connect to ipv4#10.0.0.1:9093 failed: Connection refused",
            Cause.REFUSED,
        ),
        (KafkaError._AUTHENTICATION, "SASL PLAIN mechanism handshake failed", Cause.AUTHENTICATION),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "Authentication failed", Cause.AUTHENTICATION),
        (KafkaError._TRANSPORT, "Connection setup timed out in state CONNECT", Cause.TIMEOUT),
        (KafkaError._TRANSPORT, "Disconnected (after 1ms in state UP)", Cause.TRANSPORT),
        (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down", None),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed", None),
    ],
)
def test_classify_names_the_cause(code: int, text: str, cause: Cause | None) -> None:
    assert classify(KafkaError(code, text)) is cause


def test_repeats_are_logged_once_then_summarised_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    collapser = RepeatCollapser(logging.getLogger("test.collapse"), interval=60, clock=clock)
    with caplog.at_level(logging.DEBUG, "test.collapse"):
        for attempt in range(500):
            clock.now = attempt * 0.1  # 50 s: under the interval
            collapser.log(logging.WARNING, REFUSED.format(attempt % 7))
        assert [r.getMessage() for r in caplog.records] == [REFUSED.format(0)]
        clock.now = 61.0
        collapser.log(logging.WARNING, REFUSED.format(3))  # the interval passed: summary
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[1] == f"{REFUSED.format(3)} (repeated 500 times in 61s)"


def test_distinct_lines_are_each_logged_and_reset_forgets_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collapser = RepeatCollapser(logging.getLogger("test.collapse2"), clock=Clock())
    with caplog.at_level(logging.DEBUG, "test.collapse2"):
        for _ in range(3):
            collapser.log(logging.WARNING, "a")
            collapser.log(logging.ERROR, "b")
        assert collapser.reset() == 4  # two repeats of each, summarised now
        collapser.log(logging.WARNING, "a")
    assert [r.getMessage() for r in caplog.records] == [
        "a",
        "b",
        "a (repeated 2 times in 0s)",
        "b (repeated 2 times in 0s)",
        "a",
    ]
    assert [r.levelno for r in caplog.records][:2] == [logging.WARNING, logging.ERROR]


def test_watch_logs_the_outage_once_and_the_recovery_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = ConnectionWatch("queue 'payments'")
    with caplog.at_level(logging.DEBUG, "service.backends.kafka.connection"):
        for attempt in range(300):
            watch.on_error(KafkaError(KafkaError._TRANSPORT, REFUSED.format(attempt)))
            watch.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        assert watch.is_down and watch.cause is Cause.REFUSED and watch.fatal is None
        watch.reachable()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith(
        "queue 'payments': broker unreachable (connection refused), retrying: "
    )
    assert "(repeated 599 times in" in messages[1]
    assert messages[2] == "queue 'payments': broker reachable again (after 600 connection error(s))"
    assert len(messages) == 3
    assert not watch.is_down


def test_watch_keeps_an_authentication_failure_as_fatal(caplog: pytest.LogCaptureFixture) -> None:
    watch = ConnectionWatch("producer")
    with caplog.at_level(logging.DEBUG, "service.backends.kafka.connection"):
        for _ in range(50):
            watch.on_error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication failed"))
    assert watch.fatal is not None and watch.fatal.code() == KafkaError._AUTHENTICATION
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.ERROR


def test_watch_logs_other_errors_once_each(caplog: pytest.LogCaptureFixture) -> None:
    watch = ConnectionWatch("admin")
    with caplog.at_level(logging.DEBUG, "service.backends.kafka.connection"):
        for _ in range(10):
            watch.on_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))
    assert [r.getMessage() for r in caplog.records] == ["admin: TOPIC_AUTHORIZATION_FAILED: denied"]
    assert not watch.is_down


def test_librdkafka_log_lines_go_to_python_logging_collapsed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = logging.getLogger("test.librdkafka")
    router = LibrdkafkaLogger(target)
    with caplog.at_level(logging.DEBUG, "test.librdkafka"):
        for attempt in range(200):  # how confluent-kafka calls a configured logger
            router.log(40, "%s [%s] %s", "FAIL", "rdkafka#producer-1", REFUSED.format(attempt))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, f"FAIL {REFUSED.format(0)}")
    ]
    router.collapser.flush()
    assert caplog.records[-1].getMessage().endswith("(repeated 199 times in 0s)")


def test_quiet_router_logs_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    target = logging.getLogger("test.librdkafka.quiet")
    with caplog.at_level(logging.DEBUG, "test.librdkafka.quiet"):
        LibrdkafkaLogger(target, quiet=True).log(40, "%s [%s] %s", "FAIL", "c", "boom")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.DEBUG, "FAIL boom")]
