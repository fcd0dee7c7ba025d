"""The daemon's loop: one Campaign run in its own thread, steered between proposals by the state machine.

The API thread never waits for the policy or the instrument: pause, resume and stop move the state
(journaled at once) and set flags the campaign loop reads; queued points are written to the store's
operator_queue before the API answers (the loop journals each as a trial in the transaction that takes it
from the queue); budget and policy changes are handed to the loop, which journals them at its next step. Every loop event becomes a JSON log line and
a metric, and feeds the circuit breaker.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from controller.campaign import Campaign
from controller.config import BudgetConfig, DaemonConfig, PolicyConfig, validation_problems
from controller.constraints import SpaceError
from controller.daemon.faults import Backoff, CircuitBreaker
from controller.daemon.metrics import DaemonMetrics, RateWindow
from controller.daemon.state import InvalidTransition, State, StateJournal, StateMachine, Transition
from controller.daemon.views import StoreView, add_read_indexes
from controller.errors import UserError
from policies import PolicyConfigError, PolicyFallbackError, validate_options

log = logging.getLogger("aec.daemon")

RATE_WINDOW = 60.0
"""Seconds over which /status reports the trial rate."""


class RequestError(ValueError):
    """A control request the campaign cannot take; `problems` holds (field, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems


class DaemonReporter:
    """The campaign's progress messages as log lines (counts and rates are in /status and /metrics)."""

    def start(self, name: str, total: int | None, done: int) -> None:
        log.info("campaign %s: %d of %s trials done", name, done, total if total is not None else "open-ended",
                 extra={"event": "run"})

    def update(self, done: int, failed: int, best: float | None, note: str = "", fallbacks: int = 0) -> None: ...

    def message(self, text: str) -> None:
        log.info(text, extra={"event": "message"})

    def finish(self) -> None: ...


@dataclass
class Snapshot:
    """What /status shows beyond the store's counts, read under the state machine's lock."""

    state: Transition
    last_error: str | None
    rate: float
    breaker: int
    breaker_trips: int
    uptime: float


class DaemonService:
    """A campaign as a service: `start()`, then control calls from any thread; `done` is set once stopped."""

    def __init__(self, campaign: Campaign, options: DaemonConfig):
        self.campaign, self.options = campaign, options
        self.journal = StateJournal(campaign.store.path)
        add_read_indexes(campaign.store.path)
        self.view = StoreView(campaign.store.path, campaign.objectives, campaign.constraints)
        self.view.optimum()  # the history folded in now, not during the first /status
        self.metrics = DaemonMetrics(campaign.config.executor.workers, self.view)
        self.breaker = CircuitBreaker(options.breaker)
        self.machine = StateMachine(self.journal)
        self.metrics.state.state(State.STARTING.value)
        campaign.observer = self._observe
        campaign.backoff = Backoff(options.backoff, options.backoff_max)
        campaign.reporter = DaemonReporter()
        self.budget = campaign.config.budget
        self.done = threading.Event()
        self.exit_code = 0
        self.last_error: str | None = None
        self._stop_requested = False
        self._wake = threading.Event()
        self._completions = RateWindow(RATE_WINDOW)
        self._started = time.time()
        self._thread = threading.Thread(target=self._loop, name="aec-campaign", daemon=True)

    # life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Come back in the last steady state journaled (paused stays paused), then run the campaign thread."""
        previous = self.journal.last_steady()
        with self.machine.lock:
            if previous is not None and previous.state in (State.PAUSED, State.UNHEALTHY):
                self.campaign.pause()
                self._move(previous.state, f"restored after a restart: {previous.reason}")
            else:
                self._move(State.RUNNING, "started" if previous is None else "resumed after a restart")
        self._thread.start()

    def _loop(self) -> None:
        reason = "stopped by request"
        try:
            while True:
                self._wake.clear()  # a change from now on wakes a finished campaign
                try:
                    summary = self.campaign.run()
                except PolicyFallbackError as exc:  # strict mode: no silent fallback; an operator decides
                    with self.machine.lock:
                        if self._stop_requested:
                            break
                        self.last_error = f"policy: {exc}"
                        self.campaign.clear_stop()
                        self.campaign.pause()
                        if self.machine.state == State.RUNNING:  # an operator who paused meanwhile stays paused
                            self._move(State.UNHEALTHY, f"{exc}; POST /policy to switch, then POST /resume")
                    continue
                with self.machine.lock:
                    if self._stop_requested:
                        break
                    self._move(State.FINISHED, summary.stopped)
                self._wake.wait()
                with self.machine.lock:
                    if self._stop_requested:
                        break
                    self.campaign.clear_stop()
                    self.campaign.unpause()
                    self.breaker.reset()
                    self._move(State.RUNNING, "settings changed: running again")
        except UserError as exc:
            self.exit_code, reason = 2, str(exc)
            log.error("the campaign cannot run: %s", exc, extra={"event": "error", "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001 - the service stops with a non-zero exit; systemd restarts it
            self.exit_code, reason = 1, f"{type(exc).__name__}: {exc}"
            log.exception("the campaign thread failed", extra={"event": "error", "reason": reason})
        finally:
            with self.machine.lock:
                self._stop_requested = True
                if self.machine.state != State.STOPPING:
                    self._move(State.STOPPING, reason)
                self._move(State.STOPPED, reason)
            self.done.set()

    def _move(self, to: State, reason: str) -> Transition:
        t = self.machine.move(to, reason)
        self.metrics.state.state(to.value)
        self.metrics.clock.set_active(to == State.RUNNING)
        log.info("state %s: %s", to.value, reason, extra={"event": "state", "state": to.value, "reason": reason})
        return t

    # control (any thread) -----------------------------------------------------------------------

    def pause(self, reason: str = "operator: POST /pause") -> Transition:
        with self.machine.lock:
            state = self.machine.state
            if state == State.PAUSED:
                return self.machine.current
            if state not in (State.RUNNING, State.UNHEALTHY):
                raise InvalidTransition(f"cannot pause: the daemon is {state.value}")
            self.campaign.pause()
            return self._move(State.PAUSED, reason)

    def resume(self, reason: str = "operator: POST /resume") -> Transition:
        """Leave paused or unhealthy (the breaker is reset); a finished campaign needs a larger budget instead."""
        with self.machine.lock:
            state = self.machine.state
            if state == State.RUNNING:
                return self.machine.current
            if state not in (State.PAUSED, State.UNHEALTHY):
                hint = "; PATCH /budget raises its budget" if state == State.FINISHED else ""
                raise InvalidTransition(f"cannot resume: the daemon is {state.value}{hint}")
            self.breaker.reset()
            self.metrics.breaker.set(0)
            t = self._move(State.RUNNING, reason)
            self.campaign.unpause()
            return t

    def stop(self, abandon: bool = False, reason: str = "operator: POST /stop") -> Transition:
        """Finish the trials in flight, then stop; with `abandon` (a second SIGTERM) abort them at once."""
        with self.machine.lock:
            if self._stop_requested:
                if abandon:
                    log.info("abandoning the trials in flight", extra={"event": "abandon", "reason": reason})
                    self.campaign.request_stop(abandon=True)
                return self.machine.current
            self._stop_requested = True
            t = self._move(State.STOPPING, reason)
            self.campaign.request_stop(abandon=abandon)
            self._wake.set()
            return t

    def set_budget(self, changes: dict[str, Any]) -> BudgetConfig:
        """Merge `changes` into the budget (None clears a limit); RequestError when the result is not a budget."""
        merged = {**self.budget.model_dump(mode="json", exclude_none=True), **changes}
        merged = {k: v for k, v in merged.items() if v is not None}
        try:
            budget = BudgetConfig.model_validate(merged)
        except ValidationError as exc:
            raise RequestError([tuple(p.split(": ", 1)) for p in validation_problems(exc)]) from None  # type: ignore[misc]
        with self.machine.lock:
            self._check_open("change the budget")
            self.budget = budget
            self.campaign.set_budget(budget)
            self._wake.set()
        log.info("budget: %s", merged, extra={"event": "budget", "reason": str(merged)})
        return budget

    def switch_policy(self, kind: str, options: dict[str, Any]) -> PolicyConfig:
        try:
            validate_options(kind, options)
            config = PolicyConfig.model_validate({**options, "kind": kind, "strict": self.campaign.config.policy.strict})
        except PolicyConfigError as exc:
            raise RequestError([(f"options.{p}" if p != "kind" else "kind", m) for p, m in exc.errors]) from None
        except ValidationError as exc:
            raise RequestError([tuple(p.split(": ", 1)) for p in validation_problems(exc)]) from None  # type: ignore[misc]
        with self.machine.lock:
            self._check_open("switch the policy")
            self.campaign.switch_policy(config)
            self._wake.set()
        log.info("policy switch to %s requested", kind, extra={"event": "policy", "reason": kind})
        return config

    def queue_points(self, points: list[dict[str, Any]], note: str = "") -> int:
        """Validate every point against the space, then queue them all (or none), measured next in order."""
        problems = []
        for i, params in enumerate(points):
            try:
                self.campaign.check_point(params)
            except (SpaceError, ValueError, TypeError) as exc:
                problems.append((f"points[{i}]", str(exc)))
        if problems:
            raise RequestError(problems)
        with self.machine.lock:
            self._check_open("queue points")
            if self.machine.state == State.FINISHED:
                raise InvalidTransition("cannot queue points: the campaign has finished; PATCH /budget raises its budget")
            self.campaign.queue_points(points, note)  # on disk (the store's operator_queue) before the API answers
        return len(points)

    def _check_open(self, what: str) -> None:
        if self._stop_requested:
            raise InvalidTransition(f"cannot {what}: the daemon is {self.machine.state.value}")

    # observation (campaign thread) ------------------------------------------------------------------

    def _observe(self, event: str, fields: dict[str, Any]) -> None:
        m = self.metrics
        duration = fields.get("duration")
        if event == "started":
            m.clock.change(+1)
        elif event == "proposal":
            m.proposal.observe(duration)
        elif event == "completed":
            m.clock.change(-1)
            m.measurement.labels(outcome="completed").observe(duration)
            if fields.get("kept") is not None:
                m.novelty.labels(decision="kept" if fields["kept"] else "dropped").inc()
            self.breaker.success()
            self._completions.add(time.time())
        elif event in ("failed", "retry", "abandoned"):
            m.clock.change(-1)
        if event in ("failed", "retry"):
            m.measurement.labels(outcome="failed").observe(duration)
            m.failed_attempts.inc()
            self.last_error = f"trial {fields['trial']}: {fields.get('reason')}"
            if self.breaker.failure(fields.get("reason")):
                self._trip()
        m.breaker.set(self.breaker.consecutive)
        extra = {"event": event, **{k: fields.get(k) for k in ("trial", "attempt", "duration", "reason")}}
        log.log(logging.WARNING if event in ("failed", "retry", "policy_refused") else logging.INFO,
                "%s%s", event, f" trial {fields['trial']}" if "trial" in fields else "", extra=extra)

    def _trip(self) -> None:
        with self.machine.lock:
            if self.machine.state != State.RUNNING:
                return
            self.campaign.pause()
            self.metrics.breaker_trips.inc()
            self._move(State.UNHEALTHY, f"circuit breaker: {self.breaker.threshold} consecutive failed attempts "
                       f"(last: {self.breaker.last_error}); POST /resume when the instrument is fixed")

    # views (any thread) --------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        now = time.time()
        window = min(RATE_WINDOW, max(now - self._started, 1e-9))
        recent = self._completions.count(now, window)
        return Snapshot(self.machine.current, self.last_error, recent / window, self.breaker.consecutive,
                        self.breaker.trips, now - self._started)

    def close(self) -> None:
        self.view.close()
        self.journal.close()
