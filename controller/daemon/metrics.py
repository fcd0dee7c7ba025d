"""Prometheus metrics of a running daemon, in its own registry: trials by status, measurement and proposal
latency, the instrument's idle fraction, novelty decisions, store size, fallbacks, state and breaker."""
from __future__ import annotations

import math
import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import Enum as EnumMetric

from controller.daemon.state import State
from controller.daemon.views import StoreView

MEASUREMENT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, float("inf"))
PROPOSAL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))


class BusyClock:
    """Worker-seconds busy out of worker-seconds available while the daemon is running."""

    def __init__(self, workers: int):
        self.workers = workers
        self.busy = 0
        self.active = False
        self.used = self.available = 0.0
        self._t = time.monotonic()
        self._lock = threading.Lock()

    def _advance(self) -> None:
        now = time.monotonic()
        if self.active:
            self.available += self.workers * (now - self._t)
            self.used += min(self.busy, self.workers) * (now - self._t)
        self._t = now

    def change(self, delta: int) -> None:
        with self._lock:
            self._advance()
            self.busy = max(0, self.busy + delta)

    def set_active(self, active: bool) -> None:
        with self._lock:
            self._advance()
            self.active = active

    def idle_fraction(self) -> float:
        with self._lock:
            self._advance()
            return 1.0 - self.used / self.available if self.available > 0 else 0.0


class RateWindow:
    """Completions counted per whole second over the last `window` seconds: at most window + 2 counters whatever
    the rate (a deque of every completion time held 30,000 floats at 500 trials/s)."""

    def __init__(self, window: float):
        self.window = window
        self._seconds: deque[list[int]] = deque()  # [second, completions in it], oldest first
        self._lock = threading.Lock()

    def add(self, now: float) -> None:
        second = math.floor(now)
        with self._lock:
            if self._seconds and self._seconds[-1][0] == second:
                self._seconds[-1][1] += 1
            else:
                self._seconds.append([second, 1])
            while self._seconds[0][0] + 1 < now - self.window:
                self._seconds.popleft()

    def count(self, now: float, window: float) -> int:
        """Completions in the seconds that overlap (now - window, now]: over by at most one second's worth."""
        with self._lock:
            return sum(n for second, n in self._seconds if second + 1 > now - window)


class DaemonMetrics:
    """The registry and the instruments the daemon's observer feeds; gauges read from the store at scrape."""

    def __init__(self, workers: int, view: StoreView):
        self.view = view
        self.clock = BusyClock(workers)
        r = self.registry = CollectorRegistry()
        self.trials = Gauge("aec_trials", "Trials by their journaled status", ["status"], registry=r)
        self.measurement = Histogram("aec_measurement_seconds", "Duration of one measurement attempt, by outcome",
                                     ["outcome"], buckets=MEASUREMENT_BUCKETS, registry=r)
        self.proposal = Histogram("aec_proposal_seconds", "Time the policy took for one proposal call",
                                  buckets=PROPOSAL_BUCKETS, registry=r)
        self.idle = Gauge("aec_instrument_idle_fraction", "Fraction of worker time idle while running", registry=r)
        self.idle.set_function(self.clock.idle_fraction)
        self.novelty = Counter("aec_novelty_decisions", "Data products kept or dropped by novelty selection",
                               ["decision"], registry=r)
        self.store_bytes = Gauge("aec_store_bytes", "Size of the store's journal (database and WAL)", registry=r)
        self.fallbacks = Gauge("aec_fallbacks", "Proposals made by a fallback, not the policy asked for", registry=r)
        self.failed_attempts = Counter("aec_failed_attempts", "Measurement attempts that failed", registry=r)
        self.breaker = Gauge("aec_breaker_consecutive_failures", "Consecutive failed attempts", registry=r)
        self.breaker_trips = Counter("aec_breaker_trips", "Times the circuit breaker made the daemon unhealthy", registry=r)
        self.state = EnumMetric("aec_daemon_state", "The daemon's state", states=[s.value for s in State], registry=r)

    def render(self) -> bytes:
        """Prometheus text exposition, with the store-derived gauges refreshed."""
        counts = self.view.counts()
        for status in ("proposed", "started", "retrying", "completed", "failed", "abandoned"):
            self.trials.labels(status=status).set(counts.get(status, 0))
        self.store_bytes.set(self.view.store_bytes())
        self.fallbacks.set(self.view.fallbacks())
        return generate_latest(self.registry)
