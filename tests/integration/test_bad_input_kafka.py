"""Bad input on a real broker and schema registry (issue 9), property-based where it can be.

* Avro records broken the ways production breaks them (truncated, wrong magic byte, a schema
  id the registry does not have, random bytes) around good Avro messages: the good ones are
  processed once, the bad ones are in ``<queue>.dlq`` with ``dlq.error_class``, and the
  committed offset reaches the end of the topic (nothing is stuck, nothing is skipped
  uncommitted).
* A record larger than the topic's ``max.message.bytes``: publishing fails loudly with the
  broker's reason, nothing is written.

The property runs one dispatcher, on one queue, for all its examples (a consumer group join
costs seconds); each example publishes its records in one go and waits for them to settle.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.payment_service import messages as pm
from service import (
    Consumer,
    MessageDispatcher,
    ProduceError,
    Publisher,
    SchemaRegistry,
    SerializerRegistry,
    ServiceError,
)
from service.backends.kafka import KafkaBackend
from tests.integration.test_avro import avro_registry
from tests.kafka_helpers import committed, kafka_backend, read_topic, unique

pytestmark = pytest.mark.integration

SAMPLES = pm.sample_messages()
MANIFESTS = [type(m).__manifest__ for m in SAMPLES]  # type: ignore[attr-defined]
DECODE = b"DeserializationError"
UNKNOWN_SCHEMA = b"UnknownSchemaError"


class Recorder(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def process(self, message: Any, **kwargs: Any) -> None:
        with self.lock:
            self.seen.append((kwargs["message_id"], message))

    def of(self, prefix: str) -> list[tuple[str, Any]]:
        with self.lock:
            return [(i, m) for i, m in self.seen if i.startswith(prefix)]


@dataclass
class Running:
    """One queue consumed by one dispatcher in a thread, for every example of a test."""

    bootstrap: str
    backend: KafkaBackend
    serializers: SerializerRegistry
    queue: str
    recorder: Recorder
    encoded: list[bytes]
    errors: list[Exception] = field(default_factory=list)
    crash: list[BaseException] = field(default_factory=list)
    published: int = 0
    dead: int = 0

    def end_offset(self) -> int:
        consumer = KafkaConsumer({"bootstrap.servers": self.bootstrap, "group.id": unique("wm")})
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(self.queue, 0), 10)[1])
        finally:
            consumer.close()


@pytest.fixture
def registry(schema_registry_url: str) -> Iterator[SchemaRegistry]:
    with SchemaRegistry(schema_registry_url) as client:
        yield client


@pytest.fixture
def backend(kafka_bootstrap: str) -> Iterator[KafkaBackend]:
    b = kafka_backend(kafka_bootstrap, commit_interval=0.1)
    yield b
    b.close()


@pytest.fixture
def running(
    backend: KafkaBackend, registry: SchemaRegistry, kafka_bootstrap: str
) -> Iterator[Running]:
    queue = unique("bad-avro-prop")
    backend.declare_queue(queue)  # one partition: the committed offset is one number
    serializers = avro_registry(registry)
    avro = serializers.get_serializer_by_id(2)
    recorder = Recorder()
    state = Running(
        kafka_bootstrap,
        backend,
        serializers,
        queue,
        recorder,
        [avro.serialize(sample) for sample in SAMPLES],
    )
    dispatcher = MessageDispatcher(serializers, backend=backend, poll_timeout=0.1)
    dispatcher.attach_consumer(recorder)

    def loop() -> None:
        try:
            dispatcher.consume_loop(queue, on_exception=state.errors.append)
        except BaseException as exc:  # reported by the test
            state.crash.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        dispatcher.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert state.crash == []


@dataclass(frozen=True)
class Bad:
    """A broken form of sample ``sample``; ``material`` says how (see :func:`concrete`)."""

    kind: str
    sample: int
    material: bytes


@dataclass(frozen=True)
class Good:
    sample: int


@st.composite
def bad_avro(draw: st.DrawFn) -> Bad:
    """The valid encodings come from the registry at run time: strategies draw how to break them."""
    index = draw(st.integers(0, len(SAMPLES) - 1))
    kind = draw(st.sampled_from(["truncated", "magic", "unknown id", "random"]))
    return Bad(kind, index, draw(_material(kind)))


def _material(kind: str) -> st.SearchStrategy[bytes]:
    if kind == "truncated":  # the cut point, as a fraction in 1/1000 of the length
        return st.integers(0, 999).map(lambda n: n.to_bytes(2, "big"))
    if kind == "magic":
        return st.integers(1, 255).map(lambda n: bytes([n]))
    if kind == "unknown id":  # registry ids are small; Apicurio answers 404 up to 2**32 - 1
        return st.integers(10**8, 2**32 - 1).map(lambda n: n.to_bytes(4, "big"))
    return st.binary(max_size=200)


def concrete(bad: Bad, encoded: list[bytes]) -> tuple[bytes, tuple[bytes, ...]]:
    """The record's value and the acceptable ``dlq.error_class`` values."""
    valid = encoded[bad.sample]
    if bad.kind == "truncated":
        cut = int.from_bytes(bad.material, "big") * len(valid) // 1000
        return valid[:cut], (DECODE,)
    if bad.kind == "magic":
        return bad.material + valid[1:], (DECODE,)
    if bad.kind == "unknown id":
        return b"\x00" + bad.material + valid[5:], (UNKNOWN_SCHEMA,)
    value = bad.material
    if len(value) >= 5 and value[0] == 0:  # framed by chance: whatever the id names
        return value, (DECODE, UNKNOWN_SCHEMA)
    return value, (DECODE,)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    records=st.lists(
        st.one_of(st.integers(0, len(SAMPLES) - 1).map(Good), bad_avro()), min_size=1, max_size=8
    )
)
def test_bad_avro_is_dead_lettered_good_avro_is_processed_and_offsets_reach_the_end(
    running: Running, records: list[Good | Bad]
) -> None:
    assert running.crash == [], running.crash
    tag = uuid.uuid4().hex[:8]
    publisher = Publisher(running.serializers, running.backend)
    good: list[tuple[str, Any]] = []
    bad: dict[bytes, tuple[Bad, tuple[bytes, ...]]] = {}
    for index, record in enumerate(records):
        key = f"{tag}-{index}".encode()
        if isinstance(record, Good):
            message_id = f"{tag}-good-{index}"
            sample = SAMPLES[record.sample]
            publisher.publish(running.queue, sample, key=key, message_id=message_id)
            good.append((message_id, sample))
        else:
            value, classes = concrete(record, running.encoded)
            headers = (
                ("serializer_id", b"2"),
                ("manifest", MANIFESTS[record.sample].encode()),
                ("message_id", f"{tag}-bad-{index}".encode()),
            )
            running.backend.publish(running.queue, value, key=key, headers=headers)
            bad[key] = (record, classes)
    running.backend.flush(10)  # all of this example's records, in one go
    running.published += len(records)
    running.dead += len(bad)

    wait_for(lambda: len(running.recorder.of(tag)) >= len(good), 20, "the good messages")
    letters = [
        m
        for m in read_topic(running.bootstrap, f"{running.queue}.dlq", running.dead)
        if m.key in bad
    ]
    assert sorted(m.key or b"" for m in letters) == sorted(bad)  # each bad record, once
    for letter in letters:
        record, classes = bad[letter.key or b""]
        assert letter.header("dlq.error_class") in classes, (
            record.kind,
            letter.header("dlq.error_class"),
            letter.header("dlq.error_text"),
        )
        assert letter.header("dlq.error_text")
        assert letter.header("dlq.original_topic") == running.queue.encode()
    seen = running.recorder.of(tag)
    assert Counter(i for i, _ in seen) == Counter(i for i, _ in good)  # exactly once
    assert dict(seen) == dict(good)
    assert running.end_offset() == running.published
    wait_for(
        lambda: committed(running.bootstrap, running.queue, running.queue) == [running.published],
        10,
        f"the committed offset to reach {running.published}",
    )
    assert all(isinstance(e, ServiceError) for e in running.errors), running.errors
    assert running.crash == []


def test_record_larger_than_the_topic_limit_fails_loudly_and_nothing_is_written(
    backend: KafkaBackend, kafka_bootstrap: str
) -> None:
    topic = unique("too-big")
    backend.create_topics({topic: 1}, config={"max.message.bytes": "2048"})
    backend.publish(topic, b"x" * 10_240, key=b"k")
    with pytest.raises(ProduceError) as raised:
        backend.flush(15)
    text = str(raised.value)
    assert topic in text and "MSG_SIZE_TOO_LARGE" in text, text
    assert "1 record(s) refused" in text, text
    assert read_topic(kafka_bootstrap, topic, 1, timeout=2) == []
    backend.publish(topic, b"small", key=b"k")  # the producer is still usable
    backend.flush(15)
    [record] = read_topic(kafka_bootstrap, topic, 1)
    assert record.value == b"small"
