"""Jittered exponential back-off with a cap, shared by every daemon that waits on
something outside (the search cluster, a broker); time is a parameter (no sleeping here)."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """After the n-th failure in a row wait ``min(cap, initial * 2**n)``, jittered.

    The jitter ("equal jitter") keeps between half and all of that delay, so
    several shippers that lost the same cluster do not come back in step, yet
    none hammers it with near-zero waits. `reset()` after a success.
    """

    def __init__(self, initial: float = 0.5, cap: float = 60.0,
                 rng: Callable[[], float] = random.random):
        if initial <= 0 or cap <= 0:
            raise ValueError("back-off waits must be positive")
        self.initial = initial
        self.cap = max(cap, initial)
        self.rng = rng
        self.failures = 0
        self.until = 0.0

    def delay(self, failures: int) -> float:
        """The wait after `failures` failures in a row (before jitter is applied)."""
        return min(self.cap, self.initial * 2.0 ** min(failures, 64))

    def fail(self, now: float) -> float:
        """Record a failure at `now`; returns the seconds to wait before trying again."""
        full = self.delay(self.failures)
        wait = full * (0.5 + 0.5 * self.rng())
        self.failures += 1
        self.until = now + wait
        return wait

    def reset(self) -> None:
        self.failures = 0
        self.until = 0.0

    def remaining(self, now: float) -> float:
        """Seconds left to wait at `now` (0 when a try is due)."""
        return max(0.0, self.until - now)
