"""The Quix Streams baseline: the JSON case's records, stateless, into ``Order``.

Quix Streams pins an older confluent-kafka (< 2.13) than the service, so it lives in its own
virtual environment, ``.local/bench-quix`` (``make bench`` creates it: ``pip install
quixstreams==3.28.1``), and runs in a child process: :func:`rate` starts this module with
that interpreter, which prints one JSON line ``{"rate": msg/s, "cpu_us": per message}``.

Quix at its best, from its source (``quixstreams/app.py``): ``fetch.queue.backoff.ms`` 10
(Quix's own default is 100, librdkafka's 1000) through ``consumer_extra_config``; no
changelog topics (stateless); its default 5 s commit interval; log level WARNING. Its JSON
deserializer (orjson) gives a dict, and ``sdf.apply`` builds the ``Order`` from it; Quix
reads every record's headers into its row itself. Quix polls one record per call.
"""

from __future__ import annotations

import gc
import json
import pathlib
import subprocess
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".local" / "bench-quix" / "bin" / "python"
VERSION = "3.28.1"


def rate(bootstrap: str, topic: str, count: int) -> tuple[float, float] | None:
    """(msg/s, CPU us per message) of Quix Streams, or None when its venv is missing."""
    if not PYTHON.exists():
        return None
    done = subprocess.run(  # noqa: S603 - our own module and arguments
        [str(PYTHON), "-m", "bench.quix_case", bootstrap, topic, str(count)],
        cwd=ROOT,
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["rate"]), float(result["cpu_us"])


def run(bootstrap: str, topic: str, count: int) -> None:  # pragma: no cover - Quix venv
    """The child: read ``count`` records of ``topic`` with a Quix Streams application."""
    from quixstreams import Application  # type: ignore[import-not-found]

    from bench.records import Order

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        consumer_extra_config={"fetch.queue.backoff.ms": 10},
        use_changelog_topics=False,
        loglevel="WARNING",
    )
    seen = [0, 0.0, 0.0]  # records, first one's time, last one's time

    def counted(order: Order) -> None:
        if not seen[0]:
            seen[1] = time.perf_counter()
        seen[0] += 1
        if seen[0] == count:
            seen[2] = time.perf_counter()

    sdf = app.dataframe(app.topic(topic, value_deserializer="json"))
    sdf = sdf.apply(lambda value: Order(**value)).update(counted)
    gc.collect()
    gc.freeze()  # as bench.timing.timed does for the other contenders
    cpu = time.process_time()
    app.run(count=count)
    elapsed = seen[2] - seen[1]
    cpu_us = (time.process_time() - cpu) / count * 1e6
    print(json.dumps({"rate": count / elapsed, "cpu_us": cpu_us}))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
