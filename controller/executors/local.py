"""`LocalExecutor`: worker threads in this process, each owning its own instrument instance (the default).

A measurement that runs past the per-trial timeout is aborted (the instrument's `abort()` if it has one),
reported as a retryable failure, and its worker replaced, so one hung instrument call never stalls the
campaign. A stop aborts every measurement in flight (`abort_all`) before its trials are journaled
abandoned, so none keeps running behind a resume.

An instrument that has `close()` is closed when its worker is replaced (timeout, cancel) and at
`shutdown()`, in a daemon thread so that a close that blocks never stalls the controller; shutdown waits
for it at most `CLOSE_WAIT` seconds and logs a close that did not return.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from controller.executors.base import Trial, TrialResult, Utilisation, next_deadline, run_measurement
from instruments.base import Instrument

log = logging.getLogger(__name__)

CLOSE_WAIT = 2.0
"""Seconds `shutdown()` waits for the instruments' close() (together) before it leaves them to daemon threads."""


def close_instrument(instrument: object, who: str) -> threading.Thread | None:
    """Call the instrument's close() (where it has one) in a daemon thread; its errors are logged, never raised.

    Returns the thread, to be joined with a bounded wait, or None when there is nothing to close.
    """
    close = getattr(instrument, "close", None)
    if not callable(close):
        return None

    def run() -> None:
        try:
            close()
        except Exception:  # noqa: BLE001 - a failing close must not take the controller down
            log.exception("close() of the instrument of %s failed", who)

    thread = threading.Thread(target=run, daemon=True, name=f"aec-close-{who}")
    thread.start()
    return thread


def join_closing(threads: list[tuple[str, threading.Thread]], within: float) -> None:
    """Wait for close() threads until `within` seconds have passed; log every close that has not returned."""
    deadline = time.monotonic() + max(0.0, within)
    for who, thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("close() of the instrument of %s did not return within %g s; left to a daemon thread", who, within)


class _Slot:
    """One worker thread and the instrument it owns."""

    def __init__(self, index: int, make_instrument: Callable[[], Instrument], results: queue.Queue):
        self.index = index
        self.generation = 0
        self.make_instrument = make_instrument
        self.results = results
        self.trial: Trial | None = None
        self.started = 0.0
        self.aborted_at: float | None = None
        self._start(make_instrument())

    def _start(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.inbox: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._loop, args=(self.inbox, self.stopping, instrument, self.generation), daemon=True,
            name=f"aec-worker-{self.index}",
        )
        self.thread.start()

    def _loop(self, inbox: queue.Queue, stopping: threading.Event, instrument: Instrument, generation: int) -> None:
        """Long-lived on purpose: a command's PR_SET_PDEATHSIG fires when the thread that started it exits."""
        while True:
            trial = inbox.get()
            if trial is None:
                return
            started = time.time()
            if stopping.is_set():
                m, err, retry = None, "aborted before it started", True
            else:
                m, err, retry = run_measurement(instrument, trial.params, trial.context())
            self.results.put((self.index, generation, TrialResult(
                trial, m, err, retry, f"local-{self.index}", started, time.time())))

    def abort(self) -> None:
        """The instrument's abort(), where it has one; its errors are logged, never raised."""
        abort = getattr(self.instrument, "abort", None)
        if callable(abort):
            try:
                abort()
            except Exception:  # noqa: BLE001
                log.exception("abort() of worker %d failed", self.index)

    def replace(self) -> None:
        """Abandon a hung worker thread (it is a daemon), close its instrument (without waiting: close() may
        block as the measurement did) and start a fresh one with a new instrument."""
        self.inbox.put(None)
        self.generation += 1
        self.trial, self.aborted_at = None, None
        close_instrument(self.instrument, f"worker {self.index}")
        self._start(self.make_instrument())

    def stop(self) -> None:
        self.inbox.put(None)


class LocalExecutor:
    """Runs measurements in N worker threads, one instrument instance per thread."""

    ABORT_GRACE = 2.0

    def __init__(self, make_instrument: Callable[[], Instrument], workers: int = 1, timeout: float | None = None):
        self.timeout = timeout
        self._results: queue.Queue = queue.Queue()
        self.slots = [_Slot(i, make_instrument, self._results) for i in range(workers)]
        self.utilisation = Utilisation(workers)

    def free_slots(self) -> int:
        return sum(s.trial is None for s in self.slots)

    def running(self) -> list[Trial]:
        return [s.trial for s in self.slots if s.trial is not None]

    def submit(self, trial: Trial) -> None:
        slot = next((s for s in self.slots if s.trial is None), None)
        if slot is None:
            raise RuntimeError("no free worker; check free_slots() before submit()")
        slot.trial, slot.started = trial, time.time()
        self.utilisation.submitted(slot.started)
        slot.inbox.put(trial)

    def completed(self, timeout: float) -> list[TrialResult]:
        """Results that arrived within `timeout` seconds (returns early once one has)."""
        out: list[TrialResult] = []
        deadline = time.time() + max(0.0, timeout)
        while True:
            wait = max(0.0, min(deadline, self._next_deadline()) - time.time())
            try:
                item = self._results.get(timeout=wait) if wait > 0 else self._results.get_nowait()
            except queue.Empty:
                item = None
            if item is not None:
                self._accept(item, out)
                self._drain(out)
            out.extend(self._expire())
            if out or time.time() >= deadline:
                return out

    def _drain(self, out: list[TrialResult]) -> None:
        while True:
            try:
                self._accept(self._results.get_nowait(), out)
            except queue.Empty:
                return

    def _accept(self, item: tuple[int, int, TrialResult], out: list[TrialResult]) -> None:
        index, generation, result = item
        slot = self.slots[index]
        if generation != slot.generation or slot.trial is None or slot.trial.id != result.trial.id:
            return
        slot.trial, slot.aborted_at = None, None
        self.utilisation.finished(result.started, result.finished, time.time())
        out.append(result)

    def _next_deadline(self) -> float:
        return next_deadline(self.timeout, self.ABORT_GRACE,
                             [(s.started, s.aborted_at) for s in self.slots if s.trial is not None])

    def _expire(self) -> list[TrialResult]:
        """Abort measurements past the timeout; replace workers that do not come back."""
        if self.timeout is None:
            return []
        now, out = time.time(), []
        for slot in self.slots:
            if slot.trial is None:
                continue
            if slot.aborted_at is None and now - slot.started > self.timeout:
                slot.aborted_at = now
                slot.abort()
            elif slot.aborted_at is not None and now - slot.aborted_at > self.ABORT_GRACE:
                trial = slot.trial
                log.warning("trial %d ran past its %.1f s timeout; worker %d replaced", trial.id, self.timeout, slot.index)
                out.append(TrialResult(trial, None, f"timed out after {self.timeout:g} s", True,
                                       f"local-{slot.index}", slot.started, now))
                slot.replace()
        return out

    def cancel(self, trial_id: int) -> None:
        for slot in self.slots:
            if slot.trial is not None and slot.trial.id == trial_id:
                slot.abort()
                slot.replace()

    def abort_all(self, grace: float = 2.0) -> list[TrialResult]:
        """`Executor.abort_all`: a worker that picks up its trial after the abort skips it; one that does
        not come back within `grace` keeps its trial in `running()` (it is a daemon thread)."""
        out: list[TrialResult] = []
        self._drain(out)
        busy = {s.index: s for s in self.slots if s.trial is not None}
        for slot in busy.values():
            slot.stopping.set()
            slot.abort()
        deadline = time.monotonic() + max(0.0, grace)
        while busy:
            try:
                index, generation, result = self._results.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            slot = self.slots[index]
            if index not in busy or generation != slot.generation or slot.trial is None or slot.trial.id != result.trial.id:
                continue
            del busy[index]
            slot.stopping.clear()
            if result.ok:
                slot.trial, slot.aborted_at = None, None
                out.append(result)
        return out

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker threads and close every instrument (waiting at most CLOSE_WAIT s for the closes)."""
        for slot in self.slots:
            slot.stop()
        if wait:
            for slot in self.slots:
                slot.thread.join(timeout=1.0)
        closing = []
        for slot in self.slots:
            instrument, slot.instrument = slot.instrument, None
            thread = close_instrument(instrument, f"worker {slot.index}")
            if thread is not None:
                closing.append((f"worker {slot.index}", thread))
        join_closing(closing, CLOSE_WAIT)
