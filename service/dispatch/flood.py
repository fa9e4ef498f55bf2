"""DeadLetterLimit: stop a queue that dead-letters too much (a bad deploy, a broken schema).

Modelled on Sentry Arroyo's ``DlqLimit``. Over a sliding ``window`` of settled messages,
once at least ``min_messages`` were settled and the share dead-lettered exceeds ``ratio``,
the limit *trips*: the loop stops taking messages (partitions paused, queued work handed
back, later dead-letter verdicts not carried out), nothing is committed past what is done,
and the reason is reported (readiness, a metric). It stays tripped until the process
restarts: a person should look first.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import ConfigurationError

__all__ = ["DeadLetterLimit"]


@dataclass
class DeadLetterLimit:
    """The most dead letters a queue may write before it stops.

    Attributes:
        ratio: the share of settled messages dead-lettered above which it trips (0 < ratio
            <= 1; with 1, it trips when every message in the window was dead-lettered).
        window: seconds of history considered.
        min_messages: messages settled within the window before the ratio counts.
    """

    ratio: float = 0.5
    window: float = 60.0
    min_messages: int = 100
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        """Validate the numbers and start with an empty history."""
        if not 0 < self.ratio <= 1 or self.window <= 0 or self.min_messages < 1:
            raise ConfigurationError(
                "dead_letter_limit needs 0 < ratio <= 1, window > 0 and min_messages >= 1; got "
                f"{self.ratio}, {self.window}, {self.min_messages}"
            )
        self._buckets: deque[list[int]] = deque()  # [second, settled, dead-lettered]
        self._settled = 0
        self._dead = 0
        self.tripped: str | None = None
        """Why the limit tripped, or None."""

    def record(self, dead_lettered: bool) -> bool:
        """Count one settled message; True when this one trips the limit."""
        now = int(self.clock())
        buckets = self._buckets
        if not buckets or buckets[-1][0] != now:
            buckets.append([now, 0, 0])
            horizon = now - self.window
            while buckets and buckets[0][0] <= horizon:
                _, settled, dead = buckets.popleft()
                self._settled -= settled
                self._dead -= dead
        bucket = buckets[-1]
        bucket[1] += 1
        self._settled += 1
        if dead_lettered:
            bucket[2] += 1
            self._dead += 1
            if (
                self.tripped is None
                and self._settled >= self.min_messages
                and (self._dead > self.ratio * self._settled or self._dead == self._settled)
            ):
                self.tripped = (
                    f"dead-letter limit exceeded: {self._dead} of the last {self._settled} "
                    f"messages dead-lettered within {self.window:g}s (limit {self.ratio:.0%}); "
                    "the queue stopped taking messages; fix the cause, then restart"
                )
                return True
        return False
