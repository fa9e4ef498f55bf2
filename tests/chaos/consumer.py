"""The chaos suite's consumer: records every side effect, publishes a follow-up, fails on demand.

Environment:

* ``CHAOS_DIR`` holds ``ledger-<pid>.txt`` (one line per side effect:
  ``<message id> <order id> <partition>@<offset>``) and, while it exists, ``transient``
  makes every message fail with a TransientError (a dependency down). Orders whose id starts
  with ``poison`` fail for ever.
* ``CHAOS_CONFIG`` is the service's configuration file and ``CHAOS_OUTPUT`` the topic of the
  follow-up events: each processed message publishes one ``OrderResponse`` there (message id
  ``<input id>.followup``) before its ledger line is written.

How the follow-up is published: a consumer factory gets no backend from the service, so the
consumer builds its own ``Publisher`` on a ``KafkaBackend`` from the same configuration (as
``examples/payment_service`` does). Issue 12 puts no commit gate on outputs (issue 14 will),
so the consumer confirms its follow-up itself (``flush``) before returning: a follow-up that
is not confirmed fails the message, which is then delivered again - at least once, by the
consumer's own doing. An unconfirmed follow-up (the broker away) is a dependency down, so
it is raised as a ``TransientError``; a permanent refusal is raised as it is.

With ``CHAOS_EXACTLY_ONCE`` set (the queue runs ``processing: exactly_once``) the follow-up
is not flushed: the service stages it and writes it in the transaction that commits the
input's offset, so a ``read_committed`` reader sees exactly one follow-up per input however
often the handler runs. The ledger then counts handler runs (a side effect outside Kafka,
which exactly-once does not cover), not outputs.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from service import Consumer, Publisher, TransientError
from service.backends.kafka import KafkaBackend
from service.config import load_config
from service.errors import ProduceError
from service.wiring import build_backend, build_serializers
from tests.payments import OrderResponse

FOLLOWUP_SUFFIX = ".followup"
FLUSH_TIMEOUT = 5.0  # seconds: stays well below max.poll.interval.ms (revocation waits for us)


class LedgerConsumer(Consumer):
    """Publishes a confirmed follow-up, then appends a line to this process's ledger."""

    def __init__(self, publisher: Publisher, backend: KafkaBackend, output: str) -> None:
        super().__init__()
        self._dir = Path(os.environ["CHAOS_DIR"])
        self._file = open(self._dir / f"ledger-{os.getpid()}.txt", "a", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()
        self._sleep = float(os.environ.get("CHAOS_SLEEP_MS", "0")) / 1000
        self._publisher, self._backend, self._output = publisher, backend, output
        self._staged = bool(os.environ.get("CHAOS_EXACTLY_ONCE"))

    def process(self, message: Any, **kwargs: Any) -> None:
        if message.order_id.startswith("poison"):
            raise RuntimeError("poison: this order can never be processed")
        if self._sleep:
            time.sleep(self._sleep)  # the I/O a real consumer does
        if (self._dir / "transient").exists():
            raise TransientError("the payment provider is down (chaos)")
        message_id = kwargs["message_id"]
        self._publisher.publish(
            self._output,
            OrderResponse(message.order_id, message.amount),
            key=message.order_id,
            message_id=message_id + FOLLOWUP_SUFFIX,
        )
        if not self._staged:
            self._confirm(message_id)
        record = kwargs.get("record")
        where = f"{record.partition}@{record.offset}" if record is not None else "?"
        with self._lock:
            self._file.write(f"{message_id} {message.order_id} {where}\n")

    def _confirm(self, message_id: str) -> None:
        try:
            self._backend.flush(FLUSH_TIMEOUT)
        except ProduceError as exc:
            if exc.permanent:
                raise
            raise TransientError(f"follow-up of {message_id} not confirmed: {exc}") from exc


def make_consumer() -> LedgerConsumer:
    """The factory the chaos config names."""
    config = load_config(os.environ["CHAOS_CONFIG"])
    backend = build_backend(config)
    publisher = Publisher(build_serializers(config, None), backend)
    return LedgerConsumer(publisher, backend, os.environ["CHAOS_OUTPUT"])
