"""RayExecutor on a real local Ray (2 CPUs, no GPU): warm actors, timeouts that abort, dead workers replaced,
cancel, shutdown, and resources or addresses that cannot work failing in seconds with one line."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.executors import ExecutorError, RayExecutor, Trial, TrialResult
from tests.ray_helpers import ray_fixture

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

SLEEPER = """read params
echo $$ > "$1"
case "$params" in *quick*) echo '{"y": 1}'; exit 0;; esac
exec sleep 30
"""


local_ray = ray_fixture(num_gpus=0)


@pytest.fixture
def fns(workdir: Path) -> str:
    return str(workdir)


def _results(ex: RayExecutor, n: int, within: float) -> list[TrialResult]:
    out: list[TrialResult] = []
    deadline = time.time() + within
    while len(out) < n and time.time() < deadline:
        out += ex.completed(timeout=0.5)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid_of(ex: RayExecutor, i: int) -> int:
    return ray.get(ex.workers[i].actor.ready.remote())["pid"]


def _sleeper(tmp_path: Path) -> tuple[dict, Path]:
    (tmp_path / "sleeper.sh").write_text(SLEEPER)
    pidfile = tmp_path / "measuring.pid"
    return {"kind": "command", "argv": ["/bin/sh", str(tmp_path / "sleeper.sh"), str(pidfile)]}, pidfile


def _wait_for(path: Path, within: float = 20.0) -> int:
    deadline = time.time() + within
    while time.time() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_a_hung_trial_is_aborted_at_its_timeout_and_its_warm_worker_kept(tmp_path: Path):
    spec, pidfile = _sleeper(tmp_path)
    ex = RayExecutor(spec, str(tmp_path), seed=0, workers=1, timeout=1.0, cpus_per_worker=0.25)
    actor_pid = _pid_of(ex, 0)
    ex.submit(Trial(1, 1, {"slow": 1}))
    measuring = _wait_for(pidfile)
    (r,) = _results(ex, 1, within=30.0)
    # "instrument aborted" (not "killed and replaced") says it came back within the grace: an order, not a duration
    assert not r.ok and r.retryable and "timed out after 1 s; instrument aborted" in r.error
    assert not _alive(measuring), "abort() did not stop the instrument's program"
    ex.submit(Trial(2, 1, {"quick": 1}))
    (r,) = _results(ex, 1, within=15.0)
    assert r.ok and _pid_of(ex, 0) == actor_pid, "the actor that aborted cleanly should stay warm"
    ex.shutdown()


def test_an_instrument_that_ignores_abort_has_its_worker_killed_and_replaced(fns: str):
    ex = RayExecutor({"kind": "function", "target": "fns:hangs"}, fns, seed=0, workers=1, timeout=0.5,
                     cpus_per_worker=0.25)
    ex.ABORT_GRACE = 0.5
    old = _pid_of(ex, 0)
    ex.submit(Trial(1, 1, {"x0": 0.9, "x1": 0.5}))
    (r,) = _results(ex, 1, within=15.0)
    assert not r.ok and r.retryable and "killed and replaced" in r.error
    ex.submit(Trial(2, 1, {"x0": 0.1, "x1": 0.5}))
    (r,) = _results(ex, 1, within=30.0)
    assert r.ok and r.trial.id == 2
    assert _pid_of(ex, 0) != old and not _alive(old)
    ex.shutdown()


def test_a_worker_killed_mid_trial_returns_a_retryable_failure_and_a_fresh_actor(fns: str):
    ex = RayExecutor({"kind": "function", "target": "fns:hangs"}, fns, seed=0, workers=2, cpus_per_worker=0.25)
    ex.submit(Trial(1, 1, {"x0": 0.9, "x1": 0.5}))
    ex.submit(Trial(2, 1, {"x0": 0.2, "x1": 0.5}))
    victim = next(w for w in ex.workers if w.trial.id == 1)
    old = _pid_of(ex, victim.index)
    ray.kill(victim.actor)
    got = {r.trial.id: r for r in _results(ex, 2, within=20.0)}
    assert got[2].ok
    assert not got[1].ok and got[1].retryable and "ray worker died" in got[1].error
    assert ex.free_slots() == 2
    ex.submit(Trial(1, 2, {"x0": 0.3, "x1": 0.5}))
    (r,) = _results(ex, 1, within=30.0)
    assert r.ok and r.trial.attempt == 2 and _pid_of(ex, victim.index) != old
    assert ex.utilisation.measured == 3
    ex.shutdown()


def test_cancel_aborts_the_measurement_and_frees_the_worker(tmp_path: Path):
    spec, pidfile = _sleeper(tmp_path)
    ex = RayExecutor(spec, str(tmp_path), seed=0, workers=1, cpus_per_worker=0.25)
    ex.submit(Trial(7, 1, {"slow": 1}))
    measuring = _wait_for(pidfile)
    actor_pid = _pid_of(ex, 0)
    t0 = time.time()
    ex.cancel(7)
    assert time.time() - t0 < ex.ABORT_GRACE + 15.0, "cancel waits for the grace, not for the measurement"
    assert ex.free_slots() == 1 and ex.running() == []
    assert _pid_of(ex, 0) == actor_pid, "an instrument that stops on abort() keeps its warm actor"
    assert not _alive(measuring)
    assert ex.completed(timeout=0.5) == [], "a cancelled trial must not come back as a result"
    ex.shutdown()


def test_shutdown_ends_the_actors_but_not_a_ray_it_did_not_start(fns: str):
    ex = RayExecutor({"kind": "function", "target": "fns:branin"}, fns, seed=0, workers=2, cpus_per_worker=0.25)
    pids = [_pid_of(ex, i) for i in range(2)]
    ex.shutdown()
    deadline = time.time() + 10
    while time.time() < deadline and any(map(_alive, pids)):
        time.sleep(0.05)
    assert not any(map(_alive, pids))
    assert ray.is_initialized()


def test_a_data_product_comes_back_through_the_object_store(fns: str):
    ex = RayExecutor({"kind": "function", "target": "fns:with_data"}, fns, seed=0, workers=1, cpus_per_worker=0.25)
    ex.submit(Trial(1, 1, {"x0": 0.25, "x1": 0.0}))
    (r,) = _results(ex, 1, within=20.0)
    assert r.ok and r.measurement.data.tolist() == [0.25] * 8
    ex.shutdown()


@pytest.mark.parametrize("cpus, gpus, says", [
    (1.0, 0.0, "cpus_per_worker: 0.5"),
    (0.25, 0.25, "the cluster has no GPU"),
])
def test_resources_the_cluster_cannot_hold_fail_in_seconds(fns: str, cpus: float, gpus: float, says: str):
    t0 = time.time()
    with pytest.raises(ExecutorError) as err:
        RayExecutor({"kind": "function", "target": "fns:branin"}, fns, seed=0, workers=4, cpus_per_worker=cpus,
                    gpus_per_worker=gpus)
    assert time.time() - t0 < 30.0, "refused up front, not after actors pend for the start_timeout (60 s)"
    message = str(err.value)
    assert "\n" not in message and says in message and "do not fit" in message


def test_workers_that_cannot_be_placed_now_time_out_with_one_line(fns: str):
    spec = {"kind": "function", "target": "fns:branin"}
    holder = RayExecutor(spec, fns, seed=0, workers=1, cpus_per_worker=1.5)
    try:
        t0 = time.time()
        with pytest.raises(ExecutorError, match="did not start within start_timeout=2 s"):
            RayExecutor(spec, fns, seed=0, workers=1, cpus_per_worker=1.0, start_timeout=2.0)
        assert time.time() - t0 < 2.0 + 20.0
    finally:
        holder.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_ray_address_that_does_not_answer_is_one_line_and_exit_2(write_campaign, scheme: str):
    address = f"{scheme}127.0.0.1:{_free_port()}"
    path = write_campaign(trials=2, executor={"kind": "ray", "address": address})
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "run", str(path), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [lines[0]] and f"executor.address: {address}: cannot reach Ray" in lines[0]
    assert "Traceback" not in proc.stderr
    assert time.time() - t0 < 60


ENV_PROBE = '''
import os

def probe(p):
    return {"y": float(os.environ["AEC_PROBE"])}
'''


def test_runtime_env_reaches_the_workers_and_a_broken_instrument_is_one_line(workdir: Path):
    (workdir / "probe.py").write_text(ENV_PROBE)
    ex = RayExecutor({"kind": "function", "target": "probe:probe"}, str(workdir), seed=0, workers=1,
                     cpus_per_worker=0.25, runtime_env={"env_vars": {"AEC_PROBE": "42"}})
    ex.submit(Trial(1, 1, {}))
    (r,) = _results(ex, 1, within=30.0)
    assert r.ok and r.measurement.metrics == {"y": 42.0}
    ex.shutdown()
    with pytest.raises(ExecutorError, match="has no function 'missing'") as err:
        RayExecutor({"kind": "function", "target": "probe:missing"}, str(workdir), seed=0, cpus_per_worker=0.25)
    assert "\n" not in str(err.value)


RAY_OWNED = """
import sys
import ray
from controller.executors import ExecutorError, RayExecutor
try:
    RayExecutor({"kind": "function", "target": "fns:branin"}, sys.argv[1], seed=0, cpus_per_worker=0.25,
                runtime_env={"pip": 5})
except ExecutorError as exc:
    print("error:", exc)
print("ray still running:", ray.is_initialized())
"""


def test_a_runtime_env_ray_refuses_is_one_line_and_the_ray_it_started_is_shut_down(workdir: Path):
    """Through the Python API (a campaign file is refused earlier, by validate): the executor starts its own Ray."""
    proc = subprocess.run([sys.executable, "-c", RAY_OWNED, str(workdir)], capture_output=True, text=True, timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.splitlines() == [
        "error: executor.runtime_env: Ray refused it: runtime_env['pip'] must be of type str or List[str], "
        "got <class 'int'>",
        "ray still running: False"], proc.stdout + proc.stderr


@pytest.mark.parametrize("kwargs, says", [
    ({"gpus_per_worker": 0.00001}, "executor.gpus_per_worker: expected 0 or at least 0.0001"),
    ({"cpus_per_worker": 0.00001}, "executor.cpus_per_worker: expected at least 0.0001"),
])
def test_a_resource_fraction_ray_cannot_account_is_one_line(fns: str, kwargs: dict, says: str):
    with pytest.raises(ExecutorError, match=says) as err:
        RayExecutor({"kind": "function", "target": "fns:branin"}, fns, seed=0, **{"cpus_per_worker": 0.25, **kwargs})
    assert "\n" not in str(err.value)


CLOSES = """
import os, threading

class Link:
    def __init__(self):
        self.reader = threading.Thread(target=threading.Event().wait, daemon=True)
        self.reader.start()

    def measure(self, params):
        return {"y": 1.0}

    def close(self):
        with open(os.path.join(os.path.dirname(__file__), "closed-%d" % os.getpid()), "w"):
            pass
"""


def test_shutdown_closes_each_actors_instrument_before_killing_it(workdir: Path, monkeypatch):
    """The actor's close() reaches its instrument (an EPICS context's threads, an ophyd device's sockets)."""
    from controller.executors import ray as ray_executor
    from controller.executors.ray_actor import InstrumentActor

    (workdir / "links.py").write_text(CLOSES)

    class LinkActor(InstrumentActor):  # defined here, so Ray ships it by value; the instrument is links.Link
        def __init__(self, spec, base_dir, seed, parameter_names):
            import importlib.util
            import os as _os

            where = importlib.util.spec_from_file_location("links", _os.path.join(base_dir, "links.py"))
            module = importlib.util.module_from_spec(where)
            where.loader.exec_module(module)
            self.instrument, self.error = module.Link(), None

    monkeypatch.setattr(ray_executor, "InstrumentActor", LinkActor)
    ex = RayExecutor({"kind": "function", "target": "unused:unused"}, str(workdir), seed=0, workers=2,
                     cpus_per_worker=0.25)
    pids = sorted(_pid_of(ex, i) for i in range(2))
    ex.submit(Trial(1, 1, {}))
    (r,) = _results(ex, 1, within=30.0)
    assert r.ok
    ex.shutdown()
    assert sorted(int(f.name.split("-")[1]) for f in workdir.glob("closed-*")) == pids
    ex.shutdown()  # a second shutdown does nothing


def test_the_actor_closes_its_instrument_once_and_then_says_so(workdir: Path):
    from controller.executors.ray_actor import InstrumentActor

    actor = InstrumentActor({"kind": "function", "target": "fns:branin"}, str(workdir), 0, None)
    assert actor.close() is False, "a function instrument has no close()"
    m, err, retry, _, _ = actor.measure({"x0": 0.1, "x1": 0.2})
    assert m is None and err == "the worker's instrument was closed" and retry is False
