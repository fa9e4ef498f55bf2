"""RetryPolicy: how often and how late a message that failed is delivered again."""

from __future__ import annotations

import random
from dataclasses import dataclass

from service.errors import ConfigurationError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, then the dead-letter topic.

    Attributes:
        max_attempts: deliveries before the message is dead-lettered; ``None`` retries for
            ever (a message that always fails then blocks its partition).
        backoff_base: the delay in seconds before the second delivery.
        backoff_max: the cap on any delay.
        jitter: the fraction of each delay drawn at random (0 = none, 1 = full jitter).
    """

    max_attempts: int | None = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        """Validate the numbers."""
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_base < 0 or self.backoff_max < self.backoff_base:
            raise ConfigurationError("backoff needs 0 <= backoff_base <= backoff_max")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be within [0, 1], got {self.jitter}")

    def is_exhausted(self, attempt: int) -> bool:
        """Whether delivery number ``attempt`` was the last one allowed."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def delay(self, attempt: int) -> float:
        """Seconds to wait before delivery ``attempt + 1``."""
        exponent = min(max(attempt - 1, 0), 64)  # 2.0 ** 1024 overflows: retries for ever
        ceiling = min(self.backoff_max, self.backoff_base * 2.0**exponent)
        return ceiling * (1 - self.jitter * random.random())  # noqa: S311 - not crypto
