"""Logging set-up: one line per event, as text or JSON; payloads are never logged.

In JSON every ``extra=`` field of a log call becomes a field of its own, next to ``time``,
``level``, ``logger`` and ``message``::

    logger.warning("dead-lettered", extra={**message_fields(message), "queue": "payments"})
    {"time": "...", "level": "WARNING", "logger": "...", "message": "dead-lettered",
     "topic": "payments", "partition": 3, "offset": 41, "message_id": "...", "queue": "payments"}

The text format shows the message only, so put what a reader of text logs needs in it too.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from service.messages import MESSAGE_ID_HEADER, Message

__all__ = ["JsonFormatter", "configure_logging", "message_fields"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per line, with every ``extra=`` field of the log call as a field.

    Fixed fields: ``time``, ``level``, ``logger``, ``message``, and ``exception`` (the
    traceback text) when the record carries one.
    An ``extra=`` value that JSON cannot represent is written as its ``str()``; bytes are
    written base64-encoded by the library. Names that clash with the fixed fields lose:
    ``extra={"message": ...}`` is refused by :mod:`logging` itself.
    """

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """Put ``time`` first (UTC, milliseconds), then the library's fields and extras."""
        log_data["time"] = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z"
        )
        super().add_fields(log_data, record, message_dict)


def message_fields(message: Message) -> dict[str, Any]:
    """``extra=`` fields locating ``message``: topic, partition, offset, and message_id if set.

    The message id is decoded as UTF-8 (undecodable bytes replaced); payload and key are
    never included.
    """
    fields: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
    }
    message_id = message.header(MESSAGE_ID_HEADER)
    if message_id:
        fields["message_id"] = message_id.decode("utf-8", "replace")
    return fields


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send the service's logs to stderr in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("httpx", "httpx2", "httpcore"):  # one line per registry request
        logging.getLogger(chatty).setLevel(logging.WARNING)
