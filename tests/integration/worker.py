"""A consumer process for the integration tests: one group member on a queue.

Usage: python -m tests.integration.worker BOOTSTRAP QUEUE TOPIC LEDGER [--sleep-ms N]

Every message it processes is appended to LEDGER as ``<pid> <partition> <offset> <amount>``
(flushed per line) before the consumer returns, so the ledger is the side-effect record.
SIGTERM stops the dispatcher gracefully.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from service import Consumer, MessageDispatcher
from tests.kafka_helpers import kafka_backend
from tests.payments import json_registry


class LedgerConsumer(Consumer):
    def __init__(self, path: str, sleep_ms: int) -> None:
        super().__init__()
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        self._sleep = sleep_ms / 1000

    def process(self, message: Any, **kwargs: Any) -> None:
        if self._sleep:
            time.sleep(self._sleep)
        self._file.write(f"{os.getpid()} {message.order_id} {message.amount}\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("queue")
    parser.add_argument("topic")
    parser.add_argument("ledger")
    parser.add_argument("--sleep-ms", type=int, default=0)
    args = parser.parse_args()
    backend = kafka_backend(args.bootstrap)
    backend.declare_queue(args.queue, args.topic, create=False)
    dispatcher = MessageDispatcher(json_registry(), backend=backend, poll_timeout=0.2)
    dispatcher.attach_consumer(LedgerConsumer(args.ledger, args.sleep_ms))
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    print("ready", flush=True)
    dispatcher.consume_loop(args.queue)
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
