"""A group member in its own process for the loop-attack tests (so it can be SIGKILLed).

Usage: python -m tests.integration.loop_attacks_worker BOOTSTRAP QUEUE LEDGER
           [--poison ID ...] [--max-attempts N] [--backoff S] [--concurrency N]
           [--poison-delay S]

It consumes QUEUE (topic and group named like the queue) with a consumer that writes one
line ``<offset> <attempt> <message_id> <ok|failed>`` per run to LEDGER, and fails every
message whose id is a ``--poison`` one (after ``--poison-delay`` seconds). Commits every
0.2 s. SIGTERM stops it gracefully.
It prints ``ready`` once built.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any

from service import Consumer, MessageDispatcher, RetryPolicy
from tests.kafka_helpers import kafka_backend
from tests.payments import json_registry


class LedgerConsumer(Consumer):
    """Writes every run to a ledger file; fails the poison ids."""

    def __init__(self, path: str, poison: set[str], delay: float = 0.0) -> None:
        super().__init__()
        self._delay = delay
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process
        self._poison = poison

    @property
    def name(self) -> str:
        """The same in every process."""
        return "tests.integration.loop_attacks.LedgerConsumer"

    def process(self, message: Any, **kwargs: Any) -> None:
        """Record the run; raise for poison."""
        record, message_id = kwargs["record"], str(kwargs.get("message_id"))
        failed = message_id in self._poison
        self._file.write(
            f"{record.offset} {record.attempt} {message_id} {'failed' if failed else 'ok'}\n"
        )
        if failed:
            time.sleep(self._delay)
            raise RuntimeError(f"poison {message_id}")


def main() -> int:
    """Consume until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("queue")
    parser.add_argument("ledger")
    parser.add_argument("--poison", nargs="*", default=[])
    parser.add_argument("--max-attempts", type=int, default=4)
    parser.add_argument("--backoff", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--poison-delay", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format=f"worker {os.getpid()} %(asctime)s %(name)s %(message)s"
    )
    backend = kafka_backend(args.bootstrap, commit_interval=0.2)
    backend.declare_queue(args.queue, create=False)
    retry = RetryPolicy(
        max_attempts=args.max_attempts,
        backoff_base=args.backoff,
        backoff_max=args.backoff,
        jitter=0,
    )
    dispatcher = MessageDispatcher(
        json_registry(),
        backend=backend,
        poll_timeout=0.2,
        retry=retry,
        concurrency=args.concurrency,
    )
    dispatcher.attach_consumer(LedgerConsumer(args.ledger, set(args.poison), args.poison_delay))
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    print("ready", flush=True)
    dispatcher.consume_loop(args.queue)
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
