"""A group member in its own process for the loop-fault tests (so it can be SIGKILLed).

Usage: python -m tests.integration.loop_faults_worker BOOTSTRAP QUEUE LEDGER
           [--dedup-partitions N] [--concurrency N] [--no-commit]

It consumes QUEUE (topic and group named like the queue) with a ``CompactedTopicCache`` on
``<QUEUE>.dedup`` and an :class:`~tests.integration.loop_faults_support.IdLedger` that writes
``<pid> <message_id>`` per processed message to LEDGER. ``--no-commit`` sets the commit
batch and interval so high that nothing is committed before a SIGKILL. SIGTERM stops it
gracefully. It prints ``ready`` once built.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from service import MessageDispatcher
from service.backends.kafka.dedup import CompactedTopicCache
from tests.integration.loop_faults_support import IdLedger
from tests.kafka_helpers import kafka_backend
from tests.payments import json_registry


def main() -> int:
    """Consume until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("queue")
    parser.add_argument("ledger")
    parser.add_argument("--dedup-partitions", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--no-commit", action="store_true")
    args = parser.parse_args()
    options = {"commit_every": 10**9, "commit_interval": 3600.0} if args.no_commit else {}
    backend = kafka_backend(args.bootstrap, **options)
    backend.declare_queue(args.queue, create=False)
    cache = CompactedTopicCache(
        backend, f"{args.queue}.dedup", partitions=args.dedup_partitions, window=3600.0
    )
    dispatcher = MessageDispatcher(
        json_registry(),
        cache=cache,
        backend=backend,
        poll_timeout=0.2,
        concurrency=args.concurrency,
    )
    dispatcher.attach_consumer(IdLedger(str(os.getpid()), args.ledger))
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    print("ready", flush=True)
    dispatcher.consume_loop(args.queue)
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
