"""Consumer settings of the baselines: each at its best, every choice written down.

librdkafka's defaults are tuned for a broker far away and a slow application, not for a
consumer that drains its local queue in microseconds:

* ``fetch.queue.backoff.ms`` (default 1000): how long a partition waits before its next fetch
  once the local queue is over ``queued.min.messages`` / ``queued.max.messages.kbytes``. A
  fast loop empties the queue long before that second is up and then waits: with the
  default, the raw loop of an earlier bench paused ~0.9 s on its largest partitions in most
  rounds. 10 ms refetches as soon as there is room.
* ``queued.min.messages`` / ``queued.max.messages.kbytes``: how much is prefetched. The
  raw loop keeps librdkafka's (100,000 records per partition, 64 MiB): the most it could
  want. (The service prefetches less, 20,000 and 16 MiB, for memory; same rate.)
* ``fetch.wait.max.ms`` / ``fetch.min.bytes``: how long the broker holds a fetch for more
  data. ``fetch.min.bytes=1`` (the default) answers as soon as one byte is there.
* the raw loops take ``consume(1000, timeout)``: 1000 records per call into Python.

The service's own defaults (``KafkaBackend.subscribe()``) are measured against librdkafka's
in the bench: the ``json, librdkafka defaults`` row runs the dispatcher with
:data:`LIBRDKAFKA_DEFAULTS` as its ``kafka.consumer`` overrides.
"""

from __future__ import annotations

from typing import Any

RAW_BATCH = 1000
"""Records per ``Consumer.consume()`` call of the raw loops."""

RAW_CONSUMER: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": True,  # the raw loop commits in the background, for free
    "fetch.queue.backoff.ms": 10,
}
"""librdkafka settings of every raw confluent-kafka loop (see the module docstring)."""

LIBRDKAFKA_DEFAULTS: dict[str, Any] = {
    "fetch.queue.backoff.ms": 1000,
    "queued.min.messages": 100_000,
    "queued.max.messages.kbytes": 65_536,
}
"""librdkafka's own values of the settings the service sets: passed as ``kafka.consumer``
overrides, they measure what the service's defaults are worth."""
