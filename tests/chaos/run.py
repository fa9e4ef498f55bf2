"""The fault suite: a consumer group of service processes under kills, freezes and refusals.

``python -m tests.chaos.run --messages 100000`` (``make chaos``); CI runs a smaller size
(``tests/chaos/test_chaos_ci.py``). On a dedicated broker, 3 ``service run`` members share one
group (compacted dedup, concurrency 8, key ordering); every processed message publishes a
confirmed follow-up event (``tests/chaos/consumer.py``). Faults, in a seeded random order:

* ``kill``: SIGKILL a member, start a new one;
* ``term``: SIGTERM a member (it must exit 0), start a new one;
* ``outage``: SIGSTOP the broker for ``--outage`` seconds;
* ``transient``: every message fails with a TransientError for a few seconds;
* ``scale``: while every message fails (retries pending everywhere), 1-2 extra members join,
  take partitions, and leave gracefully (scale-out, then scale-in);
* ``freeze``: SIGSTOP a member past ``max.poll.interval.ms``: the group moves on, and on
  SIGCONT the member must find its assignment lost and drop its work without committing;
* ``dlq-payload`` / ``dlq-all``: the dead-letter topic refuses for a while (see
  ``tests/chaos/topics.py``): poison messages must then be dead-lettered without their
  payload, or their member stops loudly (it is restarted and counted);
* while less than 80% is processed, more kills and graceful restarts.

Poison messages (keys ``poison-<n>`` spread over the partitions, so that poison flows
whichever partitions a member is working on; padded payloads) fail for ever and must all
reach the DLQ.
Prints a table of the figures and exits non-zero if anything was lost, if a poison message is
missing from the DLQ, if duplicates exceed the bound ``tests/chaos/report.py`` derives, if a
processed message lacks its follow-up, if a member exited unexpectedly, or if offsets stop
short of the end.

``--exactly-once`` (``make chaos CHAOS_ARGS=--exactly-once``): the same faults on a queue
with ``processing: exactly_once``; each member's follow-up is staged and written in the
transaction that commits its input's offset. The run waits for the committed offsets to
reach the end, and the verdict reads the follow-up and dead-letter topics with
``read_committed`` readers: each input must have exactly one follow-up (0 lost, 0
duplicates), a poison message none, and the DLQ exactly one dead letter per poison message.
Handler runs (the ledger) may repeat: exactly-once covers what is written to Kafka only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from service import Publisher
from service.backends.kafka import KafkaBackend
from tests.chaos.fleet import ROOT, Fleet, Member
from tests.chaos.report import REWIND_LINE, ExactlyOnceOutcome, Outcome, Tally, verdict
from tests.chaos.topics import (
    ALL_REFUSED,
    PAYLOAD_REFUSED,
    POISON_PAD,
    committed_total,
    create_topic,
    dead_letters,
    read_all,
    set_max_message_bytes,
)
from tests.kafka_helpers import broker_pid, committed
from tests.payments import DoPayment, json_registry
from tests.support.local_brokers import local_kafka

PARTITIONS = 6
MAX_IN_FLIGHT = 200
MEMBERS = 3
MAX_POLL_MS = 12_000
REFUSAL_MAX = 90.0  # seconds a DLQ refusal window lasts at most (retries wait behind prefetch)
NEW_EVENTS = ("freeze", "dlq-payload", "dlq-all")


def config(bootstrap: str, queue: str, exactly_once: bool = False) -> dict[str, object]:
    consumer = {
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": MAX_POLL_MS,
    }
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": PARTITIONS,
            "consumer": consumer,
            "client": {"socket.timeout.ms": 5000},
        },
        "messages": {"tests.payments:DoPayment": "json", "tests.payments:OrderResponse": "json"},
        "queues": {
            queue: {
                "consumers": ["tests.chaos.consumer:make_consumer"],
                "retry": {"max_attempts": 3, "backoff_base": "50ms", "backoff_max": "200ms"},
                "dedup": {"kind": "compacted", "window": "1d"},
                "concurrency": 8,
                "ordering": "key",
                "max_in_flight": MAX_IN_FLIGHT,
                "processing": "exactly_once" if exactly_once else "at_least_once",
            }
        },
        "service": {"metrics_port": 0, "metrics_host": "127.0.0.1", "shutdown_timeout": "30s"},
    }


def ledger(chaos_dir: Path) -> list[str]:
    rows: list[str] = []
    for path in chaos_dir.glob("ledger-*.txt"):
        rows += [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return rows


class Chaos:
    """Causes the faults on a running fleet and tallies them."""

    def __init__(
        self, args: argparse.Namespace, fleet: Fleet, bootstrap: str, dlq: str, work: Path
    ) -> None:
        self.args, self.fleet, self.bootstrap, self.dlq = args, fleet, bootstrap, dlq
        self.rng = random.Random(args.seed)
        self.chaos_dir = work / "chaos"
        self.broker = broker_pid(work / "broker")
        self.tally = Tally()

    def judge(self, member: Member, code: int, expected: int) -> None:
        """An exit code the driver did not cause is a loud stop (counted) or a problem."""
        if code == expected:
            return
        reason = member.stop_reason()
        if reason == "DeadLetterRefusedError":
            self.tally.loud_stops += 1
        else:
            self.tally.problems.append(
                f"{member.name} exited {code} (wanted {expected}): {reason}\n{member.tail()}"
            )

    def event(self, name: str) -> None:
        getattr(self, "_" + name.replace("-", "_"))()

    def _kill(self) -> None:
        member, code = self.fleet.replace(self.rng.randrange(MEMBERS), signal.SIGKILL)
        self.tally.kills += 1
        self.judge(member, code, -signal.SIGKILL)

    def _term(self) -> None:
        member, code = self.fleet.replace(self.rng.randrange(MEMBERS), signal.SIGTERM)
        self.tally.terms += 1
        self.judge(member, code, 0)

    def _outage(self) -> None:
        # The broker goes away while the group is settled: a member starting now would give
        # up on the broker, and a dedup restore running now stops its member (see the report)
        self.fleet.restarts.clear()
        try:
            self.fleet.wait_quiet()
            os.kill(self.broker, signal.SIGSTOP)
            try:
                time.sleep(self.rng.uniform(*self.args.outage))
            finally:
                os.kill(self.broker, signal.SIGCONT)
        finally:
            self.fleet.restarts.set()
        self.tally.outages += 1

    def _transient(self) -> None:
        (self.chaos_dir / "transient").touch()
        time.sleep(self.rng.uniform(2.0, 5.0))
        (self.chaos_dir / "transient").unlink()
        self.tally.transients += 1

    def _scale(self) -> None:
        (self.chaos_dir / "transient").touch()  # every member now holds retries
        try:
            extras = [self.fleet.add_extra() for _ in range(self.rng.choice((1, 2)))]
            for extra in extras:
                if extra.wait_assigned(90):
                    self.tally.joined += 1
                else:
                    self.tally.problems.append(f"{extra.name} joined but got no partition")
            time.sleep(self.rng.uniform(1.0, 3.0))
            for extra in extras:
                self.judge(extra, self.fleet.remove_extra(extra), 0)
                self.tally.left += 1
        finally:
            (self.chaos_dir / "transient").unlink()
        self.tally.scale_events += 1

    def _freeze(self) -> None:
        slot = self.rng.randrange(MEMBERS)
        for _ in range(3):  # a member that exits meanwhile (a loud stop) is replaced: again
            member = self.fleet.slots[slot]
            member.wait_assigned(60)
            self.fleet.wait_quiet(60)  # frozen in steady state, not inside a restore (see report)
            before = member.lost_count()
            if member.proc.poll() is None:
                break
            time.sleep(1.0)  # the fleet's watcher starts its replacement
        os.kill(member.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(MAX_POLL_MS / 1000 + self.rng.uniform(2.0, 4.0))
        finally:
            os.kill(member.proc.pid, signal.SIGCONT)
        self.tally.freezes += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and member.proc.poll() is None:
            if member.lost_count() > before:
                self.tally.freezes_lost += 1
                return
            time.sleep(0.5)
        self.tally.problems.append(
            f"{member.name} frozen past max.poll.interval.ms did not report its assignment "
            f"lost within 30 s of resuming\n{member.tail()}"
        )

    def _dlq_payload(self) -> None:
        """Refuse full dead letters until one more was written without payload."""

        def dropped() -> int:
            letters = read_all(self.bootstrap, self.dlq, timeout=10)
            return sum(1 for letter in letters if "dlq.payload_dropped" in letter.headers)

        before = dropped()
        if not self._refuse(PAYLOAD_REFUSED, lambda: dropped() > before):
            self.tally.problems.append(
                f"the DLQ refused full dead letters for {REFUSAL_MAX:.0f} s and none was "
                "written without its payload"
            )
        self.tally.dlq_payload_windows += 1

    def _dlq_all(self) -> None:
        """Refuse every dead letter until a member stopped loudly on it."""
        exits = len(self.fleet.exits)
        if not self._refuse(ALL_REFUSED, lambda: len(self.fleet.exits) > exits):
            self.tally.problems.append(
                f"the DLQ refused every dead letter for {REFUSAL_MAX:.0f} s and no member "
                "stopped loudly"
            )
        self.tally.dlq_all_windows += 1

    def _refuse(self, limit: int, happened: Callable[[], bool]) -> bool:
        """Lower the DLQ's limit for 5 s at least, until ``happened()``, at most REFUSAL_MAX."""
        set_max_message_bytes(self.bootstrap, self.dlq, limit)
        started = time.monotonic()
        try:
            while time.monotonic() - started < REFUSAL_MAX:
                time.sleep(1.0)
                if time.monotonic() - started >= 5 and happened():
                    return True
            return False
        finally:
            set_max_message_bytes(self.bootstrap, self.dlq, None)

    def extra_round(self) -> None:
        time.sleep(self.rng.uniform(3.0, 6.0))
        if self.rng.random() < 0.7:
            self._kill()
        else:
            self._term()


def main() -> int:
    """Run the suite; on any failure no member process is left behind."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--outage", type=float, nargs=2, default=(10.0, 30.0))
    parser.add_argument("--scales", type=int, default=2, help="scale-out/scale-in events")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--sleep-ms", type=float, default=10.0, help="I/O per message")
    parser.add_argument(
        "--max-extra", type=int, default=30, help="kills/stops beyond the first round, at most"
    )
    parser.add_argument(
        "--exactly-once", action="store_true", help="processing: exactly_once (see above)"
    )
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="copy member logs and ledgers here"
    )
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    print(f"seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        code = 1  # an exception keeps the logs too
        try:
            code = run(args, Path(tmp))
        finally:
            keep(args, Path(tmp), code)
        return code


def keep(args: argparse.Namespace, tmp: Path, code: int) -> None:
    """Copy the members' logs, the ledgers and the broker's log out of ``tmp`` when asked
    or when the run failed."""
    if code or args.keep_logs:
        kept = args.keep_logs or Path(tempfile.mkdtemp(prefix=f"chaos-logs-{args.seed}-"))
        for name, to in (("logs", "members"), ("chaos", "ledgers")):
            if (tmp / name).exists():
                shutil.copytree(tmp / name, kept / to, dirs_exist_ok=True)
        if (tmp / "broker" / "server.out").exists():
            shutil.copy(tmp / "broker" / "server.out", kept / "broker.out")
        print(f"logs kept in {kept}")


def run(args: argparse.Namespace, work: Path) -> int:
    started = time.monotonic()
    chaos_dir, logs = work / "chaos", work / "logs"
    chaos_dir.mkdir()
    logs.mkdir()
    with local_kafka(work / "broker") as bootstrap:
        queue = f"chaos-{uuid.uuid4().hex[:8]}"
        output, dlq = f"{queue}.followups", f"{queue}.dlq"
        backend = KafkaBackend(bootstrap, partitions=PARTITIONS)
        backend.declare_queue(queue)
        create_topic(bootstrap, output, PARTITIONS)
        config_path = work / "service.yaml"
        config_path.write_text(json.dumps(config(bootstrap, queue, args.exactly_once)))
        publisher = Publisher(json_registry(), backend)
        expected: set[str] = set()
        poison_ids: set[str] = set()
        # a poison key's lane waits ~2 s per poison message: 50 at full size, 20 at CI size
        poison_every = max(500, args.messages // 50)
        for i in range(args.messages):
            if i % poison_every == 7:
                order = DoPayment("poison/" + "x" * POISON_PAD, i)
                poison_ids.add(
                    publisher.publish(
                        queue, order, key=f"poison-{i // poison_every % 11}", message_id=f"m{i:07d}"
                    )
                )
            else:
                order = DoPayment(f"order-{i % 97}", i)
                expected.add(
                    publisher.publish(queue, order, key=order.order_id, message_id=f"m{i:07d}")
                )
        backend.flush(120)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SCHEMA_"))}
        env.update(
            CHAOS_DIR=str(chaos_dir),
            CHAOS_SLEEP_MS=str(args.sleep_ms),
            CHAOS_CONFIG=str(config_path),
            CHAOS_OUTPUT=output,
            PYTHONPATH=str(ROOT),
        )
        if args.exactly_once:
            env["CHAOS_EXACTLY_ONCE"] = "1"
        fleet = Fleet(config_path, logs, env)
        try:
            fleet.start(MEMBERS)
            chaos = Chaos(args, fleet, bootstrap, dlq, work)
            events = ["kill"] * args.kills + ["term", "term", "outage", "transient"]
            events += ["scale"] * args.scales + list(NEW_EVENTS)
            chaos.rng.shuffle(events)
            deadline = time.monotonic() + 120  # the faults are meant for a group at work
            while not ledger(chaos_dir) and time.monotonic() < deadline:
                time.sleep(0.5)
            for event in events:
                time.sleep(chaos.rng.uniform(0.5, 2.0))
                done = len(set(ledger(chaos_dir)))
                print(f"{time.monotonic() - started:6.0f} s  {done:7d} done  {event}", flush=True)
                chaos.event(event)
            # keep killing while most of the work is still ahead, so the faults hit it
            extra = 0
            while len(set(ledger(chaos_dir))) < 0.8 * len(expected) and extra < args.max_extra:
                chaos.extra_round()
                extra += 1
            during_chaos = len(set(ledger(chaos_dir)))
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if args.exactly_once:  # handled is not done until its transaction commits
                    if committed_total(bootstrap, queue, PARTITIONS) >= args.messages:
                        break
                elif expected <= set(ledger(chaos_dir)):
                    break
                time.sleep(1)
            end = time.monotonic() + 120
            while len(dead_letters(bootstrap, dlq)) < len(poison_ids) and time.monotonic() < end:
                time.sleep(3)
            time.sleep(3)  # let the last commits land
            tally = chaos.tally
            for name, code in fleet.close():
                member = next(m for m in fleet.every if m.name == name)
                chaos.judge(member, code, 0)
        finally:
            fleet.kill_all()
        for exit_ in fleet.exits:
            if exit_.reason == "DeadLetterRefusedError":
                tally.loud_stops += 1
            else:
                tally.problems.append(
                    f"{exit_.member} exited {exit_.code}: {exit_.reason}\n{exit_.tail}"
                )
        offsets = committed(bootstrap, queue, queue, PARTITIONS)
        backend.close()
        inputs = read_all(bootstrap, queue)
        kind = ExactlyOnceOutcome if args.exactly_once else Outcome
        outcome = kind(
            expected=expected,
            poison={
                (r.partition, r.offset): r.header("message_id")
                for r in inputs
                if r.header("message_id") in poison_ids
            },
            ledger=ledger(chaos_dir),
            letters=read_all(bootstrap, dlq),
            followups=read_all(bootstrap, output),
            lost_assignments=sum(member.lost_count() for member in fleet.every),
            max_in_flight=MAX_IN_FLIGHT,
        )
        if isinstance(outcome, ExactlyOnceOutcome):
            outcome.written = len(read_all(bootstrap, output, committed_only=False))
            outcome.rewinds = sum(m.text().count(REWIND_LINE) for m in fleet.every)
    elapsed = time.monotonic() - started
    return verdict(args.messages, tally, outcome, queue, during_chaos, sum(offsets), elapsed)


if __name__ == "__main__":
    sys.exit(main())
