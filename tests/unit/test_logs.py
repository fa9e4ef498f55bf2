from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from service.logs import JsonFormatter, configure_logging, message_fields
from service.messages import MESSAGE_ID_HEADER, Message


@pytest.fixture
def json_lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test_logs.{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def parse(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_extra_fields_are_json_fields(json_lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_lines
    message = Message("payments", b"secret payload", ((MESSAGE_ID_HEADER, b"m-1"),), b"key", 3, 41)
    logger.warning(
        "dead-lettered %s",
        message.location,
        extra={**message_fields(message), "consumer": "payments.Charge", "queue": "pay"},
    )
    [entry] = parse(stream)
    assert entry["message"] == "dead-lettered payments[3]@41"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == logger.name
    assert entry["time"].endswith("Z")
    assert (entry["topic"], entry["partition"], entry["offset"]) == ("payments", 3, 41)
    assert entry["message_id"] == "m-1"
    assert (entry["consumer"], entry["queue"]) == ("payments.Charge", "pay")
    assert "secret payload" not in stream.getvalue()
    assert "levelname" not in entry and "msg" not in entry and "args" not in entry


def test_values_json_cannot_hold_are_still_written(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_lines

    class Opaque:
        def __str__(self) -> str:
            return "opaque-thing"

    logger.info("odd", extra={"thing": Opaque(), "non_ascii": "é"})
    [entry] = parse(stream)
    assert "opaque-thing" in str(entry["thing"])
    assert entry["non_ascii"] == "é"


def test_exception_is_a_field(json_lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_lines
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"queue": "pay"})
    [entry] = parse(stream)
    assert "ValueError: boom" in entry["exception"]
    assert entry["queue"] == "pay"


def test_message_fields_omits_an_absent_message_id() -> None:
    assert message_fields(Message("t", None, (), None, 1, 2)) == {
        "topic": "t",
        "partition": 1,
        "offset": 2,
    }
    invalid = Message("t", None, ((MESSAGE_ID_HEADER, b"\xff-id"),))
    assert message_fields(invalid)["message_id"] == "\ufffd-id"


def test_configure_logging_json_writes_extras_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        logging.getLogger("service.test").info("hello", extra={"partition": 7})
        [entry] = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert (entry["message"], entry["partition"]) == ("hello", 7)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
