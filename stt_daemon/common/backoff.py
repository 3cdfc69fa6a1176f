"""Exponential backoff: how long to wait after a failed try, capped, with or without jitter.

One rule for every retry loop of both processes (reconnecting to the broker, a job's
transient retry, a webhook's next try, a store write that lost a race). It only
computes waits; each caller sleeps its own way (some must wake early on shutdown,
webhooks wait in the broker's delay queues), which is why this is not a retry
decorator such as tenacity's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Waits of ``base`` seconds, times ``factor`` after each failed try, never over ``cap``.

    With ``jitter`` each wait is drawn uniformly from zero to that ceiling ("full
    jitter"): rivals that failed together (jobs of a broker that came back, gateways
    racing for one record) spread apart instead of retrying in step. Without it the
    waits are exact, as a caller needs that keys something by them (webhooks keep a
    delay queue per wait) or shows them in a log line.
    """

    base: float
    cap: float
    factor: float = 2.0
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError(f"backoff base and cap must be >= 0, not {self.base}, {self.cap}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, not {self.factor}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after the ``attempt``-th failed try (1 for the first)."""
        if attempt < 1:
            raise ValueError(f"attempts count from 1, not {attempt}")
        try:
            wait = self.base * self.factor ** (attempt - 1)
        except OverflowError:  # a try count in the thousands: long past the cap
            return self.cap
        return min(self.cap, wait)

    def delay(self, attempt: int) -> float:
        """The wait after the ``attempt``-th failed try: the ceiling, or below it with jitter."""
        ceiling = self.ceiling(attempt)
        return random.uniform(0, ceiling) if self.jitter else ceiling

    def delays(self) -> Iterator[float]:
        """The waits after the first, second, ... failed try (a retry loop's sleeps)."""
        attempt = 1
        while True:
            yield self.delay(attempt)
            attempt += 1
