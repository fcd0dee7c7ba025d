"""Where measurements run: `LocalExecutor` (worker threads, the default) and `RayExecutor` (Ray actors,
optionally with GPUs, locally or on a cluster). Each worker owns its own instrument instance.

Both follow one protocol: submit(trial), completed(timeout) -> results, free_slots(), cancel(id),
running(), abort_all(grace), shutdown(). A measurement that runs past the per-trial timeout is aborted
(the instrument's `abort()` if it has one), reported as a retryable failure, and its worker replaced,
so one hung instrument call never stalls the campaign. A stop aborts every measurement in flight
(`abort_all`) before its trials are journaled abandoned, so none keeps running behind a resume.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from instruments.base import Instrument, InstrumentError, Measurement

log = logging.getLogger(__name__)


@dataclass
class Trial:
    id: int
    attempt: int
    params: dict[str, Any]


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


def run_measurement(instrument: Instrument, params: dict[str, Any]) -> tuple[Measurement | None, str | None, bool]:
    """Measure once: (measurement, None, _) on success, (None, message, retryable) on failure."""
    try:
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


class Executor(Protocol):
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
                m, err, retry = run_measurement(instrument, trial.params)
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
        """Abandon a hung worker thread (it is a daemon) and start a fresh one with a new instrument."""
        self.inbox.put(None)
        self.generation += 1
        self.trial, self.aborted_at = None, None
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

    def free_slots(self) -> int:
        return sum(s.trial is None for s in self.slots)

    def running(self) -> list[Trial]:
        return [s.trial for s in self.slots if s.trial is not None]

    def submit(self, trial: Trial) -> None:
        slot = next((s for s in self.slots if s.trial is None), None)
        if slot is None:
            raise RuntimeError("no free worker; check free_slots() before submit()")
        slot.trial, slot.started = trial, time.time()
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
        out.append(result)

    def _next_deadline(self) -> float:
        if self.timeout is None:
            return float("inf")
        times = [s.started + self.timeout for s in self.slots if s.trial is not None and s.aborted_at is None]
        times += [s.aborted_at + self.ABORT_GRACE for s in self.slots if s.aborted_at is not None]
        return min(times, default=float("inf"))

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
        for slot in self.slots:
            slot.stop()
        if wait:
            for slot in self.slots:
                slot.thread.join(timeout=1.0)


class RayExecutor:
    """Runs measurements on Ray actors (one instrument each), with `num_gpus` per worker when asked.

    `address=None` starts a local Ray runtime; 'auto' or 'ray://host:port' attaches to a cluster.
    The instrument is built inside each actor from its spec, so it lives in the worker.
    """

    def __init__(self, spec: dict[str, Any], base_dir: str, seed: int, workers: int = 1,
                 timeout: float | None = None, address: str | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, parameter_names: list[str] | None = None):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False,
                                      "logging_level": logging.WARNING, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            ray.init(**kwargs)
        self._actor_args = (spec, base_dir, seed, parameter_names)
        self._options = {"num_gpus": gpus_per_worker, "num_cpus": cpus_per_worker}
        self.timeout = timeout
        self.actors = [self._new_actor() for _ in range(workers)]
        self.busy: list[tuple[Trial, Any, float] | None] = [None] * workers

    def _new_actor(self) -> Any:
        actor_cls = self.ray.remote(_InstrumentActor).options(max_concurrency=2, **self._options)
        return actor_cls.remote(*self._actor_args)

    def _get(self, i: int) -> tuple[TrialResult, bool]:
        """Worker i's finished result, and whether its actor died (then the result is a retryable failure)."""
        trial, ref, started = self.busy[i]
        try:
            m, err, retry = self.ray.get(ref)
            crashed = False
        except Exception as exc:  # noqa: BLE001 - a dead actor or a worker crash
            m, err, retry, crashed = None, f"ray worker failed: {exc}", True, True
        return TrialResult(trial, m, err, retry, f"ray-{i}", started, time.time()), crashed

    def _busy_refs(self) -> dict[Any, int]:
        return {b[1]: i for i, b in enumerate(self.busy) if b is not None}

    def free_slots(self) -> int:
        return sum(b is None for b in self.busy)

    def running(self) -> list[Trial]:
        return [b[0] for b in self.busy if b is not None]

    def submit(self, trial: Trial) -> None:
        i = self.busy.index(None)
        self.busy[i] = (trial, self.actors[i].measure.remote(trial.params), time.time())

    def completed(self, timeout: float) -> list[TrialResult]:
        refs = self._busy_refs()
        out: list[TrialResult] = []
        if refs:
            ready, _ = self.ray.wait(list(refs), num_returns=1, timeout=max(0.0, timeout))
            if ready:
                ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
            for ref in ready:
                i = refs[ref]
                result, crashed = self._get(i)
                if crashed:
                    self.actors[i] = self._new_actor()
                self.busy[i] = None
                out.append(result)
        else:
            time.sleep(min(timeout, 0.05))
        if self.timeout is not None:
            now = time.time()
            for i, b in enumerate(self.busy):
                if b is not None and now - b[2] > self.timeout:
                    self.ray.kill(self.actors[i])
                    self.actors[i] = self._new_actor()
                    self.busy[i] = None
                    out.append(TrialResult(b[0], None, f"timed out after {self.timeout:g} s", True, f"ray-{i}", b[2], now))
        return out

    def cancel(self, trial_id: int) -> None:
        for i, b in enumerate(self.busy):
            if b is not None and b[0].id == trial_id:
                self.ray.kill(self.actors[i])
                self.actors[i] = self._new_actor()
                self.busy[i] = None

    def abort_all(self, grace: float = 2.0) -> list[TrialResult]:
        """`Executor.abort_all`: the instrument's abort() runs in its actor beside the measurement; an
        actor not back within `grace` is killed (its process, and with it a command's process group)."""
        out: list[TrialResult] = []
        refs = self._busy_refs()
        ready = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)[0] if refs else []
        for ref in ready:
            i = refs.pop(ref)
            result, crashed = self._get(i)
            if crashed:
                self.actors[i] = self._new_actor()
            self.busy[i] = None
            out.append(result)
        for i in refs.values():
            self.actors[i].abort.remote()
        ready, late = self.ray.wait(list(refs), num_returns=len(refs), timeout=max(0.0, grace)) if refs else ([], [])
        for ref in ready:
            result, _ = self._get(refs[ref])
            if result.ok:
                self.busy[refs[ref]] = None
                out.append(result)
        for ref in late:
            try:
                self.ray.kill(self.actors[refs[ref]])
            except Exception:  # noqa: BLE001
                log.exception("could not kill ray worker %d", refs[ref])
        return out

    def shutdown(self, wait: bool = True) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass


class _InstrumentActor:
    """Body of a Ray actor: builds its instrument once and measures on request."""

    def __init__(self, spec: dict[str, Any], base_dir: str, seed: int, parameter_names: list[str] | None):
        from instruments.registry import build_instrument

        self.instrument = build_instrument(spec, base_dir, seed=seed, parameter_names=parameter_names)

    def measure(self, params: dict[str, Any]) -> tuple[Measurement | None, str | None, bool]:
        return run_measurement(self.instrument, params)

    def abort(self) -> None:
        """The instrument's abort(); runs beside `measure` (the actor has two threads)."""
        abort = getattr(self.instrument, "abort", None)
        if callable(abort):
            abort()
