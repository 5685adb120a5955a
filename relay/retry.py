"""The retry policy: exponential backoff with full jitter, capped. Pure; imports nothing
from the rest of the package."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``delay(n)`` is uniform in [0, min(cap, base * 2**(n-1))] (AWS's "full jitter").

    Full jitter spreads the retries of a burst of failures instead of sending them back to
    the partner in lockstep.
    """

    base: timedelta
    cap: timedelta
    random: Callable[[], float] = field(default=random.random, compare=False)

    def ceiling(self, attempt: int) -> timedelta:
        exponent = min(max(attempt - 1, 0), 62)
        seconds = self.base.total_seconds() * 2.0**exponent
        return min(self.cap, timedelta(seconds=min(seconds, self.cap.total_seconds())))

    def delay(self, attempt: int, retry_after: timedelta | None = None) -> timedelta:
        """The wait before attempt ``attempt + 1``; never shorter than ``retry_after``."""
        jittered = self.ceiling(attempt) * self.random()
        if retry_after is not None:
            return max(jittered, retry_after)
        return jittered


@dataclass(frozen=True, slots=True)
class GiveUpPolicy:
    """A row is dead only when it has used its attempts *and* is old enough.

    Requiring both means a partner outage of hours cannot kill young rows, and a row that
    fails quickly many times is still retried until it is ``max_age`` old.
    """

    max_attempts: int
    max_age: timedelta

    def exhausted(self, attempts: int, age: timedelta) -> bool:
        return attempts >= self.max_attempts and age >= self.max_age
