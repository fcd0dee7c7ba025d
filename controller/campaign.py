"""Campaign: the ask -> measure -> score -> tell loop, journaled so that any crash can be resumed.

A trial is journaled 'proposed' and 'started' before it is submitted, and 'completed' only after
its data product is on disk, so every completed measurement survives a crash and is recorded once;
a trial in flight at a crash is measured again on resume with the next attempt number.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.config import BudgetConfig, CampaignConfig, PolicyConfig, config_to_dict
from controller.errors import UserError
from controller.executors import LocalExecutor, RayExecutor, Trial, TrialResult
from controller.preflight import parse_config
from controller.progress import LogReporter, Reporter
from controller.results import FallbackTally, best_trial, feasible
from controller.space import Space
from controller.store import OperatorQueue, Store, TrialRecord
from instruments.base import InstrumentError
from instruments.registry import build_instrument
from policies import KeepAll, Observation, PolicyFallbackError, Problem, Proposal, make_policy, strict_mode
from policies.base import COUNTS_ONLY_KINDS, DataSelector, History, Objective, OutcomeConstraint
from policies.baselines import SobolPolicy

log = logging.getLogger(__name__)

IN_FLIGHT = ("proposed", "started", "retrying", "abandoned")
PROPOSER_CHUNK = 4
"""Points the background proposer is asked for at a time (several workers), so that they reach workers as made."""


@dataclass
class CampaignSummary:
    name: str
    store: str
    completed: int
    failed: int
    stopped: str
    elapsed: float
    best: dict[str, Any] | None = None
    pareto: list[dict[str, Any]] = field(default_factory=list)
    hypervolume: float | None = None
    figures: list[str] = field(default_factory=list)
    fallbacks: dict[str, Any] = field(default_factory=lambda: {"count": 0, "reasons": []})
    degraded: list[str] = field(default_factory=list)  # standing degradations, e.g. the policy's fast paths off
    workers: dict[str, Any] | None = None  # this run's workers: utilisation and time waited for the policy

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Campaign:
    """One campaign bound to its store. Build with `Campaign(config)` or `Campaign.resume(store)`."""

    def __init__(self, config: CampaignConfig, store: str | Path | None = None, *,
                 reporter: Reporter | None = None, _store: Store | None = None):
        self.config = config
        self.objectives = [Objective(o.metric, o.goal == "maximize", o.threshold) for o in config.objectives]
        self.constraints = [OutcomeConstraint(c.metric, c.op, c.bound) for c in config.constraints]
        self.reporter: Reporter = reporter or LogReporter()
        if _store is None:
            path = Path(store) if store else config.store_path()
            self.store = self._create_store(path)
        else:
            self.store = _store
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._paused = threading.Event()
        self._queued = threading.Event()  # set when operator points may be waiting in the store's queue
        self._queue: OperatorQueue | None = None
        self._queue_lock = threading.Lock()
        self._requests: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._fatal: PolicyFallbackError | None = None
        self.observer: Callable[[str, dict[str, Any]], None] | None = None
        self.backoff: Callable[[int], float] = lambda attempt: 0.0
        self._operator_ids: set[int] = set()
        self._not_before: dict[int, float] = {}
        self._pace = [0.0, 0]  # seconds the policy took and points it made in this run (the workers' summary row)
        self._workers: dict[str, Any] | None = None  # the last run's worker utilisation (CampaignSummary.workers)
        try:
            self._setup()
        except BaseException:
            self.store.close()
            raise

    # construction -------------------------------------------------------------------------

    def _create_store(self, path: Path) -> Store:
        """The new campaign's store, under the writer's lock before anything is checked or written."""
        meta = {"config": config_to_dict(self.config), "base_dir": str(self.config.base_dir),
                "created": time.time(), "schema": 1}
        if not (path.exists() and path.stat().st_size > 0 and not _is_empty_sqlite(path)):
            return Store(path, create=True, meta=meta)
        store = Store(path, writer=True)
        n = len(store.trials())
        if n:
            store.close()
            raise UserError(
                f"{path} already holds a campaign ({n} trials); `aec resume {path}` continues it, "
                "or pass --store NEW.db for a new campaign"
            )
        for key, value in meta.items():  # a store left empty by a crash during creation: reuse it
            store.set_meta(key, value)
        return store

    @classmethod
    def resume(cls, store: str | Path, *, reporter: Reporter | None = None,
               trials: int | None = None) -> "Campaign":
        """Reopen a stopped or crashed campaign from its store alone."""
        st = Store(store, writer=True)
        try:
            data = st.get_meta("config")
            if data is None:
                raise UserError(f"{store}: holds no campaign configuration")
            if trials is not None:
                data.setdefault("budget", {})["trials"] = trials
            base_dir = Path(st.get_meta("base_dir", "."))
            source = f"{store} (stored config{', --trials' if trials is not None else ''})"
            config = parse_config(data, base_dir=base_dir, source=source)  # validated before anything is written
            if trials is not None:
                st.set_meta("config", data)
            return cls(config, reporter=reporter, _store=st)
        except BaseException:
            st.close()
            raise

    def _instrument_spec(self) -> dict[str, Any]:
        return self.config.instrument.model_dump(mode="json")

    def _setup(self) -> None:
        cfg = self.config
        spec = self._instrument_spec()
        self._describer = None
        if spec["kind"] == "simulator":
            try:
                self._describer = build_instrument(spec, cfg.base_dir, seed=cfg.seed)
            except InstrumentError as exc:
                raise UserError(str(exc)) from None
        self.space = Space.from_config(cfg.space, cfg.base_dir, getattr(self._describer, "simulator", None))
        move_cost = None
        if self._describer is not None and getattr(self._describer, "has_move_cost", False):
            describer, space = self._describer, self.space
            move_cost = lambda a, b: describer.move_cost(space.decode(a), space.decode(b))  # noqa: E731
        self.problem = Problem(self.space.encoded(), self.objectives, self.constraints, move_cost, cfg.seed)
        self.strict = strict_mode(cfg.policy.strict)
        try:
            self.policy = make_policy(cfg.policy.kind, cfg.policy.options(), self.problem, strict=self.strict)
        except ValueError as exc:
            raise UserError(f"policy: {exc}") from None
        self.fallbacks = FallbackTally({})
        self.selector: DataSelector = self._make_selector()

    def degradations(self) -> list[str]:
        """What the policy says it runs without (e.g. its fast paths), shown in the progress line and the summary."""
        fn = getattr(self.policy, "degradations", None)
        return list(fn()) if callable(fn) else []

    def _progress_note(self, front_note: str) -> str:
        degraded = self.degradations()
        return "; ".join(part for part in (front_note, "degraded: " + "; ".join(d.split(":")[0] for d in degraded)
                                           if degraded else "") if part)

    def _make_selector(self) -> DataSelector:
        if self.config.selection.kind == "none":
            return KeepAll()
        from policies.selection import NoveltySelector, SelectionError

        opts = NoveltySelector.Options.model_validate({"kind": "autoencoder", **self.config.selection.options()})
        reference = None
        if getattr(opts, "reference", None):
            path = self.config.resolve(opts.reference)
            try:
                from controller.triage import load_array

                reference = load_array(path, max_rows=opts.max_known)
            except (OSError, ValueError) as exc:
                raise UserError(f"selection.reference: {exc}") from None
        try:
            return NoveltySelector(opts, seed=self.config.seed, reference=reference)
        except SelectionError as exc:
            raise UserError(f"selection: {exc}") from None

    def _make_executor(self):
        cfg, ex = self.config, self.config.executor
        spec = self._instrument_spec()
        names = self.space.names
        if ex.kind == "ray":
            return RayExecutor(spec, str(cfg.base_dir), cfg.seed, workers=ex.workers, timeout=ex.timeout,
                               address=ex.address, gpus_per_worker=ex.gpus_per_worker,
                               cpus_per_worker=ex.cpus_per_worker, parameter_names=names,
                               runtime_env=ex.runtime_env, start_timeout=ex.start_timeout)
        try:
            return LocalExecutor(lambda: build_instrument(spec, cfg.base_dir, seed=cfg.seed, parameter_names=names),
                                 workers=ex.workers, timeout=ex.timeout)
        except InstrumentError as exc:
            raise UserError(str(exc)) from None

    # state rebuilt from the store ---------------------------------------------------------

    def history(self, counts_only: bool = False) -> History:
        """Completed and failed trials in the order they finished, as the policy sees them (only their
        counts, the pool rows used and the last one with `counts_only`: see COUNTS_ONLY_KINDS)."""
        done = [r for r in self.store.trials() if r.status in ("completed", "failed")]
        done.sort(key=lambda r: (r.finished_seq or 0, r.id))  # journal order, not the wall clock
        return History((self._observation(r) for r in done), counts_only=counts_only)

    def _counts_only(self) -> bool:
        """Whether the policy reads nothing of the history but its length and the pool rows used."""
        return self.config.policy.kind in COUNTS_ONLY_KINDS

    @staticmethod
    def _observation(r: TrialRecord) -> Observation:
        return Observation(trial_id=r.id, x=np.asarray(r.x, dtype=float), metrics=dict(r.metrics), status=r.status,
                           pool_index=r.pool_index, sem=dict(r.sem), novelty=r.novelty)

    def best_value(self) -> float | None:
        if len(self.objectives) != 1:
            return None
        best = best_trial(self.store.trials(), self.objectives[0], self.constraints)
        return None if best is None else best.metrics[self.objectives[0].metric]

    # control --------------------------------------------------------------------------------

    def request_stop(self, abandon: bool = False) -> None:
        """Stop proposing; finish in-flight trials, or abandon them at once when `abandon`."""
        self._stop.set()
        if abandon:
            self._abandon.set()

    def clear_stop(self) -> None:
        """Allow another run() after a stop (a daemon runs again when its budget is raised)."""
        self._stop.clear()
        self._abandon.clear()
        self._fatal = None

    def pause(self) -> None:
        """Propose and submit nothing new (thread-safe); trials in flight finish and are recorded."""
        self._paused.set()

    def unpause(self) -> None:
        self._paused.clear()

    def queue_point(self, params: dict[str, Any], note: str = "") -> None:
        """Measure `params` next (thread-safe); see `queue_points`."""
        self.queue_points([params], note)

    def queue_points(self, points: list[dict[str, Any]], note: str = "") -> list[int]:
        """Measure `points` next, in order (thread-safe): all or none are queued, durably, before this returns.

        They go to the store's operator_queue (its own connection, committed to disk), and the loop
        journals each as a trial with reason 'operator' in the transaction that takes it from the queue:
        a crash at any moment neither loses an accepted point nor measures it twice; a resumed run
        measures the points still queued first. Raises SpaceError when a point is not a point of the
        space (missing, unknown or out-of-range parameters, a violated constraint, a point not in the pool).
        """
        rows = []
        for params in points:
            x, pool_index = self.check_point(params)
            rows.append((dict(params), np.asarray(x, dtype=float).tolist(), pool_index))
        with self._queue_lock:
            if self._queue is None:
                self._queue = OperatorQueue(self.store.path)
            ids = self._queue.put(rows, note)
        self._queued.set()
        return ids

    def check_point(self, params: dict[str, Any]) -> tuple[np.ndarray, int | None]:
        """(encoded x, pool index) of an operator's point, or SpaceError saying why it is not in the space."""
        from controller.constraints import SpaceError

        unknown = sorted(set(params) - set(self.space.names) - set(self.space.pool_extra))
        if unknown:
            raise SpaceError(f"unknown parameters: {', '.join(unknown)} (the space has {', '.join(self.space.names)})")
        for p in self.space.parameters:
            value = params.get(p.name, 0.0)
            if p.type != "choice" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise SpaceError(f"{p.name}={value!r}: expected a number")
        x = self.space.encode(params)
        if not self.space.satisfies(params):
            raise SpaceError(f"the point violates the space's constraints: {'; '.join(self.space.constraint_texts)}")
        if self.space.pool is None:
            return x, None
        row = np.array([float(params[n]) for n in self.space.names])
        hits = np.flatnonzero(np.all(np.isclose(self.space.pool, row, rtol=1e-9, atol=1e-12), axis=1))
        if not len(hits):
            raise SpaceError("the point is not a row of the candidate pool")
        return self.problem.space.pool[int(hits[0])], int(hits[0])

    def set_budget(self, budget: BudgetConfig) -> None:
        """Replace the budget between proposals (thread-safe); stored with the campaign's configuration."""
        self._requests.put(("budget", budget))

    def switch_policy(self, policy: PolicyConfig) -> None:
        """Use another policy from the next proposal on (thread-safe); the switch is kept in meta 'policy_history'."""
        self._requests.put(("policy", policy))

    def _apply_requests(self, ready: list[Proposal]) -> None:
        """Budget and policy changes asked for from another thread, applied here in the loop's thread."""
        while True:
            try:
                kind, value = self._requests.get_nowait()
            except queue.Empty:
                return
            stored = self.store.config()
            if kind == "budget":
                self.config.budget = value
                stored["budget"] = value.model_dump(mode="json", exclude_none=True)
            else:
                try:
                    policy = make_policy(value.kind, value.options(), self.problem, strict=self.strict)
                except ValueError as exc:
                    log.error("policy switch to %s refused: %s", value.kind, exc)
                    self._notify("policy_refused", reason=str(exc))
                    continue
                history = self.store.get_meta("policy_history", []) or []
                history.append({"time": time.time(), "from": config_to_dict(self.config)["policy"],
                                "to": value.model_dump(mode="json", exclude_none=True),
                                "next_trial": self.store.next_trial_id()})
                self.store.set_meta("policy_history", history)
                self.policy, self.config.policy = policy, value
                stored["policy"] = value.model_dump(mode="json", exclude_none=True)
                ready.clear()
            self.store.set_meta("config", stored)
            self._notify(kind, reason=json.dumps(stored[kind], sort_keys=True))

    def _take_operator_points(self, backlog: list[Trial], pending: dict[int, Proposal]) -> None:
        """Journal points an operator queued ('proposed', reason 'operator') and put them first in line.

        Each is taken from the store's queue in the transaction that journals its trial (see Store.new_trial).
        """
        if not self._queued.is_set():
            return
        self._queued.clear()  # cleared before reading: a point queued from now on sets it again
        for point in self.store.queued_points():
            prop = Proposal(np.asarray(point["x"], dtype=float), point["pool_index"],
                            reason={"policy": "operator", "operator": True, "queue_id": point["id"],
                                    **({"note": point["note"]} if point["note"] else {})})
            trial = self._new_trial(prop, pending, queue_id=point["id"])
            backlog.insert(sum(t.id in self._operator_ids for t in backlog), trial)  # after earlier operator points
            self._operator_ids.add(trial.id)
            self._notify("queued", trial=trial.id, attempt=1, reason="operator")

    def _notify(self, event: str, **fields: Any) -> None:
        """Tell the observer (the daemon's log and metrics) what the loop did; its errors never stop the loop."""
        if self.observer is not None:
            try:
                self.observer(event, fields)
            except Exception:  # noqa: BLE001
                log.exception("campaign observer failed on %s", event)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop.is_set():
                self.request_stop(abandon=True)
            else:
                self.request_stop()
                self.reporter.message(
                    f"{signal.Signals(signum).name}: finishing trials in flight; signal again to abandon them "
                    "(`aec resume` re-runs them)")

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    # the loop ------------------------------------------------------------------------------

    def run(self) -> CampaignSummary:
        t0 = time.time()
        self._pace, self._workers = [0.0, 0], None
        self._apply_requests([])
        cfg, budget = self.config, self.config.budget
        total = budget.trials
        self._elapsed_before = float(self.store.get_meta("elapsed", 0.0) or 0.0)
        records = self.store.trials()
        completed = sum(r.status == "completed" for r in records)
        stopped = finishing = ""
        if total is not None and completed >= total:
            stopped = "budget reached"
        executor = self._make_executor() if not stopped else None  # before any attempt is journaled
        backlog = self._recover_in_flight(records) if executor is not None else []
        self._operator_ids.update(t.id for t in backlog if t.reason.get("operator"))  # still first in line
        backlog.sort(key=lambda t: t.id not in self._operator_ids)
        self._queued.set()  # operator points queued before a crash or stop are measured first
        records = self.store.trials()
        failed = sum(r.status == "failed" for r in records)
        history = self.history(counts_only=self._counts_only())
        self._restore_selector(records)
        pending: dict[int, Proposal] = {
            r.id: Proposal(np.asarray(r.x), r.pool_index) for r in records if r.status in IN_FLIGHT
        }
        self.fallbacks = self._fallback_tally(records)
        best = self.best_value()
        front = [r for r in records if r.status == "completed"] if len(self.objectives) > 1 else []
        front_note = self._front_note(front, None)
        ready: list[Proposal] = []  # computed ahead while every worker was busy; not yet journaled
        proposer = self._start_proposer() if executor is not None and cfg.executor.workers > 1 else None
        old_handlers = self._install_signal_handlers()
        self.reporter.start(cfg.name, total, completed)
        for line in self.degradations():
            self.reporter.message(f"degraded: {line}")
        clean = False
        try:
            while not stopped:
                if self._abandon.is_set():
                    stopped = "interrupted"
                    break
                policy = self.policy
                self._apply_requests(ready)
                if self.policy is not policy:  # a switch: what the old policy computes is dropped
                    if proposer is not None:
                        proposer.discard()
                    if history.counts_only != self._counts_only():  # the new policy reads more (or less) of it
                        history = self.history(counts_only=self._counts_only())
                total = self.config.budget.trials
                max_failures = self._max_failures()
                in_flight = len(executor.running()) + len(backlog) + len(ready)
                if self._stop.is_set():  # finish what runs; what waits in the backlog stays journaled for resume
                    if not executor.running():
                        stopped = finishing or "stopped by request"
                        break
                else:
                    finishing = self._budget_exhausted(completed, failed, max_failures, t0, history)
                    if finishing:
                        self._stop.set()
                        continue
                    self._take_operator_points(backlog, pending)
                    in_flight = len(executor.running()) + len(backlog) + len(ready)
                if proposer is not None and (self._paused.is_set() or self._stop.is_set()):
                    ready.clear()  # paused or stopping: proposals not yet journaled are dropped, not measured later
                    proposer.discard()
                if proposer is not None and not self._stop.is_set() and not self._paused.is_set():
                    self._submit_backlog(executor, backlog)
                    if self._proposals_in_background(proposer, executor, history, pending, ready, backlog, completed):
                        stopped = "no candidates left"
                        break
                elif not self._stop.is_set() and not self._paused.is_set():  # paused: what runs finishes, nothing starts
                    self._submit_backlog(executor, backlog)
                    while ready and executor.free_slots():
                        self._submit(executor, self._new_trial(ready.pop(0), pending))
                    room = executor.free_slots()
                    if total is not None:
                        room = min(room, total - completed - in_flight)
                    if room > 0:
                        new = self._propose(history, room, list(pending.values()))
                        for prop in new:
                            self._submit(executor, self._new_trial(prop, pending))
                        if not new and in_flight == 0:
                            stopped = "no candidates left"
                            break
                    in_flight = len(executor.running()) + len(backlog) + len(ready)  # with this iteration's submissions
                    ahead = min(cfg.executor.lookahead - len(ready), (total - completed - in_flight) if total is not None else 1)
                    if ahead > 0 and not executor.free_slots() and not self._stop.is_set():
                        # Every worker is busy: the next proposals are computed now, with the running trials
                        # pending, and measured as soon as a worker frees. They are journaled only then: a run
                        # that stops first discards them, and a resume proposes afresh from its history.
                        for prop in self._propose(history, ahead, list(pending.values()) + ready):
                            prop.reason["computed_ahead"] = {"history": len(history), "pending": len(pending) + len(ready)}
                            ready.append(prop)
                wait = 0.01 if proposer is not None and (proposer.busy or (ready and executor.free_slots())) else 0.25
                self._note_policy_wait(executor, ready, backlog, completed)
                for result in executor.completed(timeout=wait):
                    outcome, rec = self._handle(result, history, pending)
                    if outcome == "retry":
                        backlog.append(Trial(result.trial.id, result.trial.attempt + 1, result.trial.params, result.trial.reason))
                        self._not_before[result.trial.id] = time.time() + self.backoff(result.trial.attempt)
                        continue
                    if outcome == "completed":
                        completed += 1
                        best = self._better(best, rec)
                        front_note = self._front_note(front, rec)
                    elif outcome == "failed":
                        failed += 1
                    self._save_elapsed(t0)
                    self.reporter.update(completed, failed, best, self._progress_note(front_note), fallbacks=self.fallbacks.count)
                self._note_policy_wait(executor, ready, backlog, completed)
            clean = True
        finally:
            if proposer is not None:
                proposer.close()
            if executor is not None:
                executor.utilisation.waiting_for_policy(time.time(), 0)
                seconds, points = self._pace
                self._workers = {**executor.utilisation.to_json(), "lookahead": cfg.executor.lookahead,
                                 "policy_s_per_point": round(seconds / points, 4) if points else None}
                self._wind_down(executor, history, pending, graceful=clean and not self._abandon.is_set())
            self._save_elapsed(t0)
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            close = getattr(self.selector, "close", None)
            if callable(close):
                close()
            self.reporter.finish()
        waiting = len(self.store.queued_points())
        if waiting:
            self.reporter.message(f"{waiting} operator point(s) queued but not yet measured ({stopped or 'stopped'}); "
                                  "they are measured first when the campaign continues")
        if self._fatal is not None:
            raise self._fatal
        return self.summary(stopped or "budget reached", time.time() - t0)

    def _note_policy_wait(self, executor, ready: list[Proposal], backlog: list[Trial], completed: int) -> None:
        """Count the free workers that have nothing to measure because no proposal is ready (none while a retry
        waits its backoff, the run stops or pauses, or the budget is all in flight)."""
        idle = 0
        if not ready and not backlog and not self._stop.is_set() and not self._paused.is_set():
            idle = executor.free_slots()
            total = self.config.budget.trials
            if total is not None:
                idle = min(idle, max(0, total - completed - len(executor.running())))
        executor.utilisation.waiting_for_policy(time.time(), idle)

    def _start_proposer(self) -> _Proposer:
        """The background proposer of this run; one left computing by an earlier run() finishes first, so that
        two threads never call one policy at once."""
        previous = getattr(self, "_proposer_thread", None)
        if previous is not None:
            previous.join()
        proposer = _Proposer(getattr(self.policy, "warm_up", None))
        self._proposer_thread = proposer.thread
        return proposer

    def _proposals_in_background(self, proposer: _Proposer, executor, history: History, pending: dict[int, Proposal],
                                 ready: list[Proposal], backlog: list[Trial], completed: int) -> bool:
        """With several workers: take the proposer's answer, journal and submit ready proposals to free workers
        (within the trial budget), and ask for more when the queue runs short. True when the policy has no
        candidate left and nothing is in flight."""
        answer = proposer.poll()
        if answer is not None:
            snap, n, snap_pending, props, error, seconds = answer
            if error is not None and not isinstance(error, Exception):
                raise error
            if error is not None:
                props = self._policy_failed(error, snap, n, snap_pending)
            else:
                self._paced(len(props), seconds)
            for prop in props:
                prop.reason["computed_ahead"] = {"history": len(snap), "pending": len(snap_pending)}
            ready.extend(props)
            proposer.empty_at = len(snap) if not props and not self._stop.is_set() else None
        if self._stop.is_set():  # a strict stop: nothing more is submitted
            ready.clear()
            return False
        total = self.config.budget.trials
        while ready and executor.free_slots() and (
                total is None or len(executor.running()) + len(backlog) < total - completed):
            self._submit(executor, self._new_trial(ready.pop(0), pending))
        in_flight = len(executor.running()) + len(backlog) + len(ready)
        if proposer.empty_at == len(history) and not proposer.busy:
            return in_flight == 0  # the policy had nothing for this history: ask again only after a result
        want = executor.free_slots() + self.config.executor.lookahead - len(ready)
        if total is not None:
            want = min(want, total - completed - in_flight)
        # Small requests, asked again as soon as each is answered: a batch's points arrive only when its last is
        # computed, and a proposal's cost is nearly all per point (the acquisition search: ~70 ms a point against
        # ~10 ms a call for the model at 4-d, 60 points), so points stream to the workers as they are made.
        if want > 0 and not proposer.busy:
            proposer.ask(self.policy, history.snapshot(), min(want, PROPOSER_CHUNK), [*pending.values(), *ready])
        return False

    def _wind_down(self, executor, history: History, pending: dict[int, Proposal], graceful: bool) -> None:
        """Stop the workers. Unless every trial has finished, abort the measurements still running (the
        instrument's abort: process group, Ray task), journal results that had already arrived as usual,
        and only then journal what was still running 'abandoned' (measured again on resume)."""
        leftover = executor.running()
        if leftover and not graceful:
            abort_all = getattr(executor, "abort_all", None)
            arrived = abort_all() if callable(abort_all) else []
            for result in arrived:
                try:
                    self._handle(result, history, pending)
                except Exception:  # noqa: BLE001 - a result that cannot be recorded now is measured again on resume
                    log.exception("trial %d: its result arrived during the abort but could not be recorded", result.trial.id)
            done = {r.trial.id for r in arrived}
            for trial in executor.running():
                if trial.id not in done:
                    self.store.append(trial.id, "abandoned", trial.attempt, {"reason": "campaign stopped; measurement aborted"})
                    self._notify("abandoned", trial=trial.id, attempt=trial.attempt, reason="campaign stopped; measurement aborted")
        executor.shutdown(wait=not executor.running())

    def _save_elapsed(self, t0: float) -> None:
        """Campaign time so far, across resumes (budget.wall_time counts all of it)."""
        try:
            self.store.set_meta("elapsed", round(self._elapsed_before + time.time() - t0, 3))
        except Exception:  # noqa: BLE001 - bookkeeping must not mask the error that ends a run
            log.debug("could not record the elapsed time", exc_info=True)

    def _submit(self, executor, trial: Trial) -> None:
        """Journal the attempt 'started', then hand it to a worker: an attempt is spent only once submitted."""
        self.store.append(trial.id, "started", trial.attempt, {})
        executor.submit(trial)
        self._notify("started", trial=trial.id, attempt=trial.attempt)

    def _submit_backlog(self, executor, backlog: list[Trial]) -> None:
        """Submit waiting trials, first in line first, each once its retry backoff has passed."""
        now = time.time()
        for trial in [t for t in backlog if self._not_before.get(t.id, 0.0) <= now]:
            if not executor.free_slots():
                return
            backlog.remove(trial)
            self._not_before.pop(trial.id, None)
            self._operator_ids.discard(trial.id)
            self._submit(executor, trial)

    def _max_failures(self) -> int | None:
        """budget.max_failures, else the trial budget (at least 10; 100 without one); none when open-ended."""
        b = self.config.budget
        if b.max_failures is not None:
            return b.max_failures
        return None if b.open_ended and b.trials is None else max(b.trials or 100, 10)

    def _budget_exhausted(self, completed: int, failed: int, max_failures: int | None, t0: float,
                          history: History) -> str:
        b = self.config.budget
        if b.trials is not None and completed >= b.trials:
            return "budget reached"
        if b.wall_time is not None and self._elapsed_before + time.time() - t0 >= b.wall_time:
            return "wall time reached"
        if max_failures is not None and failed >= max_failures:
            return f"{failed} trials failed (budget.max_failures={max_failures})"
        last = history.last()
        if last is not None and last.status == "completed":
            for cond in b.stop_conditions():
                v = last.metrics.get(cond.metric)
                if v is None:
                    continue
                if (cond.below is not None and v < cond.below) or (cond.above is not None and v > cond.above):
                    return f"stop_when: {cond.metric} = {v:.6g} reached"
        return ""

    def _propose(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        """The policy's proposals; if it raises, Sobol points marked as a fallback (or, strict, the error)."""
        t0 = time.perf_counter()
        try:
            props = self.policy.propose(history, n, pending)
            self._paced(len(props), time.perf_counter() - t0)
            return props
        except Exception as exc:  # noqa: BLE001 - a policy failure must not end a campaign
            return self._policy_failed(exc, history, n, pending)

    def _paced(self, n: int, seconds: float) -> None:
        """Tell observers of a proposal, and count its time for the policy's pace (seconds per point)."""
        self._notify("proposal", n=n, duration=seconds)
        self._pace[0] += seconds
        self._pace[1] += n

    def _policy_failed(self, exc: Exception, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        """A policy that raised: strict, no proposal and run() raises; else Sobol points marked as a fallback."""
        kind = self.config.policy.kind
        if isinstance(exc, PolicyFallbackError):
            return self._strict_stop(exc)
        why = f"policy error: {type(exc).__name__}: {exc}"
        if self.strict:
            error = PolicyFallbackError(kind, why)
            error.__cause__ = exc
            return self._strict_stop(error)
        log.error("policy %s failed; using Sobol points for this step", kind, exc_info=exc)
        props = SobolPolicy(self.problem).propose(history, n, pending)
        for p in props:
            p.reason["fallback"] = why
        return props

    def _strict_stop(self, error: PolicyFallbackError) -> list[Proposal]:
        """Strict mode: no proposal; the trials in flight finish and are recorded, then run() raises `error`."""
        log.error("%s; finishing the trials in flight, then stopping", error)
        self._fatal = self._fatal or error
        self._stop.set()
        return []

    def _count_fallback(self, trial_id: int, prop: Proposal) -> None:
        """Tally a proposal made by a fallback; the first of each reason is printed, whatever the verbosity."""
        first = self.fallbacks.add(trial_id, prop.reason)
        if first is not None:
            log.warning("trial %d: policy %s fell back: %s", trial_id, self.config.policy.kind, first)
            self.reporter.message(f"trial {trial_id}: policy {self.config.policy.kind} fell back: {first} "
                                  "(counted as 'fallbacks' in the progress line and the summary)")

    def _count_measurement_fallback(self, trial_id: int, m) -> None:
        """Tally a measurement that an instrument made in a fallback way (a simulator on the CPU, not its GPU)."""
        first = self.fallbacks.add(trial_id, {"fallback": (m.metadata or {}).get("fallback")})
        if first is not None:
            self.reporter.message(f"trial {trial_id}: {first} (counted as 'fallbacks' in the progress line and the summary)")

    def _fallback_tally(self, records: list[TrialRecord]) -> FallbackTally:
        """Proposals a policy fallback made, and measurements an instrument fallback made (from the journal)."""
        tally = FallbackTally.from_records(records)
        for _, tid, kind, _, _, payload in self.store.events():
            if kind == "completed":
                tally.add(tid, {"fallback": (payload.get("metadata") or {}).get("fallback")})
        return tally

    def _new_trial(self, prop: Proposal, pending: dict[int, Proposal], queue_id: int | None = None) -> Trial:
        """Journal a proposal as a new trial ('proposed'), pending from now on, its fallback counted."""
        trial = self._journal_new_trial(prop, queue_id)
        pending[trial.id] = prop
        self._count_fallback(trial.id, prop)
        return trial

    def _journal_new_trial(self, prop: Proposal, queue_id: int | None = None) -> Trial:
        if prop.pool_index is not None:
            params = self.space.pool_params(int(prop.pool_index))
            x = self.problem.space.pool[int(prop.pool_index)]
        else:
            params = self.space.decode(prop.x)
            x = self.space.encode(params)
        prop.x = np.asarray(x, dtype=float)
        rec = self.store.new_trial({"params": params, "x": prop.x.tolist(), "pool_index": prop.pool_index,
                                    "reason": prop.reason}, queue_id=queue_id)
        return Trial(rec.id, 1, params, prop.reason)

    def _front_note(self, front: list[TrialRecord], rec: TrialRecord | None) -> str:
        """With several objectives: the Pareto set's size and hypervolume once `rec` joins `front`.

        `front` is narrowed in place to the Pareto set: the set, its hypervolume and an inferred
        reference point depend on the non-dominated trials alone, so each trial costs O(front).
        """
        if len(self.objectives) < 2:
            return ""
        if rec is not None:
            front.append(rec)
        from controller.results import pareto_summary

        ps = pareto_summary(front, self.objectives, self.constraints)
        front[:] = ps.trials
        if ps.hypervolume is None:
            return ""
        return f"HV {ps.hypervolume:.4g} ({len(ps.trials)} on the front{', inferred ref' if ps.reference_inferred else ''})"

    def _better(self, best: float | None, rec: TrialRecord) -> float | None:
        """The best single-objective value after `rec` completed (None for several objectives)."""
        if len(self.objectives) != 1 or not feasible(rec, self.objectives, self.constraints):
            return best
        o = self.objectives[0]
        v = rec.metrics[o.metric]
        return v if best is None or o.sign() * v > o.sign() * best else best

    def _handle(self, result: TrialResult, history: History, pending: dict[int, Proposal]) -> tuple[str, TrialRecord | None]:
        trial, attempts = result.trial, self.config.executor.attempts
        error, retryable = result.error, result.retryable
        decision, metrics, dropped = None, {}, []
        if result.ok:
            m = result.measurement
            error, metrics, dropped = self._check_reading(m)
            if error is not None:
                retryable = False
            else:
                try:
                    decision = self.selector.decide(trial.id, m.data, metrics)
                except Exception as exc:  # noqa: BLE001 - e.g. a data product of the wrong shape: this trial fails, not the campaign
                    error, retryable = f"data selection: {exc}", False
        if error is None:
            try:
                rec = self._record(result, metrics, dropped, decision)
            except Exception as exc:  # noqa: BLE001 - an unstorable result (object array, full disk) fails its trial only
                log.exception("trial %d: the result could not be recorded", trial.id)
                error, retryable = f"recording the result failed: {type(exc).__name__}: {exc}", False
            else:
                pending.pop(trial.id, None)
                history.append(self._observation(rec))
                self._count_measurement_fallback(trial.id, result.measurement)
                self._notify("completed", trial=trial.id, attempt=trial.attempt, duration=result.finished - result.started,
                             kept=rec.kept, fallback=bool(rec.reason.get("fallback")))
                return "completed", rec
        final = not retryable or trial.attempt >= attempts or self._stop.is_set()
        self._notify("failed" if final else "retry", trial=trial.id, attempt=trial.attempt,
                     duration=result.finished - result.started, reason=error)
        if not final:
            self.store.append(trial.id, "failed", trial.attempt, {"error": error, "worker": result.worker, "final": False})
            return "retry", None
        rec = self.store.append(trial.id, "failed", trial.attempt, {"error": error, "worker": result.worker, "final": True})
        pending.pop(trial.id, None)
        history.append(self._observation(rec))
        self.reporter.message(f"trial {trial.id} failed after {trial.attempt} attempt(s): {error}")
        return "failed", rec

    def _record(self, result: TrialResult, metrics: dict[str, float], dropped: list[str], decision) -> TrialRecord:
        """Journal a completed measurement, its data product written first (atomically) when kept."""
        m, trial = result.measurement, result.trial
        metrics = dict(metrics)
        if decision.novelty is not None:
            metrics.setdefault("novelty", float(decision.novelty))
        data_path = self.store.write_data(trial.id, m.data) if (m.data is not None and decision.keep) else None
        payload = {
            "metrics": metrics, "sem": m.sem, "worker": result.worker,
            "duration": result.finished - result.started, "kept": bool(decision.keep) if m.data is not None else None,
            "decision": decision.reason or None, "novelty": decision.novelty, "pvalue": decision.pvalue,
            "data_path": data_path, "metadata": _jsonable(m.metadata),
        }
        if dropped:
            payload["dropped_metrics"] = dropped
        rec = self.store.append(trial.id, "completed", trial.attempt, payload)
        blob = getattr(self.selector, "state_bytes", lambda: None)()
        if blob:
            self.store.save_checkpoint("selector", blob)
        return rec

    def _check_reading(self, m) -> tuple[str | None, dict[str, float], list[str]]:
        """(why the reading is a failed measurement, or None; the metrics to record; the metrics dropped).

        An objective or constraint metric that is not a finite number, or lies outside its `range`, fails
        the measurement (it is never fed to a model); any other non-finite metric is dropped and named.
        """
        ranges: dict[str, tuple[float, float] | None] = {}
        for entry in [*self.config.objectives, *self.config.constraints]:
            if ranges.get(entry.metric) is None:
                ranges[entry.metric] = entry.range
        metrics: dict[str, float] = {}
        dropped: list[str] = []
        for name, value in m.metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                return f"metric {name!r} is {value!r}; expected a number", {}, []
            v = float(value)
            if not math.isfinite(v):
                if name in ranges:
                    return f"metric {name!r} is {v} (expected a finite number)", {}, []
                dropped.append(name)
                continue
            bounds = ranges.get(name)
            if bounds is not None and not bounds[0] <= v <= bounds[1]:
                return f"metric {name!r} = {v:g} is outside its range [{bounds[0]:g}, {bounds[1]:g}]", {}, []
            metrics[name] = v
        for name, s in (m.sem or {}).items():
            if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) or not math.isfinite(s) or s < 0:
                return f"sem of {name!r} is {s!r}; expected a finite number >= 0", {}, []
        scored_later = {"novelty"} if not isinstance(self.selector, KeepAll) else set()  # none before the first model
        missing = [o.metric for o in self.objectives if o.metric not in metrics and o.metric not in scored_later]
        if missing:
            return f"the instrument returned no {', '.join(map(repr, missing))} (it returned {sorted(m.metrics)})", {}, []
        return None, metrics, dropped

    def _recover_in_flight(self, records: list[TrialRecord]) -> list[Trial]:
        """Trials that a crash or stop left in flight, to be measured again; journaled 'started' only when submitted.

        A trial still 'started' means the controller died during it (a crash). One that has crashed the
        controller and spent `executor.attempts` is journaled failed instead, so a poison trial (an
        instrument that segfaults, a result that kills the process) cannot loop over resumes forever.
        """
        max_attempts = self.config.executor.attempts
        crashes: dict[int, int] = {}
        for _, tid, kind, _, _, payload in self.store.events():
            if kind == "abandoned" and payload.get("crash"):
                crashes[tid] = crashes.get(tid, 0) + 1
        backlog = []
        for r in records:
            if r.status not in IN_FLIGHT:
                continue
            spent = r.attempts - (1 if r.status == "proposed" else 0)
            if r.status == "started":
                self.store.append(r.id, "abandoned", r.attempts,
                                  {"reason": "interrupted: the controller stopped during this attempt", "crash": True})
                crashes[r.id] = crashes.get(r.id, 0) + 1
            if crashes.get(r.id) and spent >= max_attempts:
                why = f"crashed the controller {crashes[r.id]} time(s); {spent} of {max_attempts} attempts spent"
                self.store.append(r.id, "failed", r.attempts, {"error": why, "final": True})
                self.reporter.message(f"trial {r.id} failed: {why}")
                continue
            backlog.append(Trial(r.id, spent + 1, r.params, r.reason))
        if backlog:
            self.reporter.message(f"resuming: {len(backlog)} trial(s) left in flight are measured again")
        return backlog

    def _restore_selector(self, records: list[TrialRecord]) -> None:
        if isinstance(self.selector, KeepAll):
            return
        blob = self.store.load_checkpoint("selector")
        if blob is not None:
            try:
                self.selector.load_state_bytes(blob)
            except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint costs a retraining, not the campaign
                log.warning("the novelty checkpoint could not be loaded (%s); the model is retrained", exc)
        from policies.base import Decision

        done = sorted((r for r in records if r.status == "completed"), key=lambda r: r.completed_seq or 0)
        decisions = [Decision(r.novelty, bool(r.kept), r.pvalue, r.decision or "") for r in done]
        kept = _DataProducts(self.store, [r.data_path for r in done if r.data_path])
        self.selector.restore(decisions, kept)

    # results -------------------------------------------------------------------------------

    def summary(self, stopped: str = "", elapsed: float = 0.0) -> CampaignSummary:
        records = self.store.trials()
        out = CampaignSummary(
            name=self.config.name, store=str(self.store.path),
            completed=sum(r.status == "completed" for r in records),
            failed=sum(r.status == "failed" for r in records), stopped=stopped, elapsed=elapsed,
            fallbacks=self._fallback_tally(records).to_json(), degraded=self.degradations(),
            workers=self._workers,
        )
        if len(self.objectives) == 1:
            best = best_trial(records, self.objectives[0], self.constraints)
            if best is not None:
                out.best = {"id": best.id, "params": best.params, "metrics": best.metrics}
        else:
            from controller.results import pareto_summary

            ps = pareto_summary(records, self.objectives, self.constraints)
            out.pareto = [{"id": r.id, "params": r.params, "metrics": r.metrics} for r in ps.trials]
            out.hypervolume = ps.hypervolume
        return out

    def feasible_records(self) -> list[TrialRecord]:
        return [r for r in self.store.trials() if feasible(r, self.objectives, self.constraints)]

    def close(self) -> None:
        with self._queue_lock:
            if self._queue is not None:
                self._queue.close()
                self._queue = None
        self.store.close()


class _Proposer:
    """One background thread that computes proposals from snapshots, so the loop keeps collecting and submitting.

    The loop hands it (policy, history, n, pending) with `ask` and picks the answer up with `poll`; one request
    at a time. It never touches the store: the loop journals what it takes. `discard` drops the answer to the
    request in progress (a pause or a policy switch); `close` ends the thread promptly (an Event, a bounded join;
    a proposal still running finishes in the daemon thread and its answer is dropped).
    """

    def __init__(self, warm_up: Callable[[], None] | None = None) -> None:
        self._warm_up = warm_up  # the policy's one-time costs, paid while the first trials measure
        self._in: queue.Queue[tuple] = queue.Queue()
        self._out: queue.Queue[tuple] = queue.Queue()
        self._closed = threading.Event()
        self.generation = 0
        self.busy = False  # a request is out (set and cleared by the loop's thread only)
        self.empty_at: int | None = None  # history length at which the policy last had no candidate
        self.thread = threading.Thread(target=self._work, name="aec-proposer", daemon=True)
        self.thread.start()

    def ask(self, policy: Any, history: History, n: int, pending: list[Proposal]) -> None:
        self.busy = True
        self._in.put((self.generation, policy, history, n, pending))

    def discard(self) -> None:
        self.generation += 1

    def poll(self) -> tuple | None:
        """(history, n, pending, proposals or None, error or None, seconds) of the current request, once answered."""
        while True:
            try:
                gen, *answer = self._out.get_nowait()
            except queue.Empty:
                return None
            self.busy = False
            if gen == self.generation:
                return tuple(answer)

    def close(self, join: float = 1.0) -> None:
        self._closed.set()
        self.thread.join(join)

    def _work(self) -> None:
        while not self._closed.is_set():
            try:
                gen, policy, history, n, pending = self._in.get(timeout=0.1)
            except queue.Empty:
                self._warm_up_once()
                continue
            t0 = time.perf_counter()
            try:
                props, error = policy.propose(history, n, pending), None
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which decides (fallback, strict stop)
                props, error = None, exc
            if not self._closed.is_set():
                self._out.put((gen, history, n, pending, props, error, time.perf_counter() - t0))

    def _warm_up_once(self) -> None:
        """The policy's one-time costs, the first time the thread has nothing to do (after the initial design)."""
        warm_up, self._warm_up = self._warm_up, None
        if warm_up is None:
            return
        try:
            warm_up()
        except Exception:  # noqa: BLE001 - only a head start: the first real proposal meets (and reports) any fault
            log.debug("the policy's warm-up failed", exc_info=True)


def _is_empty_sqlite(path: Path) -> bool:
    """True for a SQLite file with no tables (a crash during store creation leaves one)."""
    import sqlite3

    try:
        with sqlite3.connect(str(path)) as db:
            return db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.DatabaseError:
        return False


class _DataProducts(Sequence):
    """Kept data products read from the store one at a time, so a restore never holds them all."""

    def __init__(self, store: Store, paths: list[str]):
        self.store, self.paths = store, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.store.read_data(p) for p in self.paths[i]]
        return self.store.read_data(self.paths[i])


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in (meta or {}).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (np.floating, np.integer, np.bool_)):
            out[k] = v.item()
        elif isinstance(v, (list, tuple)) and len(v) <= 64:
            out[k] = [x.item() if hasattr(x, "item") else x for x in v]
    return out
