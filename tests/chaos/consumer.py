"""The chaos suite's consumer: records every side effect, fails on demand.

Environment: ``CHAOS_DIR`` holds ``ledger-<pid>.txt`` (one line per side effect:
``<message id> <order id>``) and, while it exists, ``transient`` makes every message fail
with a TransientError (a dependency down). Orders named ``poison`` fail for ever.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from service import Consumer, TransientError


class LedgerConsumer(Consumer):
    """Appends a line per processed message to this process's ledger (line-buffered)."""

    def __init__(self) -> None:
        super().__init__()
        self._dir = Path(os.environ["CHAOS_DIR"])
        self._file = open(self._dir / f"ledger-{os.getpid()}.txt", "a", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()
        self._sleep = float(os.environ.get("CHAOS_SLEEP_MS", "0")) / 1000

    def process(self, message: Any, **kwargs: Any) -> None:
        if message.order_id == "poison":
            raise RuntimeError("poison: this order can never be processed")
        if self._sleep:
            time.sleep(self._sleep)  # the I/O a real consumer does
        if (self._dir / "transient").exists():
            raise TransientError("the payment provider is down (chaos)")
        with self._lock:
            self._file.write(f"{kwargs['message_id']} {message.order_id}\n")


def make_consumer() -> LedgerConsumer:
    """The factory the chaos config names."""
    return LedgerConsumer()
