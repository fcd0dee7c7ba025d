"""Guarantees a service can live on: one writer per store, finite readings, no poison loops, honest resume bookkeeping."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller import Store
from controller.campaign import Campaign
from controller.preflight import load_config
from controller.progress import SilentReporter

EXTRA = '''
import math, os, signal

def nan_sometimes(p):
    return {"y": float("nan") if p["x0"] > 0.5 else p["x0"], "aux": float("inf")}

def ranged(p):
    return {"y": 1e6 if p["x0"] > 0.5 else p["x0"]}

def negative_sem(p):
    return {"y": p["x0"], "sem": {"y": -1.0}}

def boolean(p):
    return {"y": True}

def object_data(p):
    import numpy as np
    return {"y": p["x0"], "data": np.array([{"a": 1}, None], dtype=object) if p["x0"] > 0.5 else np.ones(2)}

def uneven(p):
    import time
    time.sleep(0.4 * p["x0"])
    return {"y": p["x0"]}

def poison(p):
    if p["x0"] > 0.5:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"y": p["x0"]}
'''


def _aec(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "controller.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def _completed_events(store: Path) -> list[int]:
    with Store(store) as s:
        return [tid for _, tid, kind, _, _, _ in s.events() if kind == "completed"]


@pytest.fixture
def extra(workdir: Path) -> Path:
    (workdir / "more.py").write_text(EXTRA)
    return workdir


# -- one writer ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_writers_on_one_store_one_exits_2_and_nothing_is_completed_twice(write_campaign, workdir):
    env = {"AEC_TEST_SLEEP": "0.1"}
    pairs = [("run", "run"), ("run", "resume"), ("resume", "resume")]
    for round_ in range(20):
        first, second = pairs[round_ % 3]
        path = write_campaign(f"w{round_}", target="fns:slow", trials=6)
        store = workdir / f"w{round_}.db"
        if "resume" in (first, second):  # a campaign crashed after 2 trials, waiting to be resumed
            assert _run("run", str(path), "--trials", "2", "--quiet", env=env).returncode == 0
        argv = {"run": ("run", str(path), "--quiet"), "resume": ("resume", str(store), "--trials", "6", "--quiet")}
        procs = [_aec(*argv[first], env=env), _aec(*argv[second], env=env)]
        outs = [p.communicate(timeout=240) for p in procs]
        codes = [p.returncode for p in procs]
        for code, (_, err) in zip(codes, outs):
            assert code in (0, 2), err
            if code == 2:
                assert "is in use by pid" in err or "already holds a campaign" in err, err
                assert "Traceback" not in err
        done = _completed_events(store)
        assert len(done) == len(set(done)), (first, second, codes, done)
        if first == second:  # two runs on a new store, or two resumes: one of them does the work
            assert 0 in codes and len(done) == 6, (first, second, codes, outs)
        else:  # `run` refuses a store with trials, or (once the resume has finished it) reports it already done
            assert len(done) in (2, 6), (codes, outs)
            assert codes[0] == 2 or len(done) == 6, (codes, outs)  # 0: quietly "already done" (--quiet)


def test_the_lock_names_its_holder_and_dies_with_it(write_campaign, workdir):
    path = write_campaign("held", target="fns:slow", trials=200)
    store = workdir / "held.db"
    holder = _aec("run", str(path), "--quiet", env={"AEC_TEST_SLEEP": "0.2"})
    deadline = time.time() + 120
    while time.time() < deadline and not (store.exists() and _completed_events(store)):
        time.sleep(0.1)
    busy = _run("resume", str(store))
    assert busy.returncode == 2
    assert f"is in use by pid {holder.pid} on " in busy.stderr and " since " in busy.stderr
    # readers keep working beside the writer
    assert _run("show", str(store), "--json").returncode == 0
    assert json.loads(_run("export", str(store)).stdout)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    took = _run("resume", str(store), "--trials", "3", "--quiet", env={"AEC_TEST_SLEEP": "0"})
    assert took.returncode == 0, took.stderr


def test_readers_work_on_a_read_only_copy(write_campaign, workdir, tmp_path):
    path = write_campaign("ro", trials=3)
    assert _run("run", str(path), "--quiet").returncode == 0
    copy = tmp_path / "media"
    copy.mkdir()
    (copy / "ro.db").write_bytes((workdir / "ro.db").read_bytes())
    os.chmod(copy / "ro.db", 0o444)
    os.chmod(copy, 0o555)
    try:
        if os.access(copy, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): the folder is not read-only")
        assert len(json.loads(_run("export", str(copy / "ro.db")).stdout)) == 3
        assert _run("show", str(copy / "ro.db")).returncode == 0
    finally:
        os.chmod(copy, 0o755)


def test_a_read_only_store_opens_for_reading_without_a_wal(write_campaign, workdir):
    path = write_campaign("imm", trials=2)
    assert _run("run", str(path), "--quiet").returncode == 0
    for suffix in ("-wal", "-shm"):
        Path(str(workdir / "imm.db") + suffix).unlink(missing_ok=True)
    os.chmod(workdir / "imm.db", 0o444)
    with Store(workdir / "imm.db") as s:
        assert len(s.trials()) == 2
    report = _run("report", str(workdir / "imm.db"), "--out", str(workdir / "elsewhere"), "--json")
    assert report.returncode == 0, report.stderr
    assert (workdir / "elsewhere" / "index.html").exists() and (workdir / "elsewhere" / "convergence.png").exists()


def test_a_trial_is_completed_once_whatever_the_writer_does(tmp_path):
    import sqlite3

    store = Store(tmp_path / "s.db", create=True)
    rec = store.new_trial({"params": {"x": 1}, "x": [0.5]})
    store.append(rec.id, "started", 1, {})
    store.append(rec.id, "completed", 1, {"metrics": {"y": 1.0}})
    with pytest.raises(sqlite3.IntegrityError):
        store.append(rec.id, "completed", 1, {"metrics": {"y": 2.0}})
    assert store.trials()[0].metrics == {"y": 1.0}
    assert store.new_trial({"params": {}, "x": []}).id == rec.id + 1


# -- finite readings ----------------------------------------------------------------------------


def _campaign(write_campaign, name: str, target: str, **kw) -> Campaign:
    return Campaign(load_config(write_campaign(name, target=target, **kw)), reporter=SilentReporter())


def test_non_finite_objectives_fail_their_trial_and_json_stays_strict(write_campaign, extra):
    c = _campaign(write_campaign, "nan", "more:nan_sometimes", trials=8, policy={"kind": "sobol"})
    summary = c.run()
    recs = c.store.trials()
    c.close()
    bad = [r for r in recs if r.params["x0"] > 0.5]
    assert bad and all(r.status == "failed" and r.attempts == 1 and "'y' is nan" in r.error for r in bad)
    good = [r for r in recs if r.status == "completed"]
    assert all(np.isfinite(r.metrics["y"]) and "aux" not in r.metrics for r in good)  # inf: dropped, named
    assert summary.best["metrics"]["y"] == min(r.metrics["y"] for r in good)
    text = _run("export", str(extra / "nan.db"), "--format", "json").stdout
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    with Store(extra / "nan.db") as s:
        assert any(p.get("dropped_metrics") == ["aux"] for _, _, k, _, _, p in s.events() if k == "completed")


@pytest.mark.parametrize("target,reason", [
    ("more:ranged", "outside its range [0, 10]"),
    ("more:negative_sem", "sem of 'y' is -1.0"),
    ("more:boolean", "expected a number"),
])
def test_out_of_range_negative_sem_and_booleans_are_failed_measurements(write_campaign, extra, target, reason):
    objectives = [{"metric": "y", "goal": "minimize", "range": [0, 10]}]
    c = _campaign(write_campaign, "bad", target, trials=6, objectives=objectives)
    c.run()
    recs = c.store.trials()
    c.close()
    failed = [r for r in recs if r.status == "failed"]
    assert failed and all(reason in r.error and r.attempts == 1 for r in failed)
    if target == "more:ranged":
        assert all(r.status == "completed" for r in recs if r.params["x0"] <= 0.5)


def test_a_metric_range_must_be_low_high(write_campaign):
    path = write_campaign("r", objectives=[{"metric": "y", "range": [3, 1]}])
    out = _run("validate", str(path))
    assert out.returncode == 2 and "objectives[0].range" in out.stderr and "low < high" in out.stderr


# -- poison trials ------------------------------------------------------------------------------


def test_a_result_that_cannot_be_recorded_fails_its_trial_not_the_campaign(write_campaign, extra):
    c = _campaign(write_campaign, "obj", "more:object_data", trials=8)
    summary = c.run()
    recs = c.store.trials()
    c.close()
    ragged = [r for r in recs if r.params["x0"] > 0.5]
    assert ragged and all(r.status == "failed" and "recording the result failed" in r.error for r in ragged)
    assert summary.completed == 8


@pytest.mark.slow
def test_a_trial_that_kills_the_controller_is_failed_once_its_attempts_are_spent(write_campaign, extra):
    path = write_campaign("poison", target="more:poison", trials=4, executor={"workers": 1, "attempts": 2})
    store = extra / "poison.db"
    codes = []
    for _ in range(12):
        proc = _run("run" if not store.exists() else "resume", str(path) if not store.exists() else str(store), "--quiet")
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
    assert codes[-1] == 0 and -signal.SIGKILL in codes, codes
    with Store(store) as s:
        recs = s.trials()
    poison = [r for r in recs if r.params["x0"] > 0.5]
    assert poison and all(r.status == "failed" and "crashed the controller 2 time(s)" in r.error for r in poison)
    assert sum(r.status == "completed" for r in recs) == 4


# -- resume bookkeeping -------------------------------------------------------------------------


def test_a_resume_that_fails_before_measuring_spends_no_attempt(write_campaign, workdir):
    path = write_campaign("bk", target="fns:branin", trials=3)
    store = workdir / "bk.db"
    assert _run("run", str(path), "--quiet", "--trials", "2").returncode == 0
    with Store(store, writer=True) as s:  # a trial left in flight by a crash
        rec = s.new_trial({"params": {"x0": 0.2, "x1": 0.2}, "x": [0.2, 0.2]})
        s.append(rec.id, "started", 1, {})
    (workdir / "fns.py").rename(workdir / "fns_away.py")  # the instrument's module is missing now
    for _ in range(3):
        failed = _run("resume", str(store), "--trials", "3", "--quiet")
        assert failed.returncode == 2 and "cannot import module 'fns'" in failed.stderr
    (workdir / "fns_away.py").rename(workdir / "fns.py")
    assert _run("resume", str(store), "--trials", "3", "--quiet").returncode == 0
    with Store(store) as s:
        crashed = next(r for r in s.trials() if r.id == rec.id)
        starts = [a for _, tid, kind, a, _, _ in s.events() if tid == rec.id and kind == "started"]
    assert crashed.status == "completed" and crashed.attempts == 2 and starts == [1, 2]


def test_resume_trials_0_is_refused_before_anything_is_written(write_campaign, workdir):
    path = write_campaign("t0", trials=2)
    store = workdir / "t0.db"
    assert _run("run", str(path), "--quiet").returncode == 0
    bad = _run("resume", str(store), "--trials", "0")
    assert bad.returncode == 2 and "budget.trials" in bad.stderr
    with Store(store) as s:
        assert s.get_meta("config")["budget"]["trials"] == 2
    assert _run("resume", str(store), "--trials", "3", "--quiet").returncode == 0


def test_history_follows_the_journal_not_the_wall_clock(write_campaign, monkeypatch):
    import controller.store as store_module

    clock = iter(range(10_000, 0, -1))  # a clock that runs backwards (NTP steps, a VM restored)
    monkeypatch.setattr(store_module.time, "time", lambda: float(next(clock)))
    c = _campaign(write_campaign, "clock", "fns:branin", trials=5)
    c.run()
    order = [o.trial_id for o in c.history().observations]
    c.close()
    assert order == sorted(order)


def test_wall_time_counts_across_resumes(write_campaign, workdir):
    path = write_campaign("wall", target="fns:slow", trials=None, budget={"wall_time": 1.5})
    first = _run("run", str(path), "--json", env={"AEC_TEST_SLEEP": "0.2"})
    assert first.returncode == 0 and json.loads(first.stdout)["stopped"] == "wall time reached"
    n = len(_completed_events(workdir / "wall.db"))
    again = _run("resume", str(workdir / "wall.db"), "--json", env={"AEC_TEST_SLEEP": "0.2"})
    assert json.loads(again.stdout)["stopped"] == "wall time reached"
    assert len(_completed_events(workdir / "wall.db")) <= n + 1


# -- the instrument never waits for the policy --------------------------------------------------


def test_with_one_worker_the_next_proposal_is_computed_while_the_trial_runs(write_campaign):
    runs = []
    for lookahead in (1, 1, 0):
        c = _campaign(write_campaign, f"ahead{len(runs)}", "fns:branin", trials=8, policy={"kind": "sobol"},
                      executor={"workers": 1, "lookahead": lookahead})
        c.run()
        runs.append(c.store.trials())
        c.close()
    ahead = [r.reason.get("computed_ahead") for r in runs[0]]
    assert ahead[0] is None  # the first proposal has no trial to overlap
    assert ahead[1:] == [{"history": r.id - 1, "pending": 1} for r in runs[0][1:]]
    assert [r.params for r in runs[0]] == [r.params for r in runs[1]]  # same file and seed, same campaign
    assert all("computed_ahead" not in r.reason for r in runs[2])


def test_proposals_computed_ahead_never_overshoot_the_trial_budget(write_campaign, extra):
    # Two workers and two trials: both are submitted at once, and the first to finish must not let a
    # proposal computed ahead start a third (the measurements take 0.4 * x0 s, so they end apart).
    for k in range(3):
        c = _campaign(write_campaign, f"exact{k}", "more:uneven", trials=2, policy={"kind": "random"},
                      executor={"workers": 2, "lookahead": 1}, seed=k)
        summary = c.run()
        recs = c.store.trials()
        c.close()
        assert summary.completed == 2 and len(recs) == 2, [r.status for r in recs]
