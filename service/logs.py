"""Logging set-up: one line per event, as text or JSON; payloads are never logged."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["configure_logging"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record``."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send the service's logs to stderr in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("httpx", "httpx2", "httpcore"):  # one line per registry request
        logging.getLogger(chatty).setLevel(logging.WARNING)
