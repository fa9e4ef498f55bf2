"""The MessagingBackend contract (service/backends/base.py), run on every backend."""

from __future__ import annotations

import time

from service import DeadLetterReason, Message, Subscription
from service.backends.base import SubscriptionListener, TopicPartition
from tests.contract.conftest import Harness, partitions_of

HEADERS = (("serializer_id", b"1"), ("manifest", b"T"), ("message_id", b"id"))


def publish(harness: Harness, topic: str, count: int, key: bytes | None = b"k") -> None:
    for i in range(count):
        harness.backend.publish(topic, f"v{i}".encode(), key=key, headers=HEADERS)


def test_messages_arrive_in_order_with_their_record_fields(harness: Harness) -> None:
    queue, topic = harness.name("q"), harness.name("t")
    harness.backend.declare_topic(topic, partitions=1)
    harness.backend.declare_queue(queue, topic)
    publish(harness, topic, 3)
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 3)
        for m in got:
            sub.acknowledge(m)
    assert [m.value for m in got] == [b"v0", b"v1", b"v2"]
    assert [m.offset for m in got] == [0, 1, 2]
    assert {(m.topic, m.partition, m.key, m.attempt) for m in got} == {(topic, 0, b"k", 1)}
    assert all(m.headers[-3:] == HEADERS for m in got)


def test_acknowledged_messages_are_not_delivered_again(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 2)
    with harness.backend.subscribe(queue) as sub:
        for m in harness.poll_until(sub, 2):
            sub.acknowledge(m)
    publish(harness, queue, 1)
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 1)
        got += harness.poll_until(sub, 1, wait=harness.quiet)
    assert [m.offset for m in got] == [2]


def test_undone_messages_are_delivered_again_after_reopening(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 3)
    with harness.backend.subscribe(queue) as sub:
        first = harness.poll_until(sub, 3)
        sub.acknowledge(first[1])  # out of order: 0 and 2 stay undone
    with harness.backend.subscribe(queue) as sub:
        again = harness.poll_until(sub, 3)
        for m in again:
            sub.acknowledge(m)
    offsets = [m.offset for m in again]
    assert 0 in offsets and 2 in offsets  # 1 may come again too (Kafka commits below 0)
    assert offsets == sorted(offsets)


def test_redelivered_message_comes_again(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 1)
    with harness.backend.subscribe(queue) as sub:
        [m] = harness.poll_until(sub, 1)
        sub.redeliver(m, delay=0.0)
        again = harness.poll_until(sub, 1)
        for x in again:
            sub.acknowledge(x)
    assert [(x.offset, x.value, x.attempt) for x in again] == [(0, b"v0", 2)]


def test_dead_letter_publishes_with_reason_headers_and_counts_as_done(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_topic(f"{queue}.dlq")
    harness.backend.declare_queue(queue)
    publish(harness, queue, 1)
    reason = DeadLetterReason("DeserializationError", "bad bytes", 3, ("a.B", "c.D"))
    with harness.backend.subscribe(queue) as sub:
        [m] = harness.poll_until(sub, 1)
        sub.dead_letter(m, reason)
    [dead] = harness.read_topic(f"{queue}.dlq", 1)
    assert dead.value == b"v0" and dead.key == b"k"
    assert dead.header("message_id") == b"id"
    assert dead.header("dlq.original_topic") == queue.encode()
    assert dead.header("dlq.original_offset") == b"0"
    assert dead.header("dlq.error_class") == b"DeserializationError"
    assert dead.header("dlq.error_text") == b"bad bytes"
    assert dead.header("dlq.attempts") == b"3"
    assert dead.header("dlq.failing_consumers") == b"a.B,c.D"
    with harness.backend.subscribe(queue) as sub:
        assert harness.poll_until(sub, 1, wait=harness.quiet * 2) == []


def test_pattern_binding_reads_every_matching_topic(harness: Harness) -> None:
    queue, base = harness.name("q"), harness.name("orders")
    for suffix in ("eu", "us"):
        harness.backend.declare_topic(f"{base}-{suffix}")
        publish(harness, f"{base}-{suffix}", 1)
    harness.backend.declare_topic(f"other-{base}")
    publish(harness, f"other-{base}", 1)
    harness.backend.declare_queue(queue, f"^{base}-.*")
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 2)
        got += harness.poll_until(sub, 1, wait=harness.quiet)
        for m in got:
            sub.acknowledge(m)
    assert sorted(m.topic for m in got) == [f"{base}-eu", f"{base}-us"]


def test_keys_keep_partition_order_across_partitions(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue, partitions=3)
    harness.backend.declare_queue(queue)
    for i in range(30):
        harness.backend.publish(queue, str(i).encode(), key=f"key{i % 5}".encode(), headers=HEADERS)
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 30)
        for m in got:
            sub.acknowledge(m)
    by_key: dict[bytes | None, list[int]] = {}
    partitions: dict[bytes | None, set[int]] = {}
    for m in got:
        assert m.value is not None
        by_key.setdefault(m.key, []).append(int(m.value))
        partitions.setdefault(m.key, set()).add(m.partition)
    assert len(got) == 30
    assert all(v == sorted(v) for v in by_key.values())
    assert all(len(p) == 1 for p in partitions.values())


def test_declare_topic_never_alters_an_existing_topic(harness: Harness) -> None:
    topic = harness.name("t")
    harness.backend.declare_topic(topic, partitions=2)
    harness.backend.declare_topic(topic, partitions=5)
    for i in range(20):
        harness.backend.publish(topic, b"x", key=str(i).encode(), headers=HEADERS)
    records = harness.read_topic(topic, 20)
    assert {m.partition for m in records} <= {0, 1}


# -- back-pressure ---------------------------------------------------------------------------
class Events:
    """The rebalance events of several members, in one sequence."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, tuple[TopicPartition, ...]]] = []

    def listener(self, member: str) -> SubscriptionListener:
        events = self

        class Listener:
            def on_assigned(self, partitions: list[TopicPartition]) -> None:
                events.log.append((member, "assigned", tuple(partitions)))

            def on_revoked(self, partitions: list[TopicPartition]) -> None:
                events.log.append((member, "revoked", tuple(partitions)))

            def on_lost(self, partitions: list[TopicPartition]) -> None:
                events.log.append((member, "lost", tuple(partitions)))

        return Listener()

    def owned(self, member: str) -> set[TopicPartition]:
        held: set[TopicPartition] = set()
        for who, kind, partitions in self.log:
            if who == member:
                if kind == "assigned":
                    held.update(partitions)
                else:
                    held.difference_update(partitions)
        return held

    def kinds(self, member: str) -> list[str]:
        return [kind for who, kind, partitions in self.log if who == member and partitions]

    def first(self, member: str, kind: str, tp: TopicPartition) -> int:
        return next(
            i
            for i, (who, k, parts) in enumerate(self.log)
            if (who, k) == (member, kind) and tp in parts
        )


def join(harness: Harness, queue: str, events: Events, member: str) -> Subscription:
    sub = harness.backend.subscribe(queue)
    sub.add_listener(events.listener(member))
    return sub


def test_a_paused_partition_is_not_fetched_until_resumed(harness: Harness) -> None:
    queue, first, second = harness.name("q"), harness.name("t"), harness.name("t")
    for topic in (first, second):
        harness.backend.declare_topic(topic)
    harness.backend.declare_queue(queue, first, second)
    events = Events()
    with join(harness, queue, events, "a") as sub:
        harness.poll_while([sub], lambda: len(events.owned("a")) == 2)
        sub.pause([(first, 0)])
        publish(harness, first, 2)
        publish(harness, second, 2)
        got = harness.poll_until(sub, 2)
        got += harness.poll_until(sub, 1, wait=harness.quiet)
        assert [(m.topic, m.offset) for m in got] == [(second, 0), (second, 1)]
        sub.resume([(first, 0)])
        more = harness.poll_until(sub, 2)
        for m in got + more:
            sub.acknowledge(m)
    assert [(m.topic, m.offset) for m in more] == [(first, 0), (first, 1)]


# -- listeners -------------------------------------------------------------------------------
def test_a_member_hears_its_assignment_inside_poll(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue, partitions=2)
    harness.backend.declare_queue(queue)
    events = Events()
    with join(harness, queue, events, "a") as sub:
        assert events.log == []  # nothing before the first poll
        harness.poll_while([sub], lambda: len(events.owned("a")) == 2)
        assert events.owned("a") == set(partitions_of(queue, 2))
        assert events.kinds("a") == ["assigned"] * len(events.kinds("a"))
    assert events.kinds("a")[-1] == "revoked"  # close revokes what is owned
    assert events.owned("a") == set()


def test_a_second_member_gets_partitions_only_after_the_first_revoked_them(
    harness: Harness,
) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue, partitions=2)
    harness.backend.declare_queue(queue)
    for i in range(20):
        harness.backend.publish(queue, b"x", key=f"k{i}".encode(), headers=HEADERS)
    events = Events()
    with join(harness, queue, events, "a") as a:
        got = harness.poll_until(a, 20)
        assert len(got) == 20
        for m in got:
            a.acknowledge(m)
        with join(harness, queue, events, "b") as b:
            late = harness.poll_while(
                [b, a],  # b first: it must wait for a to let go
                lambda: (
                    bool(events.owned("b"))
                    and events.owned("a") | events.owned("b") == set(partitions_of(queue, 2))
                ),
            )
            owned_a, owned_b = events.owned("a"), events.owned("b")
            assert owned_a and owned_b and not owned_a & owned_b
            for tp in owned_b:
                assert events.first("a", "revoked", tp) < events.first("b", "assigned", tp)
            late += harness.poll_until(b, 1, wait=harness.quiet)
    assert late == []  # the revocation committed what a had done: b starts after it


def test_a_lost_partition_commits_nothing_and_starts_afresh_unpaused(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 2)
    events = Events()
    tp = (queue, 0)
    with join(harness, queue, events, "a") as sub:
        got = harness.poll_until(sub, 2)
        sub.acknowledge(got[0])  # not committed before the loss (no poll since)
        sub.pause([tp])
        harness.lose(queue, sub)
        again = harness.poll_while(
            [sub], lambda: "lost" in events.kinds("a") and tp in events.owned("a")
        )
        sub.acknowledge(got[1])  # stale: the partition was lost since
        again += harness.poll_until(sub, 2 - len(again))  # not paused any more
        for m in again:
            sub.acknowledge(m)
    kinds = events.kinds("a")
    assert kinds.index("lost") < len(kinds) - 1 - kinds[::-1].index("assigned")
    assert [(m.offset, m.attempt) for m in again] == [(0, 1), (1, 1)]


# -- redelivery ------------------------------------------------------------------------------
def test_a_redelivery_waits_its_delay_and_holds_only_its_partition(harness: Harness) -> None:
    queue, held, other = harness.name("q"), harness.name("t"), harness.name("t")
    for topic in (held, other):
        harness.backend.declare_topic(topic)
    harness.backend.declare_queue(queue, held, other)
    publish(harness, held, 2)
    with harness.backend.subscribe(queue) as sub:
        [m] = harness.poll_until(sub, 1)
        assert (m.topic, m.offset) == (held, 0)
        asked = harness.clock()
        sub.redeliver(m, delay=2.0)
        publish(harness, other, 1)
        flowing = harness.poll_until(sub, 1)
        arrivals: list[tuple[Message, float]] = []  # and when, on the backend's clock
        end = time.monotonic() + harness.deadline + 2.0
        while len(arrivals) < 2 and time.monotonic() < end:
            arrivals += [(x, harness.clock()) for x in sub.poll(2, 0.2) or []]
        for x in [*flowing, *(x for x, _ in arrivals)]:
            sub.acknowledge(x)
    assert [(x.topic, x.offset) for x in flowing] == [(other, 0)]
    assert [(x.topic, x.offset, x.attempt) for x, _ in arrivals] == [(held, 0, 2), (held, 1, 1)]
    assert arrivals[0][1] - asked >= 2.0


def test_nothing_behind_a_redelivery_is_delivered_before_it(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 3)
    with harness.backend.subscribe(queue) as sub:
        [m] = harness.poll_until(sub, 1)
        sub.redeliver(m, delay=0.5)
        rest = harness.poll_until(sub, 3, wait=harness.deadline + 0.5)
        for x in rest:
            sub.acknowledge(x)
    assert [(x.offset, x.attempt) for x in rest] == [(0, 2), (1, 1), (2, 1)]


def test_two_redeliveries_in_one_partition_both_come_back_and_hold_the_commit(
    harness: Harness,
) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 3)
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 3)
        sub.redeliver(got[1], delay=0.3)
        sub.redeliver(got[0], delay=0.6)  # the lower one last: it must not be overwritten
        sub.acknowledge(got[2])
        again = harness.poll_until(sub, 2, wait=harness.deadline + 0.6)
        assert [(x.offset, x.attempt) for x in again] == [(0, 2), (1, 2)]
        sub.acknowledge(again[1])  # the higher one only
    assert harness.committed(queue, queue, 1)[0] <= 0  # the close never passed offset 0
    with harness.backend.subscribe(queue) as sub:
        after = harness.poll_until(sub, 1)
        sub.acknowledge(after[0])
    assert [x.offset for x in after] == [0]


def test_a_released_message_comes_again_as_the_same_attempt(harness: Harness) -> None:
    queue = harness.name("q")
    harness.backend.declare_topic(queue)
    harness.backend.declare_queue(queue)
    publish(harness, queue, 2)
    with harness.backend.subscribe(queue) as sub:
        got = harness.poll_until(sub, 2)
        sub.release(got[0])
        sub.acknowledge(got[1])
        again = harness.poll_until(sub, 1)
        for x in again:
            sub.acknowledge(x)
        again += harness.poll_until(sub, 1, wait=harness.quiet)
    assert [(x.offset, x.attempt) for x in again] == [(0, 1)]
