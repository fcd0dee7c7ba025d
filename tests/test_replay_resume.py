"""A replay killed with SIGKILL and started again finishes without redoing any finished run."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from controller.replay.plan import Plan
from controller.replay.runner import run_state


def _events(store: Path) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def test_replay_killed_with_sigkill_resumes_without_redoing_finished_runs(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.random((80, 2))
    lines = ["a,b,y"] + [f"{a},{b},{np.sin(5 * a) + b * b}" for a, b in X]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "r"
    argv = [sys.executable, "-m", "controller.cli", "replay", "--data", str(tmp_path / "d.csv"), "--inputs", "a,b",
            "--objective", "y", "--policies", "sobol,botorch", "--seeds", "3", "--budget", "12", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        deadline = time.time() + 90
        finished: list[Path] = []
        while time.time() < deadline and proc.poll() is None:
            if (out / "replay.json").is_file():
                stores = [Path(r.store) for r in Plan.read(out).runs]
                finished = [s for s in stores if run_state(s)[0]]
                if len(finished) >= 3:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the replay ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stores = [Path(r.store) for r in Plan.read(out).runs]
    finished = [s for s in stores if run_state(s)[0]]
    assert 3 <= len(finished) < len(stores)
    before = {s: _events(s) for s in finished}

    again = subprocess.run(argv + ["--json"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert all(run_state(s) == (True, 12) for s in stores)
    assert {s: _events(s) for s in finished} == before  # not one event added to a finished run
    results = json.loads(again.stdout)
    assert results["this_call"] == {"finished": len(stores) - len(finished), "skipped": len(finished), "failed": 0}
    for pol in ("sobol", "botorch"):
        assert results["policies"][pol]["finished"] == 3
        assert len(results["policies"][pol]["top_fraction_mean"]) == 12
    for s in stores:  # an interrupted run continued its journal: each trial proposed and completed once
        with sqlite3.connect(f"file:{s}?mode=ro", uri=True) as db:
            kinds = dict(db.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
        assert kinds["completed"] == 12 and kinds["proposed"] == 12
