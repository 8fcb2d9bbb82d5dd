"""Retrying work that failed for a passing reason, with back-off, up to a budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: `first` seconds, doubling up to `longest`, for `budget` in all.

    Parameters
    ----------
    budget : float
        Seconds of retrying before the error is final; 0 never retries.
    first, longest : float
        The first and the longest wait, s.
    """

    budget: float = 600.0
    first: float = 0.5
    longest: float = 30.0

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt` (1, 2, ...)."""
        return min(self.longest, self.first * 2 ** (attempt - 1))


def retrying(
    work: Callable[[], T],
    retriable: Callable[[BaseException], bool],
    backoff: Backoff,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
) -> T:
    """Run `work`; while it raises a retriable error and the budget lasts, wait and run it again.

    Parameters
    ----------
    work : callable
        Must be safe to run again after it raised.
    retriable : callable
        Whether an error is passing (a database outage) rather than final (bad input, a bug).
    backoff : Backoff
    on_retry : callable, optional
        ``on_retry(attempt, delay, error)`` before each wait, for status and logs.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return work()
        except Exception as exc:
            attempt += 1
            delay = backoff.delay(attempt)
            if not retriable(exc) or time.monotonic() + delay - start > backoff.budget:
                raise
            if on_retry is not None:
                on_retry(attempt, delay, exc)
            time.sleep(delay)
