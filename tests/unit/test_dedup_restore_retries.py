"""The dedup restore's watermark read: what it retries and what it reports (no broker)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from service import DeduplicationStoreError
from service.backends.kafka import dedup_restore


class _Watermarks:
    """A consumer whose watermark reads fail with ``codes`` first, then answer (0, 7)."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.calls = 0

    def get_watermark_offsets(self, partition: Any, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.codes:
            raise KafkaException(KafkaError(self.codes.pop(0)))
        return 0, 7


def test_a_partition_librdkafka_forgot_in_an_outage_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # seen in a full `make test`: a broker back from a freeze mid-restore, the partition
    # checked a moment before, and librdkafka's metadata cache empty
    monkeypatch.setattr(dedup_restore.time, "sleep", lambda _: None)
    consumer = _Watermarks(KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC)
    assert dedup_restore._watermarks(consumer, "t.dedup", 0) == (0, 7)  # type: ignore[arg-type]
    assert consumer.calls == 3


def test_an_error_that_does_not_pass_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup_restore.time, "sleep", lambda _: None)
    consumer = _Watermarks(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(DeduplicationStoreError, match=r"cannot read dedup topic t.dedup\[0\]"):
        dedup_restore._watermarks(consumer, "t.dedup", 0)  # type: ignore[arg-type]
    assert consumer.calls == 1


def test_an_outage_past_the_patience_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(dedup_restore.time, "sleep", lambda _: None)
    monkeypatch.setattr(dedup_restore.time, "monotonic", lambda: float(next(clock)))
    consumer = _Watermarks(*[KafkaError._UNKNOWN_PARTITION] * 50)
    with pytest.raises(DeduplicationStoreError):
        dedup_restore._watermarks(consumer, "t.dedup", 0)  # type: ignore[arg-type]
    assert consumer.calls == int(dedup_restore.PATIENCE // 100)
