"""What every executor shares: a trial handed to a worker, its result, one measurement, the protocol, and
how busy the workers were."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.errors import UserError
from instruments.base import Instrument, InstrumentError, Measurement


class ExecutorError(UserError):
    """The workers cannot run: Ray did not start or connect, or asked-for resources do not exist."""


@dataclass
class Trial:
    id: int
    attempt: int
    params: dict[str, Any]
    reason: dict[str, Any] = field(default_factory=dict)

    def context(self) -> dict[str, Any]:
        """What an instrument may record with the measurement (a bluesky start document): trial, attempt, reason."""
        return {"trial_id": self.id, "attempt": self.attempt, "reason": self.reason}


@dataclass
class TrialResult:
    trial: Trial
    measurement: Measurement | None
    error: str | None
    retryable: bool
    worker: str
    started: float
    finished: float

    @property
    def ok(self) -> bool:
        return self.measurement is not None


def run_measurement(instrument: Instrument, params: dict[str, Any],
                    context: dict[str, Any] | None = None) -> tuple[Measurement | None, str | None, bool]:
    """Measure once: (measurement, None, _) on success, (None, message, retryable) on failure.

    `context` (Trial.context()) goes to instruments whose measure() takes a `context` argument.
    """
    try:
        if context is not None and "context" in inspect.signature(instrument.measure).parameters:
            m = instrument.measure(dict(params), context=context)
        else:
            m = instrument.measure(dict(params))
        if not isinstance(m, Measurement):
            m = Measurement.from_value(m)
        return m, None, True
    except InstrumentError as exc:
        return None, str(exc), exc.retryable
    except Exception as exc:  # noqa: BLE001 - any instrument bug becomes a failed attempt, not a crash
        return None, f"{type(exc).__name__}: {exc}", True
    except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from user code must not kill the worker
        return None, f"the instrument raised {type(exc).__name__}{f': {exc}' if str(exc) else ''}", False


def next_deadline(timeout: float | None, grace: float, clocks: list[tuple[float, float | None]]) -> float:
    """When the next trial timeout or abort grace runs out, given (started, aborted_at) of each timed trial."""
    if timeout is None:
        return float("inf")
    return min((aborted + grace if aborted is not None else started + timeout for started, aborted in clocks),
               default=float("inf"))


@dataclass
class Utilisation:
    """Time the workers spent measuring over workers x the span from the first submit to the last result.

    1 - `fraction` is the workers' idle fraction: waiting for the policy, for the controller, or for Ray.
    `policy_wait` is the part the campaign saw: worker-seconds a worker was free with nothing to measure
    (counted from the first submit, as the span).
    """

    workers: int
    busy: float = 0.0
    first: float | None = None
    last: float | None = None
    measured: int = 0
    policy_wait: float = 0.0
    _idle: int = 0
    _since: float | None = None

    def waiting_for_policy(self, now: float, idle: int) -> None:
        """From `now` on, `idle` free workers have nothing to measure until the policy answers (0: none)."""
        if self._since is not None and self.first is not None:
            self.policy_wait += self._idle * max(0.0, now - max(self._since, self.first))
        self._idle, self._since = idle, now

    def submitted(self, t: float) -> None:
        if self.first is None:
            self.first = t

    def finished(self, started: float, finished: float, collected: float) -> None:
        self.busy += max(0.0, finished - started)
        self.last = collected if self.last is None else max(self.last, collected)
        self.measured += 1

    @property
    def span(self) -> float:
        return 0.0 if self.first is None or self.last is None else max(0.0, self.last - self.first)

    @property
    def fraction(self) -> float:
        return self.busy / (self.workers * self.span) if self.span > 0 else 0.0

    def to_json(self) -> dict[str, float]:
        waited = self.policy_wait / (self.workers * self.span) if self.span > 0 else 0.0
        return {"workers": self.workers, "measured": self.measured, "busy_s": round(self.busy, 4),
                "span_s": round(self.span, 4), "utilisation": round(self.fraction, 4),
                "waited_for_policy_s": round(self.policy_wait, 4), "waited_for_policy": round(waited, 4)}


class Executor(Protocol):
    utilisation: Utilisation

    def submit(self, trial: Trial) -> None: ...
    def completed(self, timeout: float) -> list[TrialResult]: ...
    def free_slots(self) -> int: ...
    def cancel(self, trial_id: int) -> None: ...
    def running(self) -> list[Trial]: ...
    def shutdown(self, wait: bool = True) -> None: ...

    def abort_all(self, grace: float = 2.0) -> list[TrialResult]:
        """Abort every measurement in flight; return the results that need not be measured again.

        1. Collects every result that had already arrived (success or failure, as `completed()` would
           have returned it); the caller journals these as usual.
        2. Calls `abort()` once on each busy worker's instrument (where it has one; errors are logged)
           and waits at most `grace` seconds for those workers to return. A result that arrives
           successfully in that time (a measurement that finished despite the abort) is returned too;
           a failure is dropped, since it is most likely the abort itself.
        Afterwards `running()` lists exactly the trials with no returned result (aborted, or not back
        in time): journal them abandoned, then `shutdown()`. Their slots stay busy; `cancel(id)` frees
        one if the executor is to be reused. Never raises for an instrument's sake.
        """
        ...
