"""Memory of one member at steady state (the dedup restore's: :mod:`bench.restore_case`).

The figure comes from a fresh child process (``python -m bench.memory_case steady ...``),
so nothing the bench itself holds is counted: a dispatcher (JSON case, no-op consumer, the
service's consumer defaults) reads ``count`` records; the resident size (``VmRSS``) is
read when the last one is processed, with librdkafka's prefetch queue still full, and the
peak (``VmHWM``).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import uuid
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _status() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MiB."""
    fields: dict[str, float] = {}
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def child(*args: str) -> dict[str, Any]:
    """Run this module with ``args`` in a fresh interpreter; its JSON answer."""
    done = subprocess.run(  # noqa: S603 - our own module and arguments
        [sys.executable, "-m", "bench.memory_case", *args],
        cwd=ROOT,
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def steady(
    bootstrap: str, topic: str, count: int, consumer_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The child's side of ``steady`` (see the module docstring); ``consumer_config``
    overrides the service's consumer defaults."""
    from bench import json_case
    from bench.timing import StopAfter
    from service import MessageDispatcher
    from service.backends.kafka import KafkaBackend

    class Measure(StopAfter):
        rss: dict[str, float] | None = None

        def process(self, message: Any, **kwargs: Any) -> None:
            if self.seen + 1 == self.target:
                self.rss = _status()
            super().process(message, **kwargs)

    backend = KafkaBackend(bootstrap, consumer_config=consumer_config)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    backend.declare_queue(queue, topic, create=False)
    started = _status()
    counter = Measure(count)
    dispatcher = MessageDispatcher(json_case.serializers(), backend=backend)
    counter.dispatcher = dispatcher
    dispatcher.attach_consumer(counter)
    dispatcher.consume_loop(queue)
    backend.close()
    assert counter.rss is not None
    return {"start_mb": started["VmRSS"], "rss_mb": counter.rss["VmRSS"], **_peak()}


def _peak() -> dict[str, float]:
    return {"peak_mb": _status()["VmHWM"]}


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode != "steady":
        raise SystemExit(f"unknown mode {mode!r} (the dedup restore is bench.restore_case)")
    config = json.loads(rest[3]) if len(rest) > 3 else None
    print(json.dumps(steady(rest[0], rest[1], int(rest[2]), config)))
