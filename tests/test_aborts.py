"""Aborts with real processes: a command's whole process tree dies on abort, on its own exit, and with aec."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from controller.executors import LocalExecutor, Trial, TrialResult
from instruments.base import InstrumentError, Measurement
from instruments.function import CommandInstrument, FunctionInstrument

REPO = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Appends its pid, a child's and a grandchild's to "$1", then waits. The grandchild (and its parent
# shell) ignore SIGTERM, so only the group's SIGKILL ends them.
TREE = textwrap.dedent("""\
    echo $$ >> "$1"
    sh -c 'trap "" TERM; sleep 300 & echo $! >> "$1"; wait' tree "$1" &
    echo $! >> "$1"
    sleep 300 &
    echo $! >> "$1"
    wait
""")


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (an orphan's zombie may wait a while for init to reap it)."""
    return _state(pid) not in (None, "Z", "X")


def _members(pgid: int) -> list[int]:
    """Live processes in process group `pgid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def _until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _pids(path: Path, n: int, timeout: float = 20.0) -> list[int]:
    def ready() -> bool:
        return path.exists() and len(path.read_text().split()) >= n and path.read_text().endswith("\n")

    assert _until(ready, timeout), f"the program did not record {n} pids in {timeout} s"
    return [int(p) for p in path.read_text().split()]


def _tree(tmp_path: Path) -> tuple[list[str], Path]:
    (tmp_path / "tree.sh").write_text(TREE)
    pidfile = tmp_path / "pids"
    return ["/bin/sh", str(tmp_path / "tree.sh"), str(pidfile)], pidfile


def _all_dead(pids: list[int], pgid: int) -> bool:
    return not any(_alive(p) for p in pids) and not _members(pgid)


@linux_only
def test_abort_all_kills_the_program_its_children_and_grandchildren(tmp_path: Path):
    argv, pidfile = _tree(tmp_path)
    ex = LocalExecutor(lambda: CommandInstrument(argv, kill_grace=0.5), workers=1)
    ex.submit(Trial(1, 1, {}))
    pids = _pids(pidfile, 4)
    pgid = os.getpgid(pids[0])
    assert pgid != os.getpgid(0)
    t0 = time.monotonic()
    assert ex.abort_all(grace=8.0) == []
    assert time.monotonic() - t0 < 6.0, "the worker did not come back after the abort"
    assert [t.id for t in ex.running()] == [1]
    assert _until(lambda: _all_dead(pids, pgid), 3.0), [p for p in pids if _alive(p)]
    ex.shutdown()


CONTROLLER = textwrap.dedent("""\
    import sys, time, types
    sys.path.insert(0, {repo!r})
    pkg = types.ModuleType("controller")  # skip controller/__init__ (torch): only the executor is needed
    pkg.__path__ = [{repo!r} + "/controller"]
    sys.modules["controller"] = pkg
    from controller.executors import LocalExecutor, Trial
    from instruments.function import CommandInstrument

    ex = LocalExecutor(lambda: CommandInstrument({argv!r}), workers=1)
    ex.submit(Trial(1, 1, {{}}))
    time.sleep(300)
""")


@linux_only
def test_sigkill_of_aec_kills_the_program_its_children_and_grandchildren(tmp_path: Path):
    argv, pidfile = _tree(tmp_path)
    script = tmp_path / "controller_main.py"
    script.write_text(CONTROLLER.format(repo=str(REPO), argv=argv))
    aec = subprocess.Popen([sys.executable, str(script)])
    try:
        pids = _pids(pidfile, 4, timeout=30.0)
        pgid = os.getpgid(pids[0])
        assert pgid not in (os.getpgid(0), os.getpgid(aec.pid))
    finally:
        aec.send_signal(signal.SIGKILL)
        aec.wait()
    assert _until(lambda: _all_dead(pids, pgid), 3.0), [p for p in pids if _alive(p)]


@linux_only
def test_a_command_is_done_when_it_exits_even_if_a_background_child_holds_stdout(tmp_path: Path):
    pidfile = tmp_path / "bg"
    inst = CommandInstrument(["/bin/sh", "-c", 'sleep 120 & echo $! > "$0"; echo \'{"y": 1.5}\'', str(pidfile)])
    t0 = time.monotonic()
    m = inst.measure({"x": 1})
    assert time.monotonic() - t0 < 10.0
    assert m.metrics == {"y": 1.5}
    (pid,) = _pids(pidfile, 1)
    assert _until(lambda: not _alive(pid), 3.0)


def test_systemexit_and_keyboardinterrupt_fail_the_trial_and_the_worker_goes_on(tmp_path: Path):
    (tmp_path / "aec_quitters.py").write_text(textwrap.dedent("""\
        def measure(p):
            if p["how"] == "exit":
                raise SystemExit(3)
            if p["how"] == "interrupt":
                raise KeyboardInterrupt
            return {"y": 1.0}
    """))
    ex = LocalExecutor(lambda: FunctionInstrument("aec_quitters:measure", base_dir=tmp_path), workers=1)

    def run(trial: Trial) -> TrialResult:
        ex.submit(trial)
        results: list[TrialResult] = []
        deadline = time.monotonic() + 10.0
        while not results and time.monotonic() < deadline:
            results = ex.completed(timeout=1.0)
        assert [r.trial.id for r in results] == [trial.id]
        return results[0]

    for i, (how, name) in enumerate([("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt")]):
        r = run(Trial(i, 1, {"how": how}))
        assert not r.ok and not r.retryable and name in r.error
    assert run(Trial(2, 1, {"how": "fine"})).measurement.metrics == {"y": 1.0}
    assert ex.slots[0].thread.is_alive()
    ex.shutdown()


class Gate:
    """Answers at once; with 'wait', blocks until abort() (then fails); with 'sleep', ignores abort()."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def describe(self) -> dict:
        return {}

    def measure(self, params: dict) -> Measurement:
        if params.get("wait"):
            self.released.wait(30.0)
            raise InstrumentError("aborted")
        time.sleep(params.get("sleep", 0.0))
        return Measurement({"y": float(params["y"])})

    def abort(self) -> None:
        self.released.set()


def test_abort_all_returns_results_that_had_already_arrived():
    ex = LocalExecutor(Gate, workers=3)
    ex.submit(Trial(1, 1, {"y": 1.0}))
    ex.submit(Trial(2, 1, {"wait": True}))
    ex.submit(Trial(3, 1, {"y": 3.0, "sleep": 0.3}))
    assert _until(lambda: ex._results.qsize() >= 1, 10.0)
    results = ex.abort_all(grace=8.0)
    assert sorted(r.trial.id for r in results) == [1, 3] and all(r.ok for r in results)
    assert [t.id for t in ex.running()] == [2]
    assert ex.free_slots() == 2
    ex.submit(Trial(4, 1, {"y": 4.0}))
    got: list[TrialResult] = []
    assert _until(lambda: bool(got.extend(ex.completed(timeout=0.5)) or got), 10.0)
    assert [r.trial.id for r in got] == [4] and got[0].ok
    ex.shutdown()


@linux_only
@pytest.mark.ray
@pytest.mark.slow
def test_ray_abort_all_returns_finished_results_and_kills_the_rest(tmp_path: Path):
    ray = pytest.importorskip("ray")
    from controller.executors import RayExecutor

    argv, pidfile = _tree(tmp_path)
    (tmp_path / "quick_or_tree.sh").write_text('case "$(cat)" in *quick*) echo \'{"y": 1}\'; exit 0;; esac\n'
                                              + f'exec {" ".join(argv)}\n')
    spec = {"kind": "command", "argv": ["/bin/sh", str(tmp_path / "quick_or_tree.sh")]}
    try:
        ex = RayExecutor(spec, str(tmp_path), seed=0, workers=2)
        ex.submit(Trial(1, 1, {"quick": 1}))
        ex.submit(Trial(2, 1, {"slow": 1}))
        pids = _pids(pidfile, 4, timeout=60.0)
        pgid = os.getpgid(pids[0])
        ray.wait([ex.busy[0][1]], timeout=30.0)
        t0 = time.monotonic()
        results = ex.abort_all(grace=8.0)
        assert time.monotonic() - t0 < 6.0, "the instrument's abort() did not reach the busy actor"
        assert [r.trial.id for r in results] == [1] and results[0].ok
        assert [t.id for t in ex.running()] == [2]
        assert _until(lambda: _all_dead(pids, pgid), 5.0), [p for p in pids if _alive(p)]
        ex.shutdown()
    finally:
        ray.shutdown()


@linux_only
@pytest.mark.parametrize("how", ["second-sigint", "sigkill"])
def test_aec_itself_leaves_no_process_of_a_command_behind(write_campaign, workdir, how):
    """`aec run` with a command instrument: two SIGINTs, or a SIGKILL, and the whole tree is gone."""
    pids = workdir / "pids.txt"
    (workdir / "tree.sh").write_text(TREE)
    path = write_campaign("tree", trials=3, instrument={"kind": "command", "argv": ["sh", str(workdir / "tree.sh"), str(pids)]})
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", str(path), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and (not pids.exists() or len(pids.read_text().split()) < 4):
        time.sleep(0.05)
    tree = [int(p) for p in pids.read_text().split()]
    assert len(tree) == 4 and all(_alive(p) for p in tree)
    if how == "sigkill":
        proc.kill()
    else:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.05)
    assert not [p for p in tree if _alive(p)]
    if how == "second-sigint":
        assert proc.returncode == 130
        from controller import Store

        with Store(workdir / "tree.db") as s:
            (rec,) = s.trials()
        assert rec.status == "abandoned" and "aborted" in rec.error
