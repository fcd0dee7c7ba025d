"""Riding out instrument faults: exponential backoff before a retry, and a circuit breaker that trips after
K consecutive failed attempts (the daemon then stops proposing until an operator resumes it)."""
from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait before attempt n+1 after attempt n failed: base * 2**(n-1), at most `ceiling`."""

    base: float
    ceiling: float

    def __call__(self, attempt: int) -> float:
        if self.base <= 0:
            return 0.0
        return min(self.base * 2.0 ** max(attempt - 1, 0), self.ceiling)


class CircuitBreaker:
    """Counts consecutive failed attempts; `failure()` returns True once, when the count reaches `threshold`."""

    def __init__(self, threshold: int):
        self.threshold = threshold
        self.consecutive = 0
        self.trips = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def failure(self, error: str | None) -> bool:
        with self._lock:
            self.consecutive += 1
            self.last_error = error
            if self.consecutive == self.threshold:
                self.trips += 1
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.consecutive = 0

    def reset(self) -> None:
        self.success()
