"""The daemon survives what a facility throws at it: SIGKILL at random moments (then --resume), SIGTERM
(drain; a second one abandons), a second daemon on the same store, and injected instrument faults with
a circuit breaker that trips and recovers. Real subprocesses, real signals, the journal checked after."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from controller import Store, UserError
from controller.cli import main
from controller.daemon.faults import Backoff
from daemon_helpers import Daemon, write_campaign


def _completed(store: Path) -> dict[int, dict]:
    try:
        with Store(store) as s:
            return {r.id: r.metrics for r in s.trials() if r.status == "completed"}
    except UserError:
        return {}


def _check_journal(store: Path, budget: int) -> list:
    with Store(store) as s:
        recs = s.trials()
        events = list(s.events())
        assert s.replay() == {r.id: r for r in recs}
    completions = [e[1] for e in events if e[2] == "completed"]
    assert len(completions) == len(set(completions)), "a trial was recorded completed twice"
    assert sum(r.status == "completed" for r in recs) == budget
    return recs


def _kill_and_resume(rounds: int, seed: int, tmp_path: Path) -> None:
    budget = 12 * rounds + 20  # ~10 trials are measured between two kills: the budget outlasts them all
    path = write_campaign(tmp_path, "kr", budget={"trials": budget}, executor={"workers": 2})
    store = tmp_path / "kr.db"
    rng = random.Random(seed)
    env = {"AEC_TEST_SLEEP": "0.1"}
    d = Daemon(str(path), cwd=tmp_path, env=env)
    seen: dict[int, dict] = {}
    paused_round = rng.randrange(rounds)
    for round_ in range(rounds):
        if round_ == paused_round:  # a paused campaign is still paused after a crash and a restart
            assert d.call("POST", "/pause").json()["state"] == "paused"
        time.sleep(rng.uniform(0.1, 1.0))
        d.kill()
        now = _completed(store)
        for tid, metrics in seen.items():
            assert now[tid] == metrics, f"trial {tid} lost or re-recorded"
        seen = now
        d = Daemon("--resume", str(store), cwd=tmp_path, env=env)
        if round_ == paused_round:
            st = d.status()
            assert st["state"] == "paused" and "restored after a restart" in st["reason"]
            n = sum(st["counts"].values())
            time.sleep(0.5)
            assert sum(d.status()["counts"].values()) == n, "a paused daemon started a trial after its restart"
            assert d.call("POST", "/resume").json()["state"] == "running"
    st = d.wait_state("finished", timeout=90)
    assert st["completed"] == budget
    assert d.terminate() == 0
    recs = _check_journal(store, budget)
    for tid, metrics in seen.items():
        assert next(r for r in recs if r.id == tid).metrics == metrics


def test_sigkill_at_random_moments_then_resume_records_exactly_the_budget_and_keeps_pause(tmp_path):
    _kill_and_resume(rounds=3, seed=11, tmp_path=tmp_path)


@pytest.mark.slow
def test_sigkill_ten_times_then_resume_records_exactly_the_budget(tmp_path):
    _kill_and_resume(rounds=10, seed=12, tmp_path=tmp_path)


def test_a_second_daemon_is_refused_and_sigterm_drains_then_a_second_sigterm_abandons(tmp_path, capsys):
    path = write_campaign(tmp_path, "term", budget={"open_ended": True}, executor={"workers": 2})
    store = tmp_path / "term.db"
    d = Daemon(str(path), cwd=tmp_path, env={"AEC_TEST_SLEEP": "0.3"})
    assert main(["daemon", "--resume", str(store)]) == 2  # the store's writer lock, held by the subprocess
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is in use by pid" in lines[0], lines
    while not _completed(store):
        time.sleep(0.1)
    assert main(["daemon", str(path)]) == 2  # a new campaign into a store that holds one
    assert "aec daemon --resume" in capsys.readouterr().err
    assert d.get("/health").json()["state"] == "running"
    assert d.terminate() == 0
    with Store(store) as s:
        statuses = {r.status for r in s.trials()}
    assert statuses == {"completed"}, statuses

    d = Daemon("--resume", str(store), cwd=tmp_path, env={"AEC_TEST_SLEEP": "20"})
    deadline = time.monotonic() + 30
    while d.status()["counts"].get("started", 0) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    t0 = time.monotonic()  # both workers are inside 20 s measurements: the API does not wait for them
    assert d.call("POST", "/pause").json()["state"] == "paused"
    assert d.call("POST", "/resume").json()["state"] == "running"
    assert d.status()["counts"]["started"] == 2 and d.get("/metrics").status_code == 200
    assert time.monotonic() - t0 < 3.0
    d.proc.send_signal(15)
    assert d.wait_state("stopping")["state"] == "stopping"
    t0 = time.monotonic()
    d.proc.send_signal(15)
    assert d.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 10, "the second SIGTERM did not abandon the 20 s measurements"
    with Store(store) as s:
        abandoned = [r for r in s.trials() if r.status == "abandoned"]
    assert len(abandoned) == 2


def test_injected_faults_are_journaled_and_the_breaker_trips_and_recovers(tmp_path):
    trials = 300
    path = write_campaign(tmp_path, "faults", target="dfns:faulty", budget={"trials": trials},
                          executor={"workers": 4, "timeout": 0.3, "attempts": 3},
                          objectives=[{"metric": "y", "goal": "minimize", "range": [0.0, 2.0]}],
                          daemon={"port": 0, "breaker": 6, "backoff": 0.01, "backoff_max": 0.05})
    d = Daemon(str(path), cwd=tmp_path, env={"AEC_TEST_SLEEP": "0.002", "AEC_TEST_FAULT_SEED": "11"})
    deadline = time.monotonic() + 60
    while d.status()["completed"] < 100:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    (tmp_path / "BROKEN").write_text("")  # the instrument dies: every attempt fails
    st = d.wait_state("unhealthy", timeout=30)
    assert "circuit breaker: 6 consecutive failed attempts" in st["reason"]  # (last: ...) names the last one
    assert st["breaker"]["trips"] >= 1
    n = sum(st["counts"].values())
    time.sleep(0.5)
    assert sum(d.status()["counts"].values()) == n, "an unhealthy daemon proposed a trial"
    assert "aec_breaker_trips_total 1.0" in d.get("/metrics").text
    (tmp_path / "BROKEN").unlink()
    assert d.call("POST", "/resume").json()["state"] == "running"
    st = d.wait_state("finished", timeout=90)
    assert st["completed"] == trials and st["breaker"]["consecutive_failures"] < 6
    assert d.terminate() == 0

    recs = _check_journal(tmp_path / "faults.db", trials)
    with Store(tmp_path / "faults.db") as s:
        events = list(s.events())
    failures = [p.get("error") for _, _, kind, _, _, p in events if kind == "failed"]
    backoff, retried, last_failure = Backoff(0.01, 0.05), 0, {}
    for _, tid, kind, attempt, t, payload in events:  # each retry waited its backoff after the failure
        if kind == "failed" and not payload.get("final", True):
            last_failure[tid] = (attempt, t)
        elif kind == "started" and tid in last_failure:
            failed_attempt, t_failed = last_failure.pop(tid)
            assert attempt == failed_attempt + 1 and t - t_failed >= backoff(failed_attempt) - 1e-3
            retried += 1
    assert retried >= 5
    assert failures and all(failures), "a failure was journaled without its reason"
    reasons = " | ".join(failures)
    for expected in ("detector readout error", "timed out after 0.3 s", "expected a finite number",
                     "stage controller not responding"):
        assert expected in reasons, f"no failure journaled as {expected!r}"
    assert all(0.0 <= r.metrics["y"] <= 2.0 for r in recs if r.status == "completed")
    assert sum(r.status == "failed" for r in recs) >= 1
    log_events = {line.get("event") for line in d.lines()}
    assert {"started", "completed", "failed", "retry", "state"} <= log_events
    failed_line = next(line for line in d.lines() if line.get("event") == "failed")
    assert {"trial", "attempt", "duration", "reason"} <= set(failed_line)


SLOW_PROPOSALS = '''
import time
from pathlib import Path

from dfns import bowl  # noqa: F401 - the instrument

from policies.baselines import RandomPolicy

HERE = Path(__file__).parent
_propose = RandomPolicy.propose


def _slow(self, history, n, pending):
    """While a file SLOW exists beside this module, a proposal takes 30 s (the loop is busy inside it)."""
    if (HERE / "SLOW").exists():
        (HERE / "IN_PROPOSAL").write_text("")
        deadline = time.monotonic() + 30
        while (HERE / "SLOW").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return _propose(self, history, n, pending)


RandomPolicy.propose = _slow
'''


@pytest.mark.parametrize("resume_with", ["daemon", "resume"])
def test_operator_points_accepted_then_sigkilled_are_measured_exactly_once_after_resume(tmp_path, resume_with):
    """A 202 means the points are on disk: SIGKILL while the loop is inside a slow proposal (before it could
    journal them) loses none, and `aec daemon --resume` / `aec resume` measures each once, first, as 'operator'."""
    import subprocess
    import sys

    budget = 8
    path = write_campaign(tmp_path, "opk", target="slowprop:bowl", budget={"trials": budget},
                          executor={"workers": 1})
    (tmp_path / "slowprop.py").write_text(SLOW_PROPOSALS)
    store = tmp_path / "opk.db"
    env = {"AEC_TEST_SLEEP": "0.05"}
    d = Daemon(str(path), cwd=tmp_path, env=env)
    deadline = time.monotonic() + 60
    while d.status()["completed"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (tmp_path / "SLOW").write_text("")
    while not (tmp_path / "IN_PROPOSAL").exists():
        assert time.monotonic() < deadline, "the loop never entered a proposal"
        time.sleep(0.05)
    points = [{"x0": 0.125, "x1": 0.25}, {"x0": 0.875, "x1": 0.5}, {"x0": 0.5, "x1": 0.0625}]
    r = d.call("POST", "/trials", {"points": points, "note": "before the crash"})
    assert r.status_code == 202 and r.json()["queued"] == 3
    d.kill()
    (tmp_path / "SLOW").unlink()
    with Store(store) as s:
        before = s.trials()
    assert not [t for t in before if t.reason.get("operator")], "the loop journaled the points: no crash window"
    last_before = max(t.id for t in before)

    if resume_with == "daemon":
        d = Daemon("--resume", str(store), cwd=tmp_path, env=env)
        assert d.wait_state("finished", timeout=90)["completed"] == budget
        assert d.terminate() == 0
    else:
        out = subprocess.run([sys.executable, "-m", "controller.cli", "resume", str(store)], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(tmp_path), **env}, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    recs = _check_journal(store, budget)
    ops = [t for t in recs if t.reason.get("policy") == "operator"]
    assert [t.params for t in ops] == points, "an accepted point was lost or measured twice"
    assert all(t.status == "completed" and t.attempts == 1 and t.reason["note"] == "before the crash" for t in ops)
    assert [t.id for t in ops] == [last_before + 1, last_before + 2, last_before + 3]  # the first new trials
    with Store(store) as s:
        assert s.queued_points() == []
        started = [tid for _, tid, kind, _, _, _ in s.events() if kind == "started" and tid > last_before]
    assert started[:3] == [t.id for t in ops], "the queued points were not measured first"
