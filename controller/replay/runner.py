"""Run a replay plan: each run a campaign in its own store, in parallel processes or Ray tasks, with one
progress bar.

A run whose store says it finished is skipped, one that was interrupted is resumed (`Campaign.resume`),
so `aec replay ... --out DIR` again, after a crash or a SIGKILL, redoes no finished run.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from controller.replay.plan import Plan, Run
from controller.replay.progress import SilentProgress

if TYPE_CHECKING:
    from controller.replay.spec import RaySpec

log = logging.getLogger(__name__)

FINISHED_META = "replay"
RUN_META = "replay_run"  # the run's fingerprint and config (Run.meta()): which replay made this store
INTERRUPTED = ("stopped by request", "interrupted")  # a campaign stopped by a signal: its run is not finished


class Progress(Protocol):
    """One bar over every run of a replay, counted in measurements."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, key: str, done: int) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


@dataclass
class RunOutcome:
    key: str
    status: str  # finished | skipped | failed
    completed: int = 0
    stopped: str = ""
    error: str | None = None
    warnings: int = 0


@dataclass
class ReplayOutcome:
    runs: list[RunOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.runs)

    @property
    def warnings(self) -> int:
        return sum(r.warnings for r in self.runs)


def run_state(store: Path) -> tuple[bool, int]:
    """(finished, completed measurements) of a run's store, read-only; a missing or empty store is (False, 0)."""
    from controller.errors import UserError
    from controller.store import Store

    if not store.is_file() or store.stat().st_size == 0:
        return False, 0
    try:
        with Store(store) as st:
            done = sum(r.status == "completed" for r in st.trials())
            return bool((st.get_meta(FINISHED_META) or {}).get("finished")), done
    except UserError:
        return False, 0


def check_reuse(plan: Plan) -> None:
    """Refuse (UserError) to reuse a replay folder made by a different replay: a run of the same name in
    DIR/replay.json or a run store (finished or interrupted) whose fingerprint differs from this plan's.
    Nothing is written; call before `plan.write()`."""
    from controller.errors import UserError
    from controller.replay.plan import PLAN_FILE

    out = Path(plan.out)
    old_runs: dict[str, Any] = {}
    if (out / PLAN_FILE).is_file():
        try:
            old_runs = {r.key: r for r in Plan.read(out).runs}
        except UserError as exc:
            raise UserError(f"{exc}; or remove it and run the replay again (each run's store says which replay "
                            "made it)") from None
    for run in plan.runs:
        old = old_runs.get(run.key)
        theirs = old.meta() if old is not None else None
        if theirs is None or theirs["fingerprint"] == run.fingerprint:
            theirs = _store_meta(Path(run.store))
        if theirs is not None and theirs.get("fingerprint") != run.fingerprint:
            raise UserError(f"{out} was made by a different replay ({describe_difference(theirs, run.meta(), out)}); "
                            "use a new --out")


def _store_meta(store: Path) -> dict[str, Any] | None:
    """A run store's RUN_META when it holds trials ({} when it has none: made before fingerprints), else None."""
    from controller.errors import UserError
    from controller.store import Store

    if not store.is_file() or store.stat().st_size == 0:
        return None
    try:
        with Store(store) as st:
            if not st.trials():
                return None
            return st.get_meta(RUN_META) or {}
    except UserError:
        return None


def describe_difference(old: dict[str, Any], new: dict[str, Any], out: Path) -> str:
    """What differs between two runs' meta, in a few words: 'budget 5 vs 10', 'the data's contents (FILE)'."""
    if not old.get("fingerprint"):
        return "its runs carry no fingerprint: an earlier aec made them"
    parts = []
    if old.get("data_hash") != new.get("data_hash"):
        src_old, src_new = old.get("source"), new.get("source")
        parts.append(f"contents of {src_new}" if src_old == src_new or not src_old
                     else f"data {src_old} vs {src_new}")
    data_dir = str((out / "data").resolve())
    a, b = _flat(old.get("config") or {}), _flat(new.get("config") or {})
    for key in sorted(set(a) | set(b), key=lambda k: (k != "budget.trials", k)):
        va, vb = a.get(key, "(none)"), b.get(key, "(none)")
        if va == vb or (isinstance(va, str) and isinstance(vb, str) and va.startswith(data_dir)
                        and vb.startswith(data_dir)):  # pool files: named by their contents, compared above
            continue
        parts.append(f"{'budget' if key == 'budget.trials' else key} {va} vs {vb}")
    if not parts:
        return "another fingerprint"
    return "; ".join(parts[:3]) + ("; ..." if len(parts) > 3 else "")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def execute(plan: Plan, workers: int = 1, progress: Progress | None = None,
            ray: "RaySpec | None" = None) -> ReplayOutcome:
    """Run every unfinished run of `plan` (as Ray tasks with `ray`, else in `workers` processes); returns what
    happened to each."""
    progress = progress or SilentProgress()
    outcome = ReplayOutcome()
    todo: list[Run] = []
    done_so_far: dict[str, int] = {}
    budgets = {r.key: plan.problems[r.problem].budget for r in plan.runs}
    for run in plan.runs:
        finished, done = run_state(Path(run.store))
        done_so_far[run.key] = budgets[run.key] if finished else done
        if finished:
            outcome.runs.append(RunOutcome(run.key, "skipped", done))
        else:
            todo.append(run)
    on_ray = None
    if ray is not None and todo:
        from controller.replay.ray_runs import RayRuns

        on_ray = RayRuns(ray)  # a Ray that cannot start or an address that does not answer: before the bar starts
    progress.start(sum(budgets.values()), sum(done_so_far.values()))
    if outcome.runs:
        progress.message(f"{len(outcome.runs)} run(s) already finished: skipped")
    try:
        if on_ray is not None:
            if workers > 1:
                progress.message(f"workers {workers}: not used with Ray (cpus_per_run sets how many runs share a node)")
            outcome.runs += on_ray.run(todo, progress)
        elif workers <= 1 or len(todo) <= 1:
            for run in todo:
                outcome.runs.append(_in_process(run, progress))
        else:
            outcome.runs += _in_pool(todo, workers, progress)
    finally:
        progress.finish()
        if on_ray is not None:
            on_ray.close()
    return outcome


def _in_process(run: Run, progress: Progress) -> RunOutcome:
    """One run in this process; a Ctrl-C that stopped its campaign stops the replay (the run resumes next time)."""
    result = run_one(run.__dict__, CallbackReporter(lambda n: progress.advance(run.key, n)))
    if result["status"] == "interrupted":
        raise KeyboardInterrupt
    return outcome_of(run.key, result, progress)


def _in_pool(todo: list[Run], workers: int, progress: Progress) -> list[RunOutcome]:
    """Runs in `workers` spawned processes (torch with one thread each, killed with this process);
    measurement counts come back on a queue."""
    ctx = multiprocessing.get_context("spawn")
    out: list[RunOutcome] = []
    updates = ctx.Queue()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(updates,)) as pool:
        futures: dict[Future, str] = {pool.submit(run_one, r.__dict__): r.key for r in todo}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(updates, progress)
            for f in finished:
                try:
                    result = f.result()
                except Exception as exc:  # noqa: BLE001 - a crashed worker fails its run, not the replay
                    result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                out.append(outcome_of(futures[f], result, progress))
        _drain(updates, progress)
    return out


def _drain(updates: Any, progress: Progress) -> None:
    while True:
        try:
            key, n = updates.get_nowait()
        except (queue.Empty, EOFError, OSError):
            return
        progress.advance(key, n)


def outcome_of(key: str, result: dict[str, Any], progress: Progress) -> RunOutcome:
    out = RunOutcome(key, result["status"], result.get("completed", 0), result.get("stopped", ""), result.get("error"),
                     result.get("warnings", 0))
    if out.status == "failed":
        progress.message(f"run {key} failed: {out.error} (run the replay again to retry it)")
    return out


_UPDATES: Any = None  # a worker process's queue to the progress bar


def _worker_init(updates: Any) -> None:
    """A worker process: one thread (the runs are the parallelism), dies with the replay (Linux PDEATHSIG),
    and reports measurement counts on `updates`."""
    global _UPDATES
    _UPDATES = updates
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        log.debug("no PR_SET_PDEATHSIG here: a worker may outlive a killed replay by one run")
    import torch

    torch.set_num_threads(1)


class CallbackReporter:
    """A campaign Reporter that passes the run's measurement count on."""

    def __init__(self, callback):
        self.callback = callback

    def start(self, name: str, total: int | None, done: int) -> None:
        self.callback(done)

    def update(self, done: int, failed: int, best: float | None, note: str = "", fallbacks: int = 0) -> None:
        self.callback(done)

    def message(self, text: str) -> None:
        log.info(text)

    def finish(self) -> None: ...


def run_one(run: dict[str, Any], reporter: Any = None) -> dict[str, Any]:
    """One run, created or resumed from its store; the store is marked finished when its campaign ends.
    Library warnings are counted (returned as `warnings`), not printed from the workers."""
    if reporter is None:
        updates = _UPDATES
        reporter = CallbackReporter((lambda n: updates.put((run["key"], n))) if updates is not None else (lambda n: None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        result = _run_campaign(run, reporter)
    result["warnings"] = len(caught)
    return result


def _run_campaign(run: dict[str, Any], reporter: Any) -> dict[str, Any]:
    from controller.campaign import Campaign
    from controller.errors import UserError
    from controller.preflight import parse_config

    store = Path(run["store"])
    t0 = time.time()
    try:
        config = parse_config(run["config"], Path(run["base_dir"]), source=run["key"])
        if has_trials(store):
            campaign = Campaign.resume(store, reporter=reporter)
            _same_run(campaign, config, store, run.get("fingerprint"))
        else:
            campaign = Campaign(config, store, reporter=reporter)
            campaign.store.set_meta(RUN_META, {"fingerprint": run.get("fingerprint", ""), "config": run["config"],
                                               "data_hash": run.get("data_hash"), "source": run.get("source")})
        try:
            summary = campaign.run()
            if summary.stopped in INTERRUPTED:
                return {"status": "interrupted", "completed": summary.completed, "stopped": summary.stopped}
            campaign.store.set_meta(FINISHED_META, {"finished": True, "stopped": summary.stopped,
                                                    "seconds": round(time.time() - t0, 3)})
        finally:
            campaign.close()
    except UserError as exc:
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - strict-mode fallbacks and policy errors fail this run only
        log.debug("run %s failed", run["key"], exc_info=True)
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "finished", "completed": summary.completed, "stopped": summary.stopped}


def has_trials(store: Path) -> bool:
    from controller.errors import UserError
    from controller.store import Store

    if not store.is_file() or store.stat().st_size == 0:
        return False
    try:
        with Store(store) as st:
            return bool(st.trials())
    except UserError:
        return False


def _same_run(campaign, config, store: Path, fingerprint: str | None = None) -> None:
    """A store under DIR/runs/ left by another replay (other data, policy or budget) is refused, not mixed in."""
    from controller.config import config_to_dict
    from controller.errors import UserError

    mine = config_to_dict(config)
    theirs = config_to_dict(campaign.config)
    meta = campaign.store.get_meta(RUN_META) or {}
    if fingerprint and meta.get("fingerprint") != fingerprint:
        campaign.close()
        raise UserError(f"{store}: holds a run of another replay (another fingerprint); use a new --out folder")
    if mine != theirs:
        campaign.close()
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise UserError(f"{store}: holds a run of another replay (differs in {', '.join(differ)}); "
                        "use a new --out folder")
