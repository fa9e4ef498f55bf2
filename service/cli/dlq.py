"""``dlq inspect`` and ``dlq replay``: read a queue's dead-letter topic, and re-publish from it.

Both read the dead-letter topic from the beginning (or from ``--since``) up to its end as it
was when they started, with a throwaway consumer on ``assign()``: no consumer group is joined
and no offset is committed, so they never disturb the queue's consumers. Payloads are never
printed.

``replay`` re-publishes each chosen dead letter to its original topic (header
``dlq.original_topic``) with the original key, value and headers minus the ``dlq.*`` ones;
the ``message_id`` header is kept, so deduplication drops a copy already processed. The
attempt count restarts by itself: it is counted by the consuming process, not in headers.
Dead letters stay in the dead-letter topic (Kafka cannot delete a record).

Exit codes: 0 done, 1 the broker failed or refused a record, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from service.backends.base import DLQ_HEADER_PREFIX
from service.backends.kafka import KafkaBackend
from service.backends.kafka.errors import translate
from service.cli.topics import (
    add_config_option,
    admin_client,
    existing_topics,
    load,
    select_queues,
)
from service.config import QueueConfig, ServiceConfig
from service.config.model import reveal
from service.errors import BrokerUnavailableError, ProduceError
from service.messages import MESSAGE_ID_HEADER, Message
from service.wiring import build_backend

__all__ = ["parse_since", "read_dead_letters", "register"]

EXIT_OK, EXIT_FAILURE = 0, 1
ERROR_TEXT_LIMIT = 200
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_REPLAY_HELP = (
    "Re-publish dead letters to their original topics (dlq.original_topic) with the original "
    "key, value and headers minus dlq.*; the attempt count restarts. Replaying twice is safe "
    "with dedup: message_id headers are kept, so a queue with deduplication drops a message "
    "its consumers already processed within the dedup window (without dedup, every replay is "
    "processed again). Dead letters stay in the dead-letter topic."
)


def register(commands: Any) -> None:
    """Add ``dlq inspect`` and ``dlq replay``."""
    dlq = commands.add_parser("dlq", help="inspect or replay a queue's dead letters")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = (
        "List a queue's dead letters, one line each: partition@offset, time, original "
        "topic[partition]@offset, attempts, error class, error text, message_id (never payloads)"
    )
    inspect = actions.add_parser(
        "inspect", help="list a queue's dead letters (never payloads)", description=text
    )
    replay = actions.add_parser(
        "replay", help="re-publish dead letters to their original topics", description=_REPLAY_HELP
    )
    for action in (inspect, replay):
        add_config_option(action)
        action.add_argument("--queue", required=True, metavar="Q", help="the queue")
        action.add_argument(
            "--since",
            type=parse_since,
            metavar="WHEN",
            help="only dead letters written since WHEN: ISO 8601 (naive is UTC) or a duration "
            "back from now such as 90s, 30m, 1h, 7d",
        )
    inspect.add_argument(
        "--limit", type=_positive, metavar="N", help="stop after N dead letters (oldest first)"
    )
    inspect.set_defaults(handler=_inspect_command)
    replay.add_argument(
        "--message-id",
        dest="message_ids",
        action="extend",
        nargs="+",
        metavar="ID",
        help="only the dead letters with these message ids (repeatable)",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="print what would be replayed; produce nothing"
    )
    replay.set_defaults(handler=_replay_command)


def parse_since(text: str, now: float | None = None) -> int:
    """``text`` (ISO 8601, or a duration back from ``now``) as epoch milliseconds.

    Raises:
        argparse.ArgumentTypeError: ``text`` is neither.
    """
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return int((now - float(match[1]) * _UNITS[match[2]]) * 1000)
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither ISO 8601 (2024-05-01T12:00:00Z) nor a duration (1h, 30m, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def read_dead_letters(
    backend: KafkaBackend,
    topic: str,
    since_ms: int | None,
    timeout: float,
    consumer_config: dict[str, Any] | None = None,
) -> Generator[Message, None, None]:
    """The records of ``topic`` up to its end as of now, per partition in offset order.

    A throwaway consumer reads them with ``assign()``: no group is joined, nothing is
    committed. With ``since_ms``, reading starts at each partition's first record of that
    time, and older records are skipped. Nothing is yielded if ``topic`` does not exist.

    Raises:
        BrokerUnavailableError: the brokers did not answer within ``timeout`` seconds.
        BackendError: the brokers refused.
    """
    consumer = backend.new_consumer(
        {
            **(consumer_config or {}),
            "group.id": f"dlq-reader-{uuid.uuid4().hex}",  # required; never joined
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        ends = _assign(consumer, topic, since_ms, timeout)
        deadline = time.monotonic() + timeout
        while ends:
            records = consumer.consume(500, 0.5)
            if records:
                deadline = time.monotonic() + timeout
            elif time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"reading {topic!r}: no answer from {backend.bootstrap_servers} "
                    f"within {timeout}s"
                )
            for record in records:
                partition, offset = record.partition() or 0, record.offset() or 0
                error = record.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise translate(error, f"reading {topic!r}")
                    ends.pop(partition, None)
                    continue
                if partition not in ends or offset >= ends[partition]:
                    continue  # written after we started: not ours to show
                if offset + 1 >= ends[partition]:
                    ends.pop(partition)
                message = _message(record, topic)
                if since_ms is None or (message.timestamp_ms or 0) >= since_ms:
                    yield message
    except KafkaException as exc:
        raise translate(exc, f"reading {topic!r}") from exc
    finally:
        consumer.close()


def _assign(consumer: Any, topic: str, since_ms: int | None, timeout: float) -> dict[int, int]:
    """Assign the partitions of ``topic`` with records to read; partition -> end offset."""
    topics = consumer.list_topics(topic, timeout=timeout).topics
    found = topics.get(topic)
    if found is None or found.error is not None:
        return {}
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for partition in sorted(found.partitions):
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout
        )
        starts[partition], ends[partition] = low, high
    if since_ms is not None and ends:
        wanted = [TopicPartition(topic, p, since_ms) for p in ends]
        for tp in consumer.offsets_for_times(wanted, timeout=timeout):
            starts[tp.partition] = ends[tp.partition] if tp.offset < 0 else tp.offset
    ends = {p: end for p, end in ends.items() if starts[p] < end}
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
    return ends


def _message(record: KafkaMessage, topic: str) -> Message:
    kind, stamp = record.timestamp()
    return Message(
        record.topic() or topic,
        record.value(),
        tuple(record.headers() or ()),  # type: ignore[arg-type]
        record.key(),
        record.partition() or 0,
        record.offset() or 0,
        stamp if kind else None,  # kind 0: TIMESTAMP_NOT_AVAILABLE
    )


def _header(message: Message, name: str) -> str:
    """Header ``name`` as printable one-line text; ``?`` when absent."""
    value = message.header(name)
    if value is None:
        return "?"
    text = " ".join(value.decode("utf-8", "replace").split())
    return "".join(c if c.isprintable() else "?" for c in text)


def _when(message: Message) -> str:
    if message.timestamp_ms is None:
        return "?"
    when = datetime.datetime.fromtimestamp(message.timestamp_ms / 1000, tz=datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line(message: Message) -> str:
    """One dead letter, tab-separated; never the payload nor the key."""
    original = (
        f"{_header(message, DLQ_HEADER_PREFIX + 'original_topic')}"
        f"[{_header(message, DLQ_HEADER_PREFIX + 'original_partition')}]"
        f"@{_header(message, DLQ_HEADER_PREFIX + 'original_offset')}"
    )
    error_text = _header(message, DLQ_HEADER_PREFIX + "error_text")
    if len(error_text) > ERROR_TEXT_LIMIT:
        error_text = error_text[: ERROR_TEXT_LIMIT - 3] + "..."
    return "\t".join(
        (
            f"{message.partition}@{message.offset}",
            _when(message),
            original,
            f"attempts {_header(message, DLQ_HEADER_PREFIX + 'attempts')}",
            _header(message, DLQ_HEADER_PREFIX + "error_class"),
            error_text,
            f"message_id {_header(message, MESSAGE_ID_HEADER)}",
        )
    )


def _dead_letters(
    config: ServiceConfig, queue: QueueConfig, since_ms: int | None
) -> Generator[Message, None, None]:
    """The queue's dead letters; a note on stderr when its dead-letter topic does not exist."""
    topic, timeout = queue.dead_letter_topic, config.kafka.startup_timeout
    if topic not in existing_topics(admin_client(config), timeout):
        print(
            f"note: dead-letter topic {topic!r} does not exist: nothing was dead-lettered yet, "
            f"or queues.{queue.name}.dead_letter_topic names another topic",
            file=sys.stderr,
        )
    backend = build_backend(config)
    return read_dead_letters(backend, topic, since_ms, timeout, reveal(config.kafka.consumer))


def _inspect_command(args: argparse.Namespace) -> int:
    config = load(args)
    queue = select_queues(config, args.queue)[0]
    count = 0
    letters = _dead_letters(config, queue, args.since)
    for message in letters:
        print(_line(message), flush=True)
        count += 1
        if args.limit is not None and count >= args.limit:
            letters.close()  # closes the consumer now
            break
    print(f"{count} dead letter(s) shown from {queue.dead_letter_topic}", file=sys.stderr)
    return EXIT_OK


def _replay_command(args: argparse.Namespace) -> int:
    config = load(args)
    queue = select_queues(config, args.queue)[0]
    timeout = config.kafka.startup_timeout
    wanted_ids = set(args.message_ids or ())
    chosen: list[Message] = []
    for message in _dead_letters(config, queue, args.since):
        message_id = (message.header(MESSAGE_ID_HEADER) or b"").decode("utf-8", "replace")
        if wanted_ids and message_id not in wanted_ids:
            continue
        if message.header(DLQ_HEADER_PREFIX + "original_topic") is None:
            print(
                f"skipped {message.partition}@{message.offset}: no dlq.original_topic header",
                file=sys.stderr,
            )
            continue
        chosen.append(message)
    if args.dry_run:
        for message in chosen:
            print(f"would replay {_target(message)}")
        print(f"dry run: {len(chosen)} dead letter(s) would be replayed; nothing was produced")
        return EXIT_OK
    if not chosen:
        print(f"nothing to replay from {queue.dead_letter_topic}")
        return EXIT_OK
    existing = existing_topics(admin_client(config), timeout)
    missing = sorted({_original_topic(m) for m in chosen} - set(existing))
    if missing:
        print(
            f"error: original topic(s) {', '.join(missing)} do not exist; create them "
            "(topics create) first. Nothing was replayed.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    failures = _produce(build_backend(config), config.kafka.producer, chosen, timeout)
    replayed: Counter[str] = Counter()
    for message, failure in zip(chosen, failures, strict=True):
        if failure is None:
            replayed[_original_topic(message)] += 1
        else:
            print(f"refused: {_target(message)}: {failure}", file=sys.stderr)
    for topic, count in replayed.items():
        print(f"replayed {count} dead letter(s) to {topic}")
    refused = sum(f is not None for f in failures)
    if refused:
        print(f"error: {refused} of {len(chosen)} record(s) were not replayed", file=sys.stderr)
    return EXIT_FAILURE if refused else EXIT_OK


def _original_topic(message: Message) -> str:
    raw = message.header(DLQ_HEADER_PREFIX + "original_topic") or b""
    return raw.decode("utf-8", "replace")


def _target(message: Message) -> str:
    return (
        f"{message.partition}@{message.offset} -> {_original_topic(message)}"
        f"\tmessage_id {_header(message, MESSAGE_ID_HEADER)}"
    )


def _produce(
    backend: KafkaBackend, settings: Mapping[str, Any], chosen: list[Message], timeout: float
) -> list[str | None]:
    """Publish ``chosen`` to their original topics, idempotently with ``acks=all``.

    Returns:
        Per message, in order: ``None`` once the broker confirmed it, else why not.

    Raises:
        ProduceError: the producer cannot be created or failed fatally.
    """
    progress = _Progress(len(chosen))
    outcomes: dict[int, str | None] = {}

    def on_delivery(index: int) -> Callable[[KafkaError | None, KafkaMessage], None]:
        def delivered(error: KafkaError | None, _record: KafkaMessage) -> None:
            outcomes[index] = None if error is None else f"{error.name()}: {error.str()}"
            progress.advance()

        return delivered

    try:
        producer = backend.new_producer(
            {**reveal(settings), "enable.idempotence": True, "acks": "all", "linger.ms": 5}
        )
        for index, message in enumerate(chosen):
            headers: list[tuple[str, str | bytes | None]] = [
                (k, v) for k, v in message.headers if not k.startswith(DLQ_HEADER_PREFIX)
            ]
            while True:
                try:
                    producer.produce(
                        _original_topic(message),
                        message.value,
                        message.key,
                        headers=headers,
                        on_delivery=on_delivery(index),
                    )
                    break
                except BufferError:
                    producer.poll(0.05)  # the local queue is full: let deliveries drain it
            producer.poll(0)
        producer.flush(timeout)
    except KafkaException as exc:
        raise ProduceError(str(translate(exc, "replaying"))) from exc
    finally:
        progress.finish()
    unconfirmed = f"not confirmed within {timeout}s (it may or may not have been written)"
    return [outcomes.get(i, unconfirmed) for i in range(len(chosen))]


class _Progress:
    """A progress bar on stderr, redrawn in place: ``[####      ] 12/40``."""

    WIDTH = 30

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self._draw()

    def advance(self) -> None:
        self.done += 1
        self._draw()

    def finish(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + " " * (self.WIDTH - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total}")
        sys.stderr.flush()
