"""A broker outage while the dedup store restores an assignment (found by ``tests/chaos``).

The fault suite (``python -m tests.chaos.run --messages 100000 --outage 10 30 --seed 12``,
2026-12-02) SIGSTOPped its broker just after a member had been assigned partitions. The
member's dedup restore failed within 10 s with ``DeduplicationStoreError: cannot read dedup
topic ...dedup[2] (no READ permission, or the broker is unreachable?):
KafkaError{code=_UNKNOWN_PARTITION, ... "Failed to get watermark offsets: Local: Unknown
partition"}``, raised out of the rebalance callback, and the member stopped (exit 1). Nothing
was lost (another member took the partitions), but a broker that is away for a few seconds is
an error that may pass (``service/errors.py``: infrastructure errors are retried for as long
as they last), and every member rebalancing at that moment would stop.

Here the broker is stopped from inside the first assignment, just before the restore, and
resumed 15 s later: the loop must wait for it and then process the message, not end.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from service import MessageDispatcher
from service.backends.base import TopicPartition
from service.backends.kafka import KafkaBackend
from service.backends.kafka.dedup import CompactedTopicCache
from tests.integration.loop_faults_support import (
    IdLedger,
    Loop,
    Record,
    create_topic,
    produce,
    wait_until,
)
from tests.kafka_helpers import broker_pid, kafka_backend, unique
from tests.payments import json_registry
from tests.support.local_brokers import local_kafka

pytestmark = pytest.mark.integration

OUTAGE = 15.0  # seconds: longer than the restore's 10 s metadata timeout


class OutageOnFirstRestore(CompactedTopicCache):
    """Stops the broker when the first partitions are assigned, for ``OUTAGE`` seconds."""

    def __init__(self, backend: KafkaBackend, topic: str, broker: int) -> None:
        super().__init__(backend, topic)
        self._broker = broker
        self.stopped = False

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        if partitions and not self.stopped:
            self.stopped = True
            os.kill(self._broker, signal.SIGSTOP)
            threading.Timer(OUTAGE, os.kill, (self._broker, signal.SIGCONT)).start()
        super().on_assigned(partitions)


def test_a_broker_outage_during_a_dedup_restore_does_not_end_the_loop(tmp_path: Path) -> None:
    workdir = tmp_path / "kafka"
    with local_kafka(workdir) as bootstrap:
        broker = broker_pid(workdir)
        queue = unique("restore")
        create_topic(bootstrap, queue, 1)
        produce(bootstrap, queue, [Record(0, "m1", amount=1)])
        backend = kafka_backend(bootstrap)
        backend.declare_queue(queue)
        cache = OutageOnFirstRestore(backend, f"{queue}.dedup", broker)
        consumer = IdLedger()
        dispatcher = MessageDispatcher(json_registry(), cache=cache, backend=backend)
        dispatcher.attach_consumer(consumer)
        loop = Loop(dispatcher, queue).start()
        try:
            wait_until(lambda: loop.ended or "m1" in consumer.ids, OUTAGE + 45)
            assert cache.stopped, "the broker was never stopped: no partition was assigned"
            assert not loop.ended, (
                f"the consume loop ended on a {OUTAGE:.0f} s broker outage during the dedup "
                f"restore of its assignment: {loop.error!r}"
            )
            assert consumer.ids == ["m1"], f"processed {consumer.ids} after the broker came back"
        finally:
            os.kill(broker, signal.SIGCONT)  # whatever happened, the broker can stop again
            loop.stop(20)
            backend.close()
