"""Replay runs as Ray tasks, on a local Ray started for the replay or on a running cluster.

One code path for both: each task runs its campaign in a folder of its own worker, with the run's files and
its partial store (an interrupted run) shipped in as bytes, and returns the store as bytes, which the driver
installs under OUT/runs/ atomically. Measurement counts come back through a `ray.util.queue.Queue` that the
driver drains into the one progress bar. A task that raises or whose worker dies fails its run only.
"""
from __future__ import annotations

import math
import sqlite3
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from controller.errors import UserError
from controller.replay.plan import Run
from controller.replay.runner import RUN_META, CallbackReporter, Progress, RunOutcome, has_trials, outcome_of, run_one
from controller.replay.shipping import files_of, install, pack, retarget, unpack, with_files
from controller.replay.spec import RaySpec
from controller.store import WriterLock

POLL_S = 0.2
"""Seconds between the driver's looks at finished tasks and at the measurement counts."""


class RayRuns:
    """Runs as Ray tasks of `settings.cpus_per_run` CPUs each; Ray runs as many at once as the cluster holds.
    Made before the progress bar starts, so that an address that does not answer is the only line printed."""

    def __init__(self, settings: RaySpec):
        from controller.executors.ray_runtime import connect

        self.settings = settings
        address_label, start_label = settings.labels
        self.started = connect(settings.address, address_label, start_label)
        try:
            self.capacity = _capacity(settings.cpus_per_run, start_label)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Shut down a Ray that this replay started; a cluster or a Ray the caller started is left running."""
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def run(self, todo: list[Run], progress: Progress) -> list[RunOutcome]:
        """Every run of `todo`, each its store's writer lock held here while its task runs; an interrupted replay
        cancels its tasks (their runs resume next time from the store they had before)."""
        import ray
        from ray.util.queue import Queue

        progress.message(self.capacity)
        out: list[RunOutcome] = []
        locks: dict[str, WriterLock] = {}
        tasks: dict[Any, Run] = {}
        pending: list[Any] = []
        updates = Queue(actor_options={"num_cpus": 0})
        try:
            remote = ray.remote(run_task).options(num_cpus=self.settings.cpus_per_run, max_retries=0)
            shipped: dict[Path, Any] = {}
            for run in todo:
                Path(run.store).parent.mkdir(parents=True, exist_ok=True)
                lock = WriterLock(Path(run.store))
                holder = lock.acquire()
                if holder is not None:
                    out.append(outcome_of(run.key, {"status": "failed", "error": f"{run.store} is in use by {holder}"},
                                          progress))
                    continue
                locks[run.key] = lock
                try:
                    store = pack(Path(run.store)) if has_trials(Path(run.store)) else None
                    files = {name: _put(ray, shipped, path) for name, path in files_of(run.config, run.base_dir).items()
                             if path.is_file()}
                except (OSError, sqlite3.Error) as exc:
                    locks.pop(run.key).release()
                    out.append(outcome_of(run.key, {"status": "failed", "error": f"could not read {run.store} or its "
                                                    f"files to ship them: {exc}"}, progress))
                    continue
                tasks[remote.remote(run.__dict__, store, files, updates)] = run
            pending = list(tasks)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                _drain(updates, progress)
                for ref in ready:
                    run = tasks[ref]
                    out.append(_finish(ray, ref, run, progress))
                    locks.pop(run.key).release()
            _drain(updates, progress)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            for lock in locks.values():
                lock.release()
            updates.shutdown()
        return out


def _put(ray: Any, shipped: dict[Path, Any], path: Path) -> Any:
    """Each input file goes into Ray's object store once, however many runs read it."""
    if path not in shipped:
        shipped[path] = ray.put(path.read_bytes())
    return shipped[path]


def _capacity(cpus_per_run: float, start_label: str) -> str:
    """How many runs this cluster runs at once, in words; an error when no node can take one run."""
    import ray

    cpus = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    at_once = sum(math.floor(c / cpus_per_run + 1e-9) for c in cpus)
    if not at_once:
        raise UserError(f"{start_label}: each run asks for {cpus_per_run:g} CPU (cpus_per_run) but no node of this Ray "
                        f"cluster has that many (largest: {max(cpus, default=0):g} CPU); use a smaller cpus_per_run")
    return (f"Ray: up to {at_once} run(s) at a time ({sum(cpus):g} CPU on {len(cpus)} node(s), "
            f"{cpus_per_run:g} CPU per run)")


def _drain(updates: Any, progress: Progress) -> None:
    for key, n in updates.get_nowait_batch(updates.qsize()):
        progress.advance(key, n)


def _finish(ray: Any, ref: Any, run: Run, progress: Progress) -> RunOutcome:
    """A task's result, its store installed under OUT/runs/; a task that raised or died fails its run."""
    from ray.exceptions import RayTaskError

    from controller.executors.ray_runtime import first_line

    try:
        result = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - a task's error or a dead worker fails this run, not the replay
        cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
        error = f"Ray task: {type(cause).__name__}: {first_line(cause)}"
        return outcome_of(run.key, {"status": "failed", "error": error}, progress)
    store = result.pop("store", None)
    if store is not None:
        try:
            install(store, Path(run.store))
        except (OSError, ValueError, tarfile.TarError) as exc:
            result = {"status": "failed", "error": f"could not write {run.store}: {exc}"}
    return outcome_of(run.key, result, progress)


def run_task(run: dict[str, Any], store: bytes | None, files: dict[str, Any], updates: Any) -> dict[str, Any]:
    """One run on a Ray worker, in a folder of its own: the run's files and its partial store unpacked there, the
    campaign run (or resumed), the store returned as bytes (`store`) with its config naming the driver's files again."""
    import ray
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="aec-replay-run-") as tmp:
        folder = Path(tmp)
        (folder / "files").mkdir()
        local: dict[str, str] = {}
        for i, (name, ref) in enumerate(files.items()):
            copy = folder / "files" / f"{i}-{Path(name).name}"
            copy.write_bytes(ray.get(ref))
            local[name] = str(copy)
        path = folder / Path(run["store"]).name
        if store is not None:
            unpack(store, folder)
            retarget(path, local, (RUN_META,))
        key = run["key"]
        result = run_one({**run, "store": str(path), "config": with_files(run["config"], local)},
                         CallbackReporter(lambda n: updates.put((key, n))))
        if has_trials(path):
            retarget(path, {v: k for k, v in local.items()}, (RUN_META,))
            result["store"] = pack(path)
    return result
