"""``dlq inspect`` and ``dlq replay``: read a queue's dead-letter topic, and re-publish from it.

Both first check that the brokers answer (one line naming them and the cause when they do
not, exit 1), then read the dead-letter topic from the beginning (or from ``--since``) up to
its end as it was when they started, with a throwaway consumer on ``assign()``
(:class:`~service.backends.kafka.dead_letters.DeadLetterReader`): no consumer group is joined
and no offset is committed, so they never disturb the queue's consumers. Payloads are never
printed. Records stream: memory stays bounded whatever the topic's size.

``replay`` re-publishes each chosen dead letter to its original topic (header
``dlq.original_topic``) with the original key, value and headers minus the ``dlq.*`` ones;
the ``message_id`` header is kept, so deduplication drops a copy already processed. The
attempt count restarts by itself: it is counted by the consuming process, not in headers.
Dead letters stay in the dead-letter topic (Kafka cannot delete a record). It reads the range
twice: first to count the chosen dead letters and check their original topics exist (nothing
is produced when one is missing), then to publish them as they are read, with a bounded
number unconfirmed. A progress bar (sized from the watermarks, then from the count) is drawn
on stderr only when stderr is a terminal.

Exit codes: 0 done, 1 the broker failed or refused a record, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from service.backends.base import DLQ_HEADER_PREFIX
from service.backends.kafka.dead_letters import DeadLetterReader, Republisher
from service.cli.topics import (
    add_config_option,
    client_config,
    existing_topics,
    load,
    probe,
    select_queues,
)
from service.config import QueueConfig, ServiceConfig
from service.config.model import reveal
from service.messages import MESSAGE_ID_HEADER, Message

__all__ = ["parse_since", "register"]

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


def _reader(config: ServiceConfig, queue: QueueConfig, since_ms: int | None) -> DeadLetterReader:
    """A reader of the queue's dead-letter topic, once the brokers answer."""
    probe(config)
    return DeadLetterReader(
        client_config(config),
        queue.dead_letter_topic,
        since_ms,
        config.kafka.startup_timeout,
        reveal(config.kafka.consumer),
    )


def _note_missing(reader: DeadLetterReader, queue: QueueConfig) -> None:
    if not reader.exists:
        print(
            f"note: dead-letter topic {reader.topic!r} does not exist: nothing was "
            f"dead-lettered yet, or queues.{queue.name}.dead_letter_topic names another topic",
            file=sys.stderr,
        )


def _progress(total: int, what: str) -> tqdm[Any]:
    """A progress bar on stderr, drawn only when stderr is a terminal."""
    bar: tqdm[Any] = tqdm(total=total, desc=what, unit=" records", file=sys.stderr, disable=None)
    return bar


def _inspect_command(args: argparse.Namespace) -> int:
    config = load(args)
    queue = select_queues(config, args.queue)[0]
    count = 0
    with _reader(config, queue, args.since) as reader:
        _note_missing(reader, queue)
        for message in reader.records():
            print(_line(message), flush=True)
            count += 1
            if args.limit is not None and count >= args.limit:
                break
    print(f"{count} dead letter(s) shown from {queue.dead_letter_topic}", file=sys.stderr)
    return EXIT_OK


@dataclass
class _Plan:
    """What a replay will do, found by a first pass over the dead letters."""

    count: int = 0
    topics: set[str] = field(default_factory=set)


def _replay_command(args: argparse.Namespace) -> int:
    """Replay in two passes over the same range, never holding the records in memory.

    The first pass counts the chosen dead letters and collects their original topics, so a
    missing topic stops the replay before anything is produced; the second publishes them
    as they are read.
    """
    config = load(args)
    queue = select_queues(config, args.queue)[0]
    wanted = frozenset(args.message_ids or ())
    with _reader(config, queue, args.since) as reader:
        _note_missing(reader, queue)
        plan = _plan(reader, wanted, args.dry_run)
        if args.dry_run:
            print(f"dry run: {plan.count} dead letter(s) would be replayed; nothing was produced")
            return EXIT_OK
        if not plan.count:
            print(f"nothing to replay from {queue.dead_letter_topic}")
            return EXIT_OK
        missing = sorted(plan.topics - existing_topics(config))
        if missing:
            print(
                f"error: original topic(s) {', '.join(missing)} do not exist; create them "
                "(topics create) first. Nothing was replayed.",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        return _replay(config, reader, wanted, plan)


def _chosen(message: Message, wanted: frozenset[str]) -> bool:
    """Whether ``message`` is selected by ``--message-id`` (every message without it)."""
    message_id = (message.header(MESSAGE_ID_HEADER) or b"").decode("utf-8", "replace")
    return not wanted or message_id in wanted


def _replayable(message: Message) -> bool:
    return message.header(DLQ_HEADER_PREFIX + "original_topic") is not None


def _plan(reader: DeadLetterReader, wanted: frozenset[str], dry_run: bool) -> _Plan:
    """Count the dead letters to replay (printing them on a dry run) and their topics."""
    plan = _Plan()
    with _progress(reader.span, "reading") as bar:
        for message in reader.records():
            bar.update()
            if not _chosen(message, wanted):
                continue
            if not _replayable(message):
                bar.write(
                    f"skipped {message.partition}@{message.offset}: no dlq.original_topic header",
                    file=sys.stderr,
                )
                continue
            plan.count += 1
            plan.topics.add(_original_topic(message))
            if dry_run:
                bar.write(f"would replay {_target(message)}", file=sys.stdout)
    return plan


def _replay(
    config: ServiceConfig, reader: DeadLetterReader, wanted: frozenset[str], plan: _Plan
) -> int:
    """Publish the planned dead letters as they are read; the exit code."""
    replayed: Counter[str] = Counter()
    refused = 0
    timeout = config.kafka.startup_timeout
    publisher = Republisher(client_config(config), reveal(config.kafka.producer), timeout)
    with _progress(plan.count, "replaying") as bar:

        def outcome_of(message: Message) -> Callable[[str | None], None]:
            topic, target = _original_topic(message), _target(message)

            def outcome(failure: str | None) -> None:
                nonlocal refused
                bar.update()
                if failure is None:
                    replayed[topic] += 1
                else:
                    refused += 1
                    bar.write(f"refused: {target}: {failure}", file=sys.stderr)

            return outcome

        for message in reader.records():
            if _chosen(message, wanted) and _replayable(message):
                publisher.send(_original_topic(message), message, outcome_of(message))
        publisher.finish()
    for topic, count in replayed.items():
        print(f"replayed {count} dead letter(s) to {topic}")
    if refused:
        total = refused + sum(replayed.values())
        print(f"error: {refused} of {total} record(s) were not replayed", file=sys.stderr)
    return EXIT_FAILURE if refused else EXIT_OK


def _original_topic(message: Message) -> str:
    raw = message.header(DLQ_HEADER_PREFIX + "original_topic") or b""
    return raw.decode("utf-8", "replace")


def _target(message: Message) -> str:
    return (
        f"{message.partition}@{message.offset} -> {_original_topic(message)}"
        f"\tmessage_id {_header(message, MESSAGE_ID_HEADER)}"
    )
