"""Where the dispatcher spends its time: py-spy (sampling, on the real broker) and cProfile.

``python -m bench.profile_case`` publishes ``--messages`` JSON records (the JSON case's), then:

1. runs the dispatcher over them in a child process under ``py-spy record`` (sampling at
   ``--rate`` Hz, the child undisturbed by instrumentation), writing
   ``bench/results/profile.speedscope.json`` (open it at speedscope.app) and the collapsed
   stacks ``profile.folded``;
2. runs it again in this process under cProfile (deterministic; it inflates the cost of
   small Python calls, so read it for call counts, py-spy for shares);
3. times it with the cyclic garbage collector on and off (py-spy charges a collection to
   whatever allocation triggered it);
4. writes ``bench/results/profile.md``: the functions and lines with the largest share of
   samples, by own time (the function itself, not what it calls) and by total time.

py-spy needs ptrace rights over the child (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import io
import os
import pathlib
import pstats
import re
import shutil
import subprocess
import sys
import uuid
from typing import NamedTuple

from confluent_kafka.admin import AdminClient

from bench import json_case
from bench.timing import load, timed
from service.backends.kafka import KafkaBackend

RESULTS = pathlib.Path(__file__).parent / "results"
ROOT = pathlib.Path(__file__).resolve().parents[1]
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


def _short(file: str) -> str:
    """``service/dispatch/loop.py`` rather than the absolute path; site-packages trimmed."""
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file.rsplit("/lib/python3", 1)[-1] if "/lib/python3" in file else file


LOOP = "ConsumeLoop.run (service/dispatch/loop.py)"


class Folded(NamedTuple):
    """Samples of collapsed stacks; only those inside :data:`LOOP` are attributed (start-up,
    imports and publishing are not the dispatcher's steady state)."""

    everything: int
    inside: int
    own: collections.Counter[str]  # per function, the function itself
    total: collections.Counter[str]  # per function, with what it calls
    lines: collections.Counter[str]  # per source line, own samples


def fold(lines: list[str]) -> Folded:
    """Fold py-spy's collapsed stacks (``frame;frame;... count``) into :class:`Folded`."""
    own: collections.Counter[str] = collections.Counter()
    hot_lines: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    everything = inside = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names: list[str] = []
        line_of_last = ""
        for frame in stack.split(";"):
            match = _FRAME.match(frame.strip())
            if match is None:  # process / thread labels
                continue
            name = f"{match['function']} ({_short(match['file'])})"
            if match["file"] == "<string>" and names:  # generated code: say whose
                name = f"{match['function']} (generated, called by {names[-1]})"
            names.append(name)
            line_of_last = f"{_short(match['file'])}:{match['line']} ({match['function']})"
        everything += count
        if LOOP not in names:
            continue
        names = names[names.index(LOOP) :]
        inside += count
        own[names[-1]] += count
        hot_lines[line_of_last] += count
        for name in set(names):
            total[name] += count
    return Folded(everything, inside, own, total, hot_lines)


def _table(title: str, counter: collections.Counter[str], samples: int, top: int) -> list[str]:
    lines = [f"### {title}", "", "| where | % of samples |", "|---|---|"]
    lines += [f"| `{name}` | {100 * n / samples:.1f} |" for name, n in counter.most_common(top)]
    return [*lines, ""]


def spy(topic: str, count: int, rate: int) -> list[str]:
    """Collapsed stacks of the dispatcher reading ``count`` records of ``topic``."""
    pyspy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
    target = [sys.executable, "-m", "bench.profile_case", "--target", topic, str(count)]
    RESULTS.mkdir(exist_ok=True)
    folded = RESULTS / "profile.folded"
    for fmt, out in (("speedscope", RESULTS / "profile.speedscope.json"), ("raw", folded)):
        subprocess.run(  # noqa: S603 - our own tools and arguments
            [pyspy, "record", "--rate", str(rate), "--format", fmt, "-o", str(out), "--", *target],
            cwd=ROOT,
            check=True,
            timeout=600,
            stdout=subprocess.DEVNULL,
        )
    return folded.read_text().splitlines()


def cprofile(bootstrap: str, topic: str, count: int, top: int) -> str:
    """The cProfile table (by own time) of the dispatcher reading ``count`` records."""
    profiler = cProfile.Profile()
    profiler.enable()
    json_case.dispatcher_loop(bootstrap, topic, count)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return out.getvalue()


def gc_cost(bootstrap: str, topic: str, count: int, rounds: int = 2) -> list[str]:
    """CPU per message with the cyclic garbage collector on and off, interleaved.

    py-spy charges a collection to whichever allocation triggered it (often a NamedTuple's
    ``__new__``), so its cost shows only when measured directly.
    """
    lines = ["| gc | msg/s | CPU us/msg | collections gen0/1/2 | load |", "|---|---|---|---|---|"]
    try:
        for _ in range(rounds):
            for enabled in (True, False):
                if enabled:
                    gc.enable()
                else:
                    gc.disable()
                before = [stat["collections"] for stat in gc.get_stats()]
                sample = timed(lambda: json_case.dispatcher_loop(bootstrap, topic, count), count)
                after = [stat["collections"] for stat in gc.get_stats()]
                done = "/".join(str(a - b) for a, b in zip(after, before, strict=True))
                lines.append(
                    f"| {'on' if enabled else 'off'} | {sample.rate:,.0f} | {sample.cpu_us:.1f} "
                    f"| {done} | {sample.load_before:.1f}->{sample.load_after:.1f} |"
                )
    finally:
        gc.enable()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--topic", help="an existing JSON-case topic (skip publishing)")
    parser.add_argument("--target", nargs=2, metavar=("TOPIC", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    if args.target:  # the child py-spy samples
        rate = json_case.dispatcher_loop(bootstrap, args.target[0], int(args.target[1]))
        print(f"profiled run: {rate:,.0f} msg/s", file=sys.stderr)
        return
    topic = args.topic
    if topic is None:
        topic = f"bench-profile-{uuid.uuid4().hex[:8]}"
        KafkaBackend(bootstrap, partitions=6).declare_topic(topic)
        json_case.publish(bootstrap, topic, args.messages)
    before = load()
    folded = fold(spy(topic, args.messages, args.rate))
    samples = folded.inside
    stats = cprofile(bootstrap, topic, args.messages, args.top)
    collector = gc_cost(bootstrap, topic, args.messages)
    lines = [
        f"# Dispatcher profile: JSON into a dataclass, no-op consumer, {args.messages:,} records",
        "",
        f"py-spy at {args.rate} Hz: {samples:,} samples inside `ConsumeLoop.run` (of "
        f"{folded.everything:,}; start-up and imports left out). librdkafka's threads are native "
        f"and not sampled; idle waits are excluded. Load {before:.1f}->{load():.1f}. "
        "Flame graph: `profile.speedscope.json` (speedscope.app).",
        "",
        *_table("Own time (the function itself)", folded.own, samples, args.top),
        *_table("Total time (the function and what it calls)", folded.total, samples, args.top),
        *_table(
            "Hot lines (own time; a C call is counted on its line)", folded.lines, samples, args.top
        ),
        "### The garbage collector (same records, interleaved runs)",
        "",
        *collector,
        "",
        "### cProfile (own time; instrumentation inflates small calls)",
        "",
        "```",
        stats.strip(),
        "```",
        "",
    ]
    if args.topic is None:  # the records this run published
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.delete_topics([topic], operation_timeout=30).values():
            future.result(timeout=60)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
