"""The exactly-once case: the same forwarding work at least once and exactly once.

Every input makes one output: the consumer publishes a copy of it to an output topic through
a :class:`~service.Publisher` on the dispatcher's own backend (as a service's handler does).
Two contenders, each a fresh consumer group with its own output topic:

* ``at least once`` (the default): each output is confirmed by the broker before its input's
  offset is committed (the commit gate of issue 14);
* ``exactly once`` (``ExactlyOnce``, the default ``interval`` 100 ms / ``max_messages``
  1000): the outputs are staged and written with the input offsets in one transaction.

Throughput (:func:`rate`): the JSON case's records (``bench.records.Order``), counted from the
first message handled to the ``count``-th, as :func:`bench.timing.dispatcher_rate` does; the
figure is the exactly-once rate over the at-least-once rate of the same round.

Latency (:func:`latency`): :mod:`bench.latency_case`'s producer process publishes stamped
records at a fixed rate; the forwarder copies each into the output topic, and a
``read_committed`` reader of that topic takes ``time received - time sent``: input produced
to output visible downstream. Exactly-once adds the wait for the transaction's commit
(on average half the interval, plus the commit itself); the added p50/p99 are the
differences between the two modes of the same round. The reader also counts the outputs:
each input must come out exactly once in both modes.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka import Consumer as RawConsumer

from bench import json_case, latency_case
from bench.report import Row, Table, median, spread
from bench.timing import load
from service import Consumer, JsonSerializer, MessageDispatcher, Publisher, SerializerRegistry
from service.backends.kafka import KafkaBackend
from service.backends.kafka.backend import ExactlyOnce

MODES = ("at least once", "exactly once")
PARTITIONS = latency_case.PARTITIONS
LATENCY_RATE = 2000.0  # inputs/s of the latency runs: well below either mode's maximum
LATENCY_SECONDS = 5.0


class Forward(Consumer):
    """Publishes each input to ``output``; stops the dispatcher after ``target`` inputs."""

    def __init__(self, publisher: Publisher, output: str, target: int) -> None:
        super().__init__()
        self._publisher, self.output, self.target = publisher, output, target
        self.seen, self.started, self.finished = 0, 0.0, 0.0
        self.dispatcher: MessageDispatcher | None = None

    def process(self, message: Any, **kwargs: Any) -> None:
        if not self.seen:
            self.started = time.perf_counter()
        self._publisher.publish(self.output, message, key=kwargs["record"].key)
        self.seen += 1
        if self.seen == self.target and self.dispatcher is not None:
            self.finished = time.perf_counter()
            self.dispatcher.stop()


def _run(
    bootstrap: str,
    topic: str,
    mode: str,
    serializers: SerializerRegistry,
    target: int,
    started: Callable[[Forward], None] | None = None,
) -> Forward:
    """Forward ``topic`` to a fresh output topic in ``mode`` until ``target`` inputs are
    handled; ``started`` (given the running forwarder) runs meanwhile, in this thread."""
    backend = KafkaBackend(bootstrap, partitions=PARTITIONS)
    queue = f"bench-eos-{uuid.uuid4().hex[:8]}"
    eos = ExactlyOnce(f"{queue}.tx") if mode == "exactly once" else None
    backend.declare_queue(queue, topic, create=False, exactly_once=eos)
    output = f"{queue}.out"
    backend.declare_topic(output)
    forward = Forward(Publisher(serializers, backend), output, target)
    dispatcher = MessageDispatcher(serializers, backend=backend, poll_timeout=0.05)
    forward.dispatcher = dispatcher
    dispatcher.attach_consumer(forward)
    loop = threading.Thread(target=dispatcher.consume_loop, args=(queue,), name=f"eos-{mode}")
    loop.start()
    try:
        if started is not None:
            started(forward)
        loop.join(600)
    finally:
        dispatcher.stop()
        loop.join(30)
        backend.close()
    return forward


def rate(bootstrap: str, topic: str, count: int, mode: str) -> float:
    """Inputs per second forwarded in ``mode`` by a fresh group reading ``count`` records of
    ``topic`` (the JSON case's)."""
    forward = _run(bootstrap, topic, mode, json_case.serializers(), count)
    return count / (forward.finished - forward.started)


class _Reader:
    """A ``read_committed`` reader of an output topic: latency of each stamped record."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = RawConsumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-eos-reader-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "fetch.queue.backoff.ms": 10,
            }
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        self.warm = 0
        self.latencies: list[float] = []
        self.outputs: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="eos-reader")
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            for record in self._consumer.consume(1000, 0.05):
                if record.error() is not None:
                    continue
                now = time.time()
                body = json.loads(record.value() or b"{}")
                if body.get("warmup"):
                    self.warm += 1
                else:
                    self.latencies.append(now - body["sent"])
                    self.outputs[body["n"]] += 1

    def close(self, expected: int, timeout: float = 60.0) -> None:
        """Wait for ``expected`` outputs (at most ``timeout``), then stop."""
        deadline = time.monotonic() + timeout
        while len(self.latencies) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a duplicate would come right behind
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def latency(bootstrap: str, mode: str, rate: float, seconds: float) -> tuple[float, float, bool]:
    """(p50 ms, p99 ms, each input out exactly once) of input produced -> output visible to a
    ``read_committed`` reader, forwarding in ``mode`` at ``rate`` inputs/s for ``seconds``."""
    topic = f"bench-eos-in-{uuid.uuid4().hex[:8]}"
    KafkaBackend(bootstrap, partitions=PARTITIONS).declare_topic(topic)
    count = int(rate * seconds)
    serializers = SerializerRegistry({"serializers": {"json": JsonSerializer}, "default": "json"})
    readers: list[_Reader] = []

    def publish(forward: Forward) -> None:
        reader = _Reader(bootstrap, forward.output)
        readers.append(reader)
        latency_case._publish(bootstrap, topic, rate, count, lambda: reader.warm >= PARTITIONS)
        reader.close(count)

    _run(bootstrap, topic, mode, serializers, count + PARTITIONS, publish)
    reader = readers[0]
    p50, p99 = latency_case._percentiles(reader.latencies)
    once = reader.outputs == Counter(range(count))
    return p50, p99, once


def run(
    bootstrap: str, messages: int, rounds: int, table: Table, say: Callable[[str], None]
) -> None:
    """The case's rounds (modes interleaved) and its two rows in ``table``."""
    topic = f"bench-eos-{uuid.uuid4().hex[:8]}"
    KafkaBackend(bootstrap, partitions=PARTITIONS).declare_topic(topic)
    json_case.publish(bootstrap, topic, messages)
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    p50s: dict[str, list[float]] = {mode: [] for mode in MODES}
    p99s: dict[str, list[float]] = {mode: [] for mode in MODES}
    exact, acks = True, []
    for round_ in range(1, rounds + 1):
        for mode in MODES:
            before = load()
            rates[mode].append(rate(bootstrap, topic, messages, mode))
            p50, p99, once = latency(bootstrap, mode, LATENCY_RATE, LATENCY_SECONDS)
            exact = exact and once
            p50s[mode].append(p50)
            p99s[mode].append(p99)
            acks.append(latency_case.ACKS[-1])
            say(
                f"  {mode} round {round_}: {rates[mode][-1]:,.0f} msg/s; at "
                f"{LATENCY_RATE:,.0f}/s produced->visible p50 {p50:.1f} / p99 {p99:.1f} ms "
                f"(inputs' ack p99 {acks[-1]:.0f} ms); each output once: {once}; "
                f"load {before:.1f}->{load():.1f}"
            )
    alo, eos = MODES
    ratios = [e / a for e, a in zip(rates[eos], rates[alo], strict=True)]
    table.ratio(
        "exactly-once forwarding (1 output per input), vs at-least-once",
        ratios,
        0.5,
        detail=(
            f"msg/s {median(rates[eos]):,.0f} vs {median(rates[alo]):,.0f}; transactions "
            "every 100 ms / 1000 messages (the default)"
        ),
    )
    added50 = [e - a for e, a in zip(p50s[eos], p50s[alo], strict=True)]
    added99 = [e - a for e, a in zip(p99s[eos], p99s[alo], strict=True)]
    table.add(
        Row(
            "exactly-once: added latency, input produced -> output visible (read_committed)",
            f"p50 {median(added50):+.1f} ms ({spread(added50, '{:+.1f}')}), "
            f"p99 {median(added99):+.1f} ms ({spread(added99, '{:+.1f}')})",
            "reported",
            None if exact else False,
            f"at {LATENCY_RATE:,.0f} msg/s: exactly once p50 {median(p50s[eos]):.1f} / p99 "
            f"{median(p99s[eos]):.1f} ms ({spread(p99s[eos], '{:.1f}')}), at least once p50 "
            f"{median(p50s[alo]):.1f} / p99 {median(p99s[alo]):.1f} ms "
            f"({spread(p99s[alo], '{:.1f}')}); the inputs' own ack p99 "
            f"{spread(acks, '{:.0f}')} ms; each input's output exactly once in every run: "
            f"{exact}",
        )
    )


def main() -> None:
    """``python -m bench.eos_case``: this case alone (``make bench`` runs it too)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from bench.__main__ import broker, machine, say  # here: bench.__main__ imports this module

    first = os.getloadavg()
    say(f"machine: {machine()}; load (1/5/15 min) {first[0]:.1f}/{first[1]:.1f}/{first[2]:.1f}")
    table = Table()
    with broker() as bootstrap:
        run(bootstrap, args.messages, args.rounds, table, say)
    last = os.getloadavg()
    say(f"load at the end (1/5/15 min) {last[0]:.1f}/{last[1]:.1f}/{last[2]:.1f}")
    say("\n".join(table.markdown()))


if __name__ == "__main__":
    main()
