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
import threading
import time
from typing import Any

from service import Consumer, MessageDispatcher
from service.backends.kafka.dedup import CompactedTopicCache
from tests.kafka_helpers import kafka_backend
from tests.payments import json_registry


class LedgerConsumer(Consumer):
    def __init__(self, path: str, sleep_ms: int) -> None:
        super().__init__()
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        self._sleep = sleep_ms / 1000
        self._lock = threading.Lock()

    def process(self, message: Any, **kwargs: Any) -> None:
        if self._sleep:
            time.sleep(self._sleep)
        with self._lock:  # workers share the file
            self._file.write(f"{os.getpid()} {message.order_id} {message.amount}\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("queue")
    parser.add_argument("topic")
    parser.add_argument("ledger")
    parser.add_argument("--sleep-ms", type=int, default=0)
    parser.add_argument("--dedup", action="store_true", help="CompactedTopicCache <queue>.dedup")
    parser.add_argument("--commit-every", type=int, default=1000)
    parser.add_argument("--commit-interval", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    backend = kafka_backend(
        args.bootstrap, commit_every=args.commit_every, commit_interval=args.commit_interval
    )
    backend.declare_queue(args.queue, args.topic, create=False)
    cache = (
        CompactedTopicCache(backend, f"{args.queue}.dedup", partitions=3) if args.dedup else None
    )
    dispatcher = MessageDispatcher(
        json_registry(),
        cache=cache,
        backend=backend,
        poll_timeout=0.2,
        concurrency=args.concurrency,
        ordering="key",
    )
    dispatcher.attach_consumer(LedgerConsumer(args.ledger, args.sleep_ms))
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    print("ready", flush=True)
    dispatcher.consume_loop(args.queue)
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
