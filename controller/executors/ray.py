"""`RayExecutor`: measurements on Ray actors, one warm instrument each, locally or on a cluster, with
`num_gpus` (fractions share a GPU) and `num_cpus` (fractions for instruments that wait) per worker.

Trials are submitted as workers free and collected with `ray.wait`, so the campaign proposes while
workers measure. A worker that dies (OOM, node lost, `ray.kill`) returns its trial as a retryable failure
and is replaced by a fresh actor; a trial past its timeout has its instrument aborted and, when it does
not return within the grace, its actor killed and replaced. Data products come back through the object
store (numpy arrays without a copy); the campaign writes them to the store, once.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from controller.executors.base import ExecutorError, Trial, TrialResult, Utilisation, next_deadline
from controller.executors.ray_actor import InstrumentActor
from controller.executors.ray_runtime import check_capacity, check_fraction, cluster_line, connect, first_line

log = logging.getLogger(__name__)

CLOSE_WAIT = 2.0
"""Seconds `shutdown()` waits for the actors' close() of their instruments (together) before killing them."""
REPLACE_CLOSE_WAIT = 0.5
"""Seconds a worker being replaced gets to close its instrument before its actor is killed."""


@dataclass
class _Worker:
    """One actor and the trial it runs; `ready` is the actor's start-up reply until it has been checked."""

    index: int
    actor: Any
    ready: Any
    born: float
    trial: Trial | None = None
    ref: Any = None
    started: float = 0.0
    aborted_at: float | None = None

    @property
    def name(self) -> str:
        return f"ray-{self.index}"


class RayExecutor:
    """Runs measurements on `workers` Ray actors; `address=None` starts a local Ray, else attaches to a cluster."""

    ABORT_GRACE = 2.0

    def __init__(self, spec: dict[str, Any], base_dir: str, seed: int, workers: int = 1,
                 timeout: float | None = None, address: str | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, parameter_names: list[str] | None = None,
                 runtime_env: dict[str, Any] | None = None, start_timeout: float = 60.0):
        import ray

        self.ray = ray
        self.timeout, self.start_timeout = timeout, start_timeout
        self.utilisation = Utilisation(workers)
        self._actor_args = (spec, base_dir, seed, parameter_names)
        self.workers: list[_Worker] = []
        self._shut = False
        check_fraction("gpus_per_worker", gpus_per_worker, zero_ok=True)
        check_fraction("cpus_per_worker", cpus_per_worker, zero_ok=False)
        self._owns_runtime = connect(address)
        try:
            self._actor_class = self._options(cpus_per_worker, gpus_per_worker, runtime_env)
            check_capacity(workers, cpus_per_worker, gpus_per_worker)
            self.workers = [self._spawn(i) for i in range(workers)]
            self._await_ready(self.workers)
        except BaseException:
            self.shutdown(wait=False)
            raise

    def _options(self, cpus: float, gpus: float, runtime_env: dict[str, Any] | None) -> Any:
        """The actor class with its resources and runtime_env; Ray's refusal of the runtime_env is one line."""
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_concurrency": 2}
        if runtime_env:
            options["runtime_env"] = runtime_env
        try:
            return self.ray.remote(InstrumentActor).options(**options)
        except (TypeError, ValueError) as exc:  # resources are checked above, so this is the runtime_env
            raise ExecutorError(f"executor.runtime_env: Ray refused it: {first_line(exc)}") from None

    # workers -------------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        actor = self._actor_class.remote(*self._actor_args)
        return _Worker(index, actor, actor.ready.remote(), time.monotonic())

    def _await_ready(self, workers: list[_Worker]) -> None:
        """Block until every actor has built its instrument; a build error or a start past the timeout raises."""
        pending = {w.ready: w for w in workers}
        deadline = time.monotonic() + self.start_timeout
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise self._late(len(pending), len(workers))
            for ref in done:
                self._check_started(pending.pop(ref))

    def _check_started(self, w: _Worker) -> None:
        try:
            info = self.ray.get(w.ready)
        except self.ray.exceptions.RayError as exc:
            raise ExecutorError(f"executor: Ray worker {w.index} did not start: {first_line(exc)}") from None
        if info["error"]:
            raise ExecutorError(info["error"])
        w.ready = None

    def _late(self, missing: int, asked: int) -> ExecutorError:
        return ExecutorError(
            f"executor: {missing} of {asked} Ray worker(s) did not start within start_timeout={self.start_timeout:g} s "
            f"({cluster_line()}; other jobs may hold the rest); raise executor.start_timeout or ask for fewer resources")

    def _replace(self, w: _Worker, why: str, close: bool = True) -> None:
        """Kill `w`'s actor (its process, and with it a command's process group) and start a fresh one.

        A live actor first gets REPLACE_CLOSE_WAIT s to close its instrument (a server connection ended
        cleanly); killing the process frees its threads and sockets in any case."""
        log.warning("ray worker %d replaced: %s", w.index, why)
        if close and w.ready is None:
            self._close([w], REPLACE_CLOSE_WAIT)
        self._kill(w)
        fresh = self._spawn(w.index)
        self.workers[w.index] = fresh

    def _close(self, workers: list[_Worker], within: float) -> None:
        """The instruments' close() in their actors (beside a measurement that may still run), waited for at
        most `within` s together; one that does not return is logged (its actor is killed next anyway)."""
        refs = {}
        for w in workers:
            try:
                refs[w.actor.close.remote()] = w
            except Exception:  # noqa: BLE001 - the actor or the cluster is gone
                log.debug("could not ask ray worker %d to close its instrument", w.index, exc_info=True)
        if not refs:
            return
        _, late = self.ray.wait(list(refs), num_returns=len(refs), timeout=within)
        for ref in late:
            log.warning("close() of the instrument of ray worker %d did not return within %g s; its actor is killed",
                        refs[ref].index, within)

    def _kill(self, w: _Worker) -> None:
        try:
            self.ray.kill(w.actor)
        except Exception:  # noqa: BLE001 - already dead, or the cluster is gone
            log.debug("could not kill ray worker %d", w.index, exc_info=True)

    def _poll_replacements(self) -> None:
        """A replacement that failed to start, or did not start within start_timeout, ends the run."""
        for w in self.workers:
            if w.ready is None:
                continue
            done, _ = self.ray.wait([w.ready], timeout=0)
            if done:
                self._check_started(w)
                if w.trial is not None:  # its timeout counts from now: a fresh actor's start-up is not the trial's
                    w.started = time.time()
            elif time.monotonic() - w.born > self.start_timeout:
                raise self._late(1, len(self.workers))

    # the protocol --------------------------------------------------------------------------

    @property
    def busy(self) -> list[tuple[Trial, Any, float] | None]:
        """(trial, object ref, submitted at) per worker, None where idle."""
        return [(w.trial, w.ref, w.started) if w.trial is not None else None for w in self.workers]

    def free_slots(self) -> int:
        return sum(w.trial is None for w in self.workers)

    def running(self) -> list[Trial]:
        return [w.trial for w in self.workers if w.trial is not None]

    def submit(self, trial: Trial) -> None:
        free = sorted((w for w in self.workers if w.trial is None), key=lambda w: w.ready is not None)
        w = free[0] if free else None
        if w is None:
            raise RuntimeError("no free worker; check free_slots() before submit()")
        w.trial, w.started, w.aborted_at = trial, time.time(), None
        w.ref = w.actor.measure.remote(trial.params, trial.context())
        self.utilisation.submitted(w.started)

    def completed(self, timeout: float) -> list[TrialResult]:
        """Results that arrived within `timeout` seconds (returns early once one has); timeouts enforced."""
        out: list[TrialResult] = []
        deadline = time.time() + max(0.0, timeout)
        while True:
            refs = {w.ref: w for w in self.workers if w.trial is not None}
            wait = max(0.0, min(deadline, self._next_deadline()) - time.time())
            if refs:
                ready, _ = self.ray.wait(list(refs), num_returns=1, timeout=wait)
                if ready:
                    ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
                for ref in ready:
                    out.append(self._collect(refs[ref]))
            elif wait > 0:
                time.sleep(wait)
            out.extend(self._expire())
            self._poll_replacements()
            if out or time.time() >= deadline:
                return out

    def _collect(self, w: _Worker) -> TrialResult:
        """The finished result of `w`'s trial; a dead actor is a retryable failure and gets replaced."""
        trial, now = w.trial, time.time()
        try:
            m, err, retry, started, finished = self.ray.get(w.ref)
        except self.ray.exceptions.RayError as exc:
            m, err, retry, started, finished = None, f"ray worker died: {first_line(exc)}", True, w.started, now
            self._replace(w, err, close=False)  # its process is gone, and its instrument with it
        else:
            if w.aborted_at is not None and m is None:
                err, retry = f"timed out after {self.timeout:g} s; instrument aborted ({err})", True
            w.trial, w.ref, w.aborted_at = None, None, None
        self.utilisation.finished(started, finished, now)
        return TrialResult(trial, m, err, retry, w.name, started, finished)

    def _next_deadline(self) -> float:
        return next_deadline(self.timeout, self.ABORT_GRACE, [(w.started, w.aborted_at) for w in self.workers
                                                              if w.trial is not None and w.ready is None])

    def _expire(self) -> list[TrialResult]:
        """Abort measurements past the timeout; kill and replace workers that do not return within the grace."""
        if self.timeout is None:
            return []
        now, out = time.time(), []
        for w in list(self.workers):
            if w.trial is None:
                continue
            if w.aborted_at is None and w.ready is None and now - w.started > self.timeout:
                w.aborted_at = now
                w.actor.abort.remote()
            elif w.aborted_at is not None and now - w.aborted_at > self.ABORT_GRACE:
                trial = w.trial
                why = (f"timed out after {self.timeout:g} s; the instrument did not stop within {self.ABORT_GRACE:g} s "
                       "of abort(), so its worker was killed and replaced")
                self.utilisation.finished(w.started, now, now)
                out.append(TrialResult(trial, None, why, True, w.name, w.started, now))
                self._replace(w, f"trial {trial.id} {why}")
        return out

    def cancel(self, trial_id: int) -> None:
        """Stop `trial_id`: its instrument aborted, its actor kept when it returns within the grace, else killed."""
        for w in list(self.workers):
            if w.trial is None or w.trial.id != trial_id:
                continue
            if w.ref is None:  # left by abort_all after its actor died: nothing runs
                w.trial = None
                continue
            w.actor.abort.remote()
            done, _ = self.ray.wait([w.ref], timeout=self.ABORT_GRACE)
            if done:
                self._collect(w)
            else:
                self._replace(w, f"trial {trial_id} cancelled")

    def abort_all(self, grace: float = 2.0) -> list[TrialResult]:
        """`Executor.abort_all`: the instrument's abort() runs in its actor beside the measurement; an
        actor not back within `grace` is killed (its process, and with it a command's process group)."""
        out: list[TrialResult] = []
        refs = {w.ref: w for w in self.workers if w.trial is not None}
        ready = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)[0] if refs else []
        for ref in ready:
            out.append(self._collect(refs.pop(ref)))
        for w in refs.values():
            w.actor.abort.remote()
        ready, late = self.ray.wait(list(refs), num_returns=len(refs), timeout=max(0.0, grace)) if refs else ([], [])
        for ref in ready:
            w, trial = refs[ref], refs[ref].trial
            result = self._collect(w)
            if result.ok:
                out.append(result)
            else:  # the abort's own failure: the trial stays in running(), to be journaled abandoned
                self.workers[w.index].trial = trial
        for ref in late:
            self._kill(refs[ref])
        return out

    def shutdown(self, wait: bool = True) -> None:
        """Close every started actor's instrument (at most CLOSE_WAIT s, all together), kill every actor;
        stop Ray too when this executor started it. A second call does nothing."""
        if self._shut:
            return
        self._shut = True
        self._close([w for w in self.workers if w.ready is None], CLOSE_WAIT)
        for w in self.workers:
            self._kill(w)
        if self._owns_runtime:
            self.ray.shutdown()
