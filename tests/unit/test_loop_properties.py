"""The consume loop's promises under random interleavings (issue 12), on the in-memory backend.

A hypothesis state machine publishes messages whose consumers fail for a while (transient)
or for good (poison), and runs the real dispatcher (inline, or on lanes with small limits so
that back-pressure pauses partitions) while the group rebalances, loses its partitions, a
member joins or leaves, the dead-letter topic refuses records, the loop is stopped and the
dispatcher restarted (a fresh dispatcher: its memory of partial progress is gone; the dedup
store, like a durable one, stays). Checked after every step, and inside the loop after
every settled message:

* no committed offset passes a message that was neither processed nor dead-lettered;
* no partition is paused by back-pressure without a message of it in hand (else nothing
  would resume it);
* a consumer that succeeded on a message never runs on it again while the dedup store holds
  its entry (entries do not expire here, so: never);

and at the end, after one last undisturbed loop: every message was processed by every
consumer or dead-lettered, nothing is pending, and every partition is committed to its end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from service import (
    Consumer,
    InMemoryBackend,
    InMemoryCache,
    Message,
    MessageDispatcher,
    ProduceError,
    Publisher,
    RetryPolicy,
    TransientError,
)
from service.backends.memory import InMemorySubscription
from tests.payments import DoPayment, json_registry

QUEUE, TOPIC, DLQ = "loop-q", "loop-in", "loop-q.dlq"
PARTITIONS = 3
KEYS = [f"key-{i}".encode() for i in range(6)]
HANG = 3.0  # seconds (real) after which a loop counts as hung; a drained loop takes ms
RETRY = RetryPolicy(max_attempts=3, backoff_base=0.1, backoff_max=1.0, jitter=0.5)


@dataclass(frozen=True)
class Plan:
    """How one consumer behaves on one message."""

    transient: int  # failures that may pass, before it succeeds
    poison: bool  # fails for good: the message is dead-lettered


PLANS = st.builds(Plan, st.integers(0, 2), st.sampled_from([False] * 5 + [True]))
MESSAGES = st.tuples(st.sampled_from(KEYS), PLANS, PLANS)


class World:
    """What the consumers did, kept apart from the system under test."""

    def __init__(self, cache: InMemoryCache) -> None:
        self.cache = cache
        self.plans: dict[tuple[str, str], Plan] = {}
        self.failed: dict[tuple[str, str], int] = {}
        self.succeeded: set[tuple[str, str]] = set()
        self.violations: list[str] = []

    def run(self, name: str, message_id: str) -> None:
        key = (name, message_id)
        if key in self.succeeded and self.cache.get(f"{name}.{message_id}") is not None:
            self.violations.append(f"{name} ran again on {message_id} while dedup held it")
        plan = self.plans[key]
        if plan.poison:
            raise RuntimeError(f"poison {message_id}")
        if self.failed.get(key, 0) < plan.transient:
            self.failed[key] = self.failed.get(key, 0) + 1
            raise TransientError(f"not yet {message_id}")
        self.succeeded.add(key)


class Recording(Consumer):
    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world

    def process(self, message: Any, **kwargs: Any) -> None:
        self.world.run(self.name, kwargs["message_id"])


class First(Recording):
    pass


class Second(Recording):
    pass


CONSUMERS = (First, Second)
NAMES = tuple(f"{c.__module__}.{c.__qualname__}" for c in CONSUMERS)

# concurrency, ordering, max_in_flight_per_partition (with 1, nothing queues behind a message)
SETUPS = st.tuples(
    st.sampled_from([1, 2, 4]), st.sampled_from(["partition", "key"]), st.integers(1, 3)
)
ACTIONS = st.sampled_from(
    [
        "rebalance",
        "lose_member",
        "lose_partition",
        "stop",
        "refuse_dlq",
        "refuse_dlq_for_good_once",
        "join",
        "leave",
    ]
)


def run_to_end(dispatcher: MessageDispatcher, after_consume: Callable[[], None]) -> None:
    """Run the loop until the backend is drained; a loop still running after HANG fails."""
    hung = threading.Event()

    def give_up() -> None:
        hung.set()
        dispatcher.stop()

    watchdog = threading.Timer(HANG, give_up)
    watchdog.start()
    try:
        dispatcher.consume_loop(QUEUE, after_consume=after_consume)
    finally:
        watchdog.cancel()
    assert not hung.is_set(), f"the loop still ran after {HANG}s (a hang)"


class CheckedBackend(InMemoryBackend):
    """Calls ``before_poll(member)`` before every poll of its members."""

    def __init__(self, before_poll: Callable[[InMemorySubscription], None]) -> None:
        super().__init__()
        self.before_poll = before_poll

    def subscribe(self, queue_name: str) -> InMemorySubscription:
        member = super().subscribe(queue_name)
        poll = member.poll

        def checked(max_messages: int, timeout: float) -> Iterator[Message] | None:
            self.before_poll(member)
            return poll(max_messages, timeout)

        member.poll = checked  # type: ignore[method-assign]
        return member


class LoopMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.backend = CheckedBackend(self.check_member_pauses)
        self.backend.declare_topic(TOPIC, PARTITIONS)
        self.backend.declare_topic(DLQ)
        self.backend.declare_queue(QUEUE, TOPIC, dead_letter_topic=DLQ)
        self.cache = InMemoryCache(clock=self.backend.clock)
        self.world = World(self.cache)
        self.publisher = Publisher(json_registry(), self.backend)
        self.ids: dict[tuple[int, int], str] = {}  # (partition, offset) -> message id
        self.idle: list[InMemorySubscription] = []
        self.dispatcher = self._dispatcher(1)

    def _dispatcher(
        self, concurrency: int, ordering: str = "partition", per_partition: int = 1
    ) -> MessageDispatcher:
        dispatcher = MessageDispatcher(
            json_registry(),
            cache=self.cache,
            backend=self.backend,
            retry=RETRY,
            poll_batch=4,
            concurrency=concurrency,
            ordering=ordering,  # type: ignore[arg-type]
            max_in_flight=4 if concurrency > 1 else None,
            max_in_flight_per_partition=per_partition if concurrency > 1 else None,
            revoke_timeout=5.0,
        )
        for consumer in CONSUMERS:
            dispatcher.attach_consumer(consumer(self.world))
        return dispatcher

    # -- steps ---------------------------------------------------------------------------
    @initialize(messages=st.lists(MESSAGES, min_size=2, max_size=8), setup=SETUPS)
    def start(self, messages: list[tuple[bytes, Plan, Plan]], setup: tuple[int, str, int]) -> None:
        self.dispatcher = self._dispatcher(*setup)
        self.publish(messages)

    @rule(messages=st.lists(MESSAGES, min_size=1, max_size=4))
    def publish(self, messages: list[tuple[bytes, Plan, Plan]]) -> None:
        for key, first, second in messages:
            message_id = f"m{len(set(self.ids.values()))}"
            for name, plan in zip(NAMES, (first, second), strict=True):
                self.world.plans[(name, message_id)] = plan
            self._send(key, message_id)

    @rule(data=st.data())
    def republish(self, data: st.DataObject) -> None:
        """A duplicate: the same message id again, maybe under another key."""
        message_id = data.draw(st.sampled_from(sorted(set(self.ids.values()))))
        self._send(data.draw(st.sampled_from(KEYS)), message_id)

    def _send(self, key: bytes, message_id: str) -> None:
        before = {(m.partition, m.offset) for m in self.backend.records(TOPIC)}
        self.publisher.publish(TOPIC, DoPayment(message_id, 1), key=key, message_id=message_id)
        [new] = {(m.partition, m.offset) for m in self.backend.records(TOPIC)} - before
        self.ids[new] = message_id

    @rule(setup=SETUPS)
    def restart(self, setup: tuple[int, str, int]) -> None:
        """A new process: no memory of partial progress; the dedup store stays."""
        self.dispatcher = self._dispatcher(*setup)

    @rule(events=st.lists(st.tuples(st.integers(0, 5), ACTIONS), max_size=3))
    def consume(self, events: list[tuple[int, str]]) -> None:
        schedule = sorted(events)
        settled = 0

        def after_consume() -> None:
            nonlocal settled
            settled += 1
            while schedule and schedule[0][0] <= settled:
                self._act(schedule.pop(0)[1])
            self.check_commits()
            self.check_pauses()

        for _, action in [e for e in schedule if e[0] == 0]:
            self._act(action)
        schedule = [e for e in schedule if e[0] > 0]
        alone = not self.idle and all(a not in ("stop", "join") for _, a in events)
        run_to_end(self.dispatcher, after_consume)
        if alone and not self.idle:  # drained: nothing may be stranded in the member
            unfinished = [p for p in self.ids if not self.finished(p)]
            assert unfinished == [], f"the loop ended with {unfinished} undone"

    @rule()
    def join(self) -> None:
        self._act("join")

    @rule()
    def leave(self) -> None:
        self._act("leave")

    @rule(times=st.integers(1, 3))
    def refuse_dead_letters(self, times: int) -> None:
        self.backend.refuse_publishes(DLQ, times)

    def _act(self, action: str) -> None:
        backend, member = self.backend, self.dispatcher.subscription
        event(f"{action} (concurrency {self.dispatcher.concurrency}, in loop {member is not None})")
        if action == "rebalance":
            backend.rebalance(QUEUE)
        elif action == "lose_member" and isinstance(member, InMemorySubscription):
            backend.lose(QUEUE, member)
        elif action == "lose_partition" and isinstance(member, InMemorySubscription):
            backend.lose(QUEUE, member.assignment[:1])
        elif action == "stop":
            self.dispatcher.stop()
        elif action == "refuse_dlq":
            backend.refuse_publishes(DLQ, 2)
        elif action == "refuse_dlq_for_good_once":  # the payload-less copy gets through
            backend.refuse_publishes(DLQ, 1, lambda: ProduceError("too large", permanent=True))
        elif action == "join":
            self.idle.append(backend.subscribe(QUEUE))  # never polls: holds nothing
        elif action == "leave" and self.idle:
            self.idle.pop(0).close()

    # -- properties ----------------------------------------------------------------------
    def finished(self, position: tuple[int, int]) -> bool:
        """Processed by every consumer (under its message id), or dead-lettered."""
        message_id = self.ids[position]
        processed = all((name, message_id) in self.world.succeeded for name in NAMES)
        return processed or position in self.dead_lettered()

    def dead_lettered(self) -> set[tuple[int, int]]:
        return {(d.message.partition, d.message.offset) for d in self.backend.dead_letters(QUEUE)}

    @invariant()
    def check_commits(self) -> None:
        for (topic, partition), position in self.backend.committed(QUEUE).items():
            assert topic == TOPIC
            for offset in range(position):
                assert self.finished((partition, offset)), (
                    f"committed {partition}@{position} passes {self.ids[(partition, offset)]}"
                )

    @invariant()
    def check_pauses(self) -> None:
        member = self.dispatcher.subscription
        if isinstance(member, InMemorySubscription):
            self.check_member_pauses(member)

    def check_member_pauses(self, member: InMemorySubscription) -> None:
        """Paused by back-pressure only with work in hand, so its resume will come.

        A partition's own message in hand (its executor lane or the loop's held queue is
        full), or any (the executor as a whole is full: every partition waits for room).
        """
        if member.is_closed:
            return
        for tp in member.held:
            event("a partition paused by back-pressure")
            assert member.in_flight(tp) or any(member.in_flight(p) for p in member.assignment), (
                f"{tp} is paused with nothing in hand"
            )

    @invariant()
    def check_dedup(self) -> None:
        assert self.world.violations == []

    def teardown(self) -> None:
        """At the end: one undisturbed loop, then every message is finished."""
        self.backend.accept_publishes(DLQ)
        for member in self.idle:
            member.close()
        run_to_end(self._dispatcher(1), self.check_commits)
        unfinished = [p for p in self.ids if not self.finished(p)]
        event(f"{len(self.dead_lettered())} dead letters of {len(self.ids)} messages")
        assert unfinished == []
        assert self.backend.pending(QUEUE) == []
        ends = {(TOPIC, p): 0 for p in range(PARTITIONS)}
        for partition, offset in self.ids:
            ends[(TOPIC, partition)] = max(ends[(TOPIC, partition)], offset + 1)
        committed = self.backend.committed(QUEUE)
        assert {tp: committed.get(tp, 0) for tp in ends} == ends
        assert self.world.violations == []


LoopMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_consume_loop_properties = LoopMachine.TestCase
