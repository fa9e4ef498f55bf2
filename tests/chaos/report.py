"""The chaos suite's verdict: what was lost, duplicated, dead-lettered and followed up.

Everything is counted from what the run left behind - the consumers' ledgers, the topics
(input, dead letters, follow-ups) and the group's committed offsets - never from what the
members say about themselves.

The duplicate bound: a side effect runs twice only when its member disappears without
settling it - SIGKILLed, stopped loudly (a dead letter refused even without its payload),
or its assignment lost (frozen past ``max.poll.interval.ms``, or every member at once when
the broker is away longer than the session timeout: the next owner runs again what the
member had in hand and had not made durable, and the member, once it resumes, may finish
what it had in hand before it learns of the loss). Each of those leaves at most the
member's in-flight limit (``max_in_flight``) behind, so the bound is
``(kills + loud stops + lost assignments) x max_in_flight``, lost assignments counted from
the members' logs (``lost ... without commit``). Graceful stops, scale-in and scale-out
(revocations) settle and commit their work first and add nothing. Follow-up events are
at least once: a message run twice publishes its follow-up twice (not counted against the
bound; a missing follow-up fails the run).

Exactly-once (:class:`ExactlyOnceOutcome`): the follow-ups and dead letters are read with
``read_committed`` readers and must match the inputs one to one - each processed input
exactly one follow-up, a poison message none and exactly one dead letter. No bound: a
duplicate is a failure. Handler runs (the ledger) still repeat after kills and aborted
transactions; they are counted, not judged. The records written to the follow-up topic in
aborted transactions (seen by a ``read_uncommitted`` reader only) and the members' rewinds
show that the faults did hit transactions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from tests.chaos.consumer import FOLLOWUP_SUFFIX
from tests.chaos.topics import Record


@dataclass
class Tally:
    """The faults the driver caused, and what it saw go wrong while causing them."""

    kills: int = 0
    terms: int = 0
    outages: int = 0
    transients: int = 0
    joined: int = 0
    left: int = 0
    scale_events: int = 0
    freezes: int = 0
    freezes_lost: int = 0
    dlq_payload_windows: int = 0
    dlq_all_windows: int = 0
    loud_stops: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """What the topics and ledgers say after the run."""

    expected: set[str]
    poison: dict[tuple[int, int], str]  # (partition, offset) -> message id
    ledger: list[str]
    letters: list[Record]
    followups: list[Record]
    lost_assignments: int
    max_in_flight: int
    mode: ClassVar[str] = "at least once"

    def figures(self, tally: Tally) -> list[tuple[str, object]]:
        seen = Counter(self.ledger)
        dead = {_location(letter) for letter in self.letters}
        followed = Counter(_followed(record) for record in self.followups)
        return [
            ("lost", len(self.expected - set(seen))),
            ("duplicate side effects", sum(n - 1 for n in seen.values())),
            ("duplicate bound", self.bound(tally)),
            (
                "dead letters (poison)",
                f"{len(dead & set(self.poison))} of {len(self.poison)} "
                f"(+{len(self.letters) - len(dead)} repeats)",
            ),
            ("dead letters without payload", sum(1 for x in self.letters if _dropped(x))),
            ("follow-ups missing", len(set(seen) - set(followed))),
            ("follow-up duplicates", sum(n - 1 for n in followed.values())),
        ]

    def bound(self, tally: Tally) -> int:
        return (tally.kills + tally.loud_stops + self.lost_assignments) * self.max_in_flight

    def problems(self, tally: Tally, queue: str) -> list[str]:
        seen = Counter(self.ledger)
        problems = list(tally.problems)
        if lost := len(self.expected - set(seen)):
            problems.append(f"{lost} messages lost")
        dead = {_location(letter) for letter in self.letters}
        if missing := len(set(self.poison) - dead):
            problems.append(f"{missing} poison messages missing from the dead-letter topic")
        if stray := dead - set(self.poison):
            problems.append(f"{len(stray)} dead letters of messages that are not poison")
        if foreign := {x.header("dlq.original_topic") for x in self.letters} - {queue}:
            problems.append(f"dead letters of unexpected topics {foreign}")
        reasons = {letter.header("dlq.error_class") for letter in self.letters}
        if reasons - {"ConsumerError"}:
            problems.append(f"unexpected dead-letter reasons {reasons}")
        duplicates = sum(n - 1 for n in seen.values())
        if duplicates > self.bound(tally):
            problems.append(
                f"{duplicates} duplicates > (kills + loud stops + lost assignments) x in-flight"
            )
        followed = {_followed(record) for record in self.followups}
        if missing_followups := set(seen) - followed:
            sample = sorted(missing_followups)[:5]
            problems.append(
                f"{len(missing_followups)} processed messages lack a follow-up {sample}"
            )
        return problems


REWIND_LINE = "to the committed offsets"
"""In a member's log: an aborted transaction rewound its partitions."""


@dataclass
class ExactlyOnceOutcome(Outcome):
    """What the topics say after an exactly-once run (see the module docstring)."""

    written: int = 0  # records in the follow-up topic, aborted transactions' included
    rewinds: int = 0  # aborted transactions that rewound a member (from the logs)
    mode: ClassVar[str] = "exactly once"

    def figures(self, tally: Tally) -> list[tuple[str, object]]:
        followed = Counter(_followed(record) for record in self.followups)
        dead = Counter(_location(letter) for letter in self.letters)
        runs = Counter(self.ledger)
        return [
            ("lost", len(self.expected - set(followed))),
            ("duplicate outputs (read_committed)", sum(n - 1 for n in followed.values())),
            ("outputs of poison messages", len(set(followed) & set(self.poison.values()))),
            (
                "dead letters (poison)",
                f"{len(set(dead) & set(self.poison))} of {len(self.poison)} "
                f"(+{sum(n - 1 for n in dead.values())} repeats)",
            ),
            ("dead letters without payload", sum(1 for x in self.letters if _dropped(x))),
            ("outputs written in aborted transactions", self.written - len(self.followups)),
            ("rewinds after an aborted transaction (all members)", self.rewinds),
            ("handler runs repeated (outside Kafka)", sum(n - 1 for n in runs.values())),
        ]

    def problems(self, tally: Tally, queue: str) -> list[str]:
        problems = list(tally.problems)
        followed = Counter(_followed(record) for record in self.followups)
        if lost := self.expected - set(followed):
            problems.append(f"{len(lost)} inputs without a committed output {sorted(lost)[:5]}")
        if twice := sorted(key for key, n in followed.items() if n > 1):
            problems.append(f"{len(twice)} inputs with more than one output {twice[:5]}")
        if stray := set(followed) - self.expected:
            problems.append(f"{len(stray)} outputs of no processable input {sorted(stray)[:5]}")
        dead = Counter(_location(letter) for letter in self.letters)
        if missing := len(set(self.poison) - set(dead)):
            problems.append(f"{missing} poison messages missing from the dead-letter topic")
        if wrong := set(dead) - set(self.poison):
            problems.append(f"{len(wrong)} dead letters of messages that are not poison")
        if repeats := sum(n - 1 for n in dead.values()):
            problems.append(f"{repeats} poison messages dead-lettered more than once")
        if foreign := {x.header("dlq.original_topic") for x in self.letters} - {queue}:
            problems.append(f"dead letters of unexpected topics {foreign}")
        reasons = {letter.header("dlq.error_class") for letter in self.letters}
        if reasons - {"ConsumerError"}:
            problems.append(f"unexpected dead-letter reasons {reasons}")
        return problems


def _location(letter: Record) -> tuple[int, int]:
    try:
        return int(letter.header("dlq.original_partition")), int(
            letter.header("dlq.original_offset")
        )
    except ValueError:
        return -1, -1


def _dropped(letter: Record) -> bool:
    return "dlq.payload_dropped" in letter.headers


def _followed(record: Record) -> str:
    return record.header("message_id").removesuffix(FOLLOWUP_SUFFIX)


def verdict(
    messages: int,
    tally: Tally,
    outcome: Outcome,
    queue: str,
    during_chaos: int,
    committed_total: int,
    seconds: float,
) -> int:
    """Print the table and the failures; the exit code (1 if anything failed)."""
    figures: list[tuple[str, object]] = [
        ("mode", outcome.mode),
        ("messages", messages),
        ("processed when the chaos ended", during_chaos),
        ("kills (SIGKILL)", tally.kills),
        ("graceful restarts", tally.terms),
        ("broker outages", tally.outages),
        ("transient-failure windows", tally.transients),
        (
            "scale-out/in events (members joined / left)",
            f"{tally.scale_events} ({tally.joined} / {tally.left})",
        ),
        (
            "members frozen past max.poll.interval (lost seen)",
            f"{tally.freezes} ({tally.freezes_lost})",
        ),
        ("lost assignments (all members)", outcome.lost_assignments),
        (
            "DLQ refusal windows (payload / all)",
            f"{tally.dlq_payload_windows} / {tally.dlq_all_windows}",
        ),
        ("loud stops (DLQ refused, restarted)", tally.loud_stops),
        *outcome.figures(tally),
        ("committed", committed_total),
        ("wall time", f"{seconds:.0f} s"),
    ]
    print("\n| figure | value |\n|---|---|")
    for name, value in figures:
        print(f"| {name} | {value} |")
    problems = outcome.problems(tally, queue)
    if committed_total != messages:
        problems.append(f"committed {committed_total} of {messages}")
    for problem in problems:
        print("FAIL:", problem)
    return 1 if problems else 0
