"""`aec replay --ray`: runs as Ray tasks give the process path's results, resume a partial store shipped to the
worker, survive a worker that dies, need nothing of the driver's filesystem on the worker, and a Ray address that
does not answer is one line and exit 2."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller.cli import main
from controller.replay.plan import Plan
from controller.replay.runner import FINISHED_META, run_state
from controller.store import Store
from tests.ray_helpers import ray_fixture

local_ray = ray_fixture(num_cpus=2)

BUDGET = 6
RAY_FILE = {"cpus_per_run": 0.5}  # four runs share the two CPUs of the test's Ray


def _pool(path: Path) -> Path:
    rng = np.random.default_rng(9)
    rows = [f"{a},{b},{np.sin(5 * a) + b}" for a, b in rng.random((30, 2))]
    path.write_text("a,b,y\n" + "\n".join(rows) + "\n")
    return path


def _replay(tmp_path: Path, out: Path, policies: str, seeds: int, ray: dict | None, *extra: str) -> int:
    """`aec replay FILE --out OUT` with a replay file that asks for Ray (`ray`) or not."""
    spec = {"datasets": [{"file": str(_pool(tmp_path / "d.csv")), "inputs": ["a", "b"], "objectives": ["y"]}],
            "policies": policies.split(","), "seeds": seeds, "budget": BUDGET}
    if ray is not None:
        spec["ray"] = ray
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return main(["replay", str(path), "--out", str(out), "--quiet", *extra])


def _curves(out: Path) -> dict:
    from controller.replay.summary import results_without_timings

    return results_without_timings(out)


def _picks(store: str | Path) -> list[dict]:
    with Store(store) as st:
        return [r.params for r in st.trials() if r.status == "completed"]


def test_ray_tasks_give_the_same_results_as_processes(tmp_path):
    assert _replay(tmp_path, tmp_path / "proc", "random,botorch", 2, None) == 0
    assert _replay(tmp_path, tmp_path / "ray", "random,botorch", 2, RAY_FILE) == 0
    ray_curves, proc_curves = _curves(tmp_path / "ray"), _curves(tmp_path / "proc")
    assert ray_curves["problems"]["d"]["policies"]["botorch"]["top_fraction_mean"]  # the curves are there
    assert ray_curves == proc_curves
    for run in Plan.read(tmp_path / "ray").runs:  # each store names the driver's files, not the worker's copies
        assert run_state(Path(run.store)) == (True, BUDGET)
        with Store(run.store) as st:
            assert st.config()["space"]["pool"]["file"] == run.config["space"]["pool"]["file"]
            assert st.get_meta("replay_run")["config"] == run.config
        assert not list(Path(run.store).parent.glob(".*"))  # no staging folder left beside the stores


def _cut(store: str, keep: int) -> None:
    """The store as a kill after `keep` measurements leaves it: later trials and the finished mark gone."""
    with sqlite3.connect(store) as db:
        db.execute("DELETE FROM events WHERE trial_id >= ?", (keep,))
        db.execute("DELETE FROM meta WHERE key = ?", (FINISHED_META,))
    with Store(store, writer=True) as st:
        st.rebuild_trials_table()


def test_a_partial_store_is_shipped_to_its_task_and_resumed_and_finished_runs_are_skipped(tmp_path, capsys):
    out = tmp_path / "r"
    assert _replay(tmp_path, out, "random", 2, None) == 0  # made by processes, resumed by Ray: one store format
    partial, finished = (r.store for r in Plan.read(out).runs)
    _cut(partial, 3)
    first_three = _picks(partial)
    untouched = Path(finished).read_bytes()
    assert run_state(Path(partial)) == (False, 3)
    capsys.readouterr()
    assert _replay(tmp_path, out, "random", 2, RAY_FILE, "--json") == 0
    assert json.loads(capsys.readouterr().out)["this_call"] == {"finished": 1, "skipped": 1, "failed": 0}
    assert run_state(Path(partial)) == (True, BUDGET)
    picks = _picks(partial)
    assert picks[:3] == first_three  # resumed, not redone
    assert len({tuple(sorted(p.items())) for p in picks}) == BUDGET  # no pool row measured twice
    assert Path(finished).read_bytes() == untouched


def test_the_task_needs_nothing_of_the_drivers_filesystem(tmp_path, local_ray):
    """The run's files and store travel as bytes: the task runs with the driver's folder gone."""
    from controller.replay.ray_runs import run_task
    from controller.replay.shipping import files_of, install, pack
    from ray.util.queue import Queue

    out = tmp_path / "r"
    assert _replay(tmp_path, out, "random", 1, None) == 0
    run = Plan.read(out).runs[0]
    _cut(run.store, 2)
    files = {name: local_ray.put(path.read_bytes()) for name, path in files_of(run.config, run.base_dir).items()}
    assert len(files) == 2  # the pool and the recorded table
    shipped = pack(Path(run.store))
    gone = tmp_path / "gone"
    out.rename(gone)  # nothing under the driver's OUT exists while the task runs
    updates = Queue(actor_options={"num_cpus": 0})
    try:
        result = local_ray.get(local_ray.remote(run_task).options(num_cpus=0.5).remote(run.__dict__, shipped, files,
                                                                                       updates))
        counts = [n for _, n in updates.get_nowait_batch(updates.qsize())]
    finally:
        updates.shutdown()
    assert result["status"] == "finished" and result["completed"] == BUDGET, result.get("error")
    assert counts and max(counts) == BUDGET
    assert not out.exists()
    install(result["store"], tmp_path / "back" / Path(run.store).name)
    back = tmp_path / "back" / Path(run.store).name
    assert run_state(back) == (True, BUDGET)
    with Store(back) as st:
        assert st.config()["instrument"]["file"] == run.config["instrument"]["file"]


DIES_ONCE = textwrap.dedent('''
    import os, pathlib

    HERE = pathlib.Path(__file__).parent

    def measure(p):
        mark = HERE / "died"
        if p["x0"] > 0.5 and not mark.exists():
            mark.write_text("x")
            os._exit(1)  # the worker process dies mid-run, as when the OOM killer takes it
        return {"y": (p["x0"] - 0.3) ** 2}
''')


def test_a_worker_that_dies_fails_its_run_only_and_the_next_replay_retries_it(tmp_path, capsys):
    (tmp_path / "dies.py").write_text(DIES_ONCE)
    camp = {"name": "camp", "space": {"parameters": [{"name": "x0", "type": "real", "low": 0.0, "high": 1.0}]},
            "objectives": [{"metric": "y"}], "instrument": {"kind": "function", "target": "dies:measure"},
            "policy": {"kind": "sobol"}, "budget": {"trials": 4}}
    (tmp_path / "camp.yaml").write_text(yaml.safe_dump(camp))
    (tmp_path / "replay.yaml").write_text(yaml.safe_dump({"campaigns": [{"file": "camp.yaml"}], "policies": ["random"],
                                                          "seeds": 2, "budget": 4, "ray": RAY_FILE}))
    out = tmp_path / "r"
    argv = ["replay", str(tmp_path / "replay.yaml"), "--out", str(out), "--quiet"]
    capsys.readouterr()
    assert main(argv) == 3
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: run ")]
    assert len(err) == 1 and "Ray task:" in err[0] and "Traceback" not in err[0], err
    assert [run_state(Path(r.store))[0] for r in Plan.read(out).runs].count(True) == 1
    assert main(argv) == 0
    assert all(run_state(Path(r.store)) == (True, 4) for r in Plan.read(out).runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_ray_address_that_does_not_answer_is_one_line_and_exit_2(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "replay", "--data", str(_pool(tmp_path / "d.csv")),
                           "--inputs", "a,b", "--objective", "y", "--policies", "random", "--seeds", "1", "--budget",
                           "3", "--ray-address", address, "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --ray-address: {address}: cannot reach Ray"), lines
    assert time.time() - t0 < 60


@pytest.mark.parametrize("ray, expected", [
    ({"address": "nope"}, "ray.address: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT', got 'nope'"),
    ({"cpus_per_run": 0.00001}, "ray.cpus_per_run: expected at least 0.0001"),
    ({"cpus_per_run": 64}, "ray: each run asks for 64 CPU (cpus_per_run) but no node of this Ray cluster has"),
    ({"workers": 2}, "ray.workers: unknown key"),
])
def test_ray_settings_that_cannot_work_are_one_line_errors(tmp_path, capsys, ray, expected):
    capsys.readouterr()
    assert _replay(tmp_path, tmp_path / "r", "random", 1, ray) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'r.yaml'}: ") and expected in err[0], err


def test_the_ray_example_runs_with_one_progress_count_over_all_runs(tmp_path):
    from controller.replay import replay
    from controller.replay.spec import load_spec

    class Recorder:
        def start(self, total: int, done: int) -> None:
            self.total, self.counts, self.lines = total, {}, []

        def advance(self, key: str, done: int) -> None:
            self.counts[key] = max(done, self.counts.get(key, 0))

        def message(self, text: str) -> None:
            self.lines.append(text)

        def finish(self) -> None: ...

    spec, base = load_spec(Path(__file__).parent.parent / "examples" / "replay_ray.yaml")
    assert spec.ray is not None and spec.ray.cpus_per_run == 0.5
    spec = spec.model_copy(update={"seeds": 1, "budget": 4})
    progress = Recorder()
    outcome, res = replay(spec, tmp_path / "r", base_dir=base, progress=progress)
    assert outcome.count("finished") == 3 and set(res["policies"]) == {"random", "sobol", "botorch"}
    assert all(r["finished"] == 1 and r["fallbacks"] == 0 for r in res["policies"].values())
    assert progress.total == 12 and progress.counts == {f"perovskite.{p}.s0": 4 for p in ("random", "sobol", "botorch")}
    assert any(line.startswith("Ray: up to 4 run(s) at a time") for line in progress.lines)


def test_a_store_another_writer_holds_fails_its_run_and_is_left_alone(tmp_path, capsys):
    out = tmp_path / "r"
    assert _replay(tmp_path, out, "random", 2, None) == 0
    held, other = (r.store for r in Plan.read(out).runs)
    _cut(held, 2)
    _cut(other, 2)
    before = _picks(held)
    capsys.readouterr()
    with Store(held, writer=True):  # an `aec resume` of that run, say
        assert _replay(tmp_path, out, "random", 2, RAY_FILE) == 3
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: run ")]
    assert len(err) == 1 and f"{held} is in use by pid {os.getpid()}" in err[0], err
    assert _picks(held) == before and run_state(Path(held)) == (False, 2)
    assert run_state(Path(other)) == (True, BUDGET)


def test_installing_a_returned_store_over_one_whose_wal_holds_rows_loses_none_if_it_stops_before_the_rename(tmp_path, monkeypatch):
    """A store left by a killed writer keeps committed rows in its WAL; install removes that WAL before renaming
    the new store in, so it folds the WAL into the old file first: a crash in between leaves the old store whole."""
    import shutil

    from controller.replay import shipping

    live = tmp_path / "live.db"
    db = sqlite3.connect(live)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    target = tmp_path / "runs" / "s.db"
    target.parent.mkdir()
    shutil.copy(live, target)  # the files as a SIGKILL leaves them: the row only in the WAL
    shutil.copy(f"{live}-wal", f"{target}-wal")
    db.close()
    blob = shipping.pack(target)

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(shipping.os, "replace", crash)
    with pytest.raises(OSError):
        shipping.install(blob, target)
    assert not os.path.exists(f"{target}-wal")
    assert sqlite3.connect(target).execute("SELECT x FROM t").fetchall() == [(1,)]
