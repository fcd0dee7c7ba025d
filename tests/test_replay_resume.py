"""A replay killed with SIGKILL and started again finishes without redoing any finished run.

Deterministic on any machine: the instrument counts its calls and, while a `hold` file exists, blocks on the
call after the first three runs' measurements, so the kill always lands inside the fourth run."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

from controller.replay.plan import Plan
from controller.replay.runner import run_state

BUDGET, SEEDS, DONE_RUNS, INTO_RUN = 12, 3, 3, 5

GATE = textwrap.dedent('''
    import pathlib, time

    HERE = pathlib.Path(__file__).parent

    def measure(p):
        calls = HERE / "calls"
        with open(calls, "a") as fh:
            fh.write("x\\n")
        n = len(calls.read_text().splitlines())
        hold = HERE / "hold"
        if hold.exists() and n > int(hold.read_text()):
            (HERE / "blocked").write_text(str(n))
            while hold.exists():  # until the test kills the replay
                time.sleep(0.05)
        return {"y": (p["x0"] - 0.3) ** 2 + (p["x1"] - 0.6) ** 2}
''')


def _events(store: Path) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def test_replay_killed_with_sigkill_resumes_without_redoing_finished_runs(tmp_path):
    (tmp_path / "gate.py").write_text(GATE)
    camp = {"name": "camp", "space": {"parameters": [{"name": "x0", "type": "real", "low": 0.0, "high": 1.0},
                                                     {"name": "x1", "type": "real", "low": 0.0, "high": 1.0}]},
            "objectives": [{"metric": "y"}], "instrument": {"kind": "function", "target": "gate:measure"},
            "policy": {"kind": "sobol"}, "budget": {"trials": 5}}
    (tmp_path / "camp.yaml").write_text(yaml.safe_dump(camp))
    (tmp_path / "replay.yaml").write_text(yaml.safe_dump({"campaigns": [{"file": "camp.yaml"}],
                                                          "policies": ["sobol", "random"], "seeds": SEEDS,
                                                          "budget": BUDGET, "workers": 1}))
    (tmp_path / "hold").write_text(str(DONE_RUNS * BUDGET + INTO_RUN))  # block on the 4th run's 6th measurement
    out = tmp_path / "r"
    argv = [sys.executable, "-m", "controller.cli", "replay", str(tmp_path / "replay.yaml"), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        deadline = time.time() + 300  # generous: only a broken replay takes long, a slow machine just waits
        while time.time() < deadline and proc.poll() is None and not (tmp_path / "blocked").exists():
            time.sleep(0.05)
        assert proc.poll() is None, f"the replay ended before it could be killed: {proc.stderr.read().decode()}"
        assert (tmp_path / "blocked").exists(), "the replay never reached the fourth run"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (tmp_path / "hold").unlink()
    stores = [Path(r.store) for r in Plan.read(out).runs]
    states = [run_state(s) for s in stores]
    assert states[:DONE_RUNS] == [(True, BUDGET)] * DONE_RUNS  # sobol s0..s2, in plan order
    assert states[DONE_RUNS] == (False, INTO_RUN)  # killed inside the fourth run
    assert all(s == (False, 0) for s in states[DONE_RUNS + 1:])
    finished = stores[:DONE_RUNS]
    before = {s: _events(s) for s in finished}

    again = subprocess.run(argv + ["--json"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert all(run_state(s) == (True, BUDGET) for s in stores)
    assert {s: _events(s) for s in finished} == before  # not one event added to a finished run
    results = json.loads(again.stdout)
    assert results["this_call"] == {"finished": len(stores) - DONE_RUNS, "skipped": DONE_RUNS, "failed": 0}
    for pol in ("sobol", "random"):
        assert results["policies"][pol]["finished"] == SEEDS
        assert len(results["policies"][pol]["best_so_far_median"]) == BUDGET
    for s in stores:  # an interrupted run continued its journal: each trial proposed and completed once
        with sqlite3.connect(f"file:{s}?mode=ro", uri=True) as db:
            kinds = dict(db.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
        assert kinds["completed"] == BUDGET and kinds["proposed"] == BUDGET
