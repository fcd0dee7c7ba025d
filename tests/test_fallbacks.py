"""Fallbacks are loud: counted in the progress line, listed in the summary, `aec show` and --json; strict raises."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from controller.campaign import Campaign
from controller.cli import EXIT_STRICT, main
from controller.preflight import load_config
from controller.progress import SilentReporter, status_note
from controller.results import FallbackTally
from controller.store import TrialRecord
from policies import PolicyFallbackError
from policies.base import History

# botorch with an outcome constraint on a metric the instrument never reports: every proposal after
# the initial design is a Sobol point, because no model of 'c' can be fitted.
NO_C = dict(policy={"kind": "botorch", "initial": 3, "num_restarts": 2, "raw_samples": 32, "strict": False},
            constraints=[{"metric": "c", "op": "<=", "bound": 1.0}],
            executor={"kind": "local", "workers": 1, "lookahead": 0})  # lookahead would extend the design instead


class Recorder(SilentReporter):
    def __init__(self):
        self.fallbacks: list[int] = []
        self.messages: list[str] = []

    def update(self, done, failed, best, note="", fallbacks=0):
        self.fallbacks.append(fallbacks)

    def message(self, text):
        self.messages.append(text)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_a_fallback_is_counted_in_progress_summary_show_and_json(write_campaign):
    path = write_campaign("fb", trials=6, **NO_C)
    run = _cli("run", str(path), "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["fallbacks"]["count"] == 3  # trials 3-5, after 3 initial-design points (ids 0-2)
    (reason,) = summary["fallbacks"]["reasons"]
    assert "too few completed observations" in reason["reason"] and reason["trials"] == "3-5"
    assert "warning: 3 proposal(s)" in run.stderr  # also under --json and --quiet

    store = str(path.parent / "fb.db")
    shown = json.loads(_cli("show", store, "--json").stdout)
    assert shown["fallbacks"] == summary["fallbacks"]
    table = _cli("show", store).stdout
    assert "fallbacks: 3" in table and "too few completed observations" in table
    quiet = _cli("resume", store, "--trials", "7", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and "warning: 4 proposal(s)" in quiet.stderr
    exported = json.loads(_cli("export", store, "--format", "json").stdout)
    assert sum(bool(t["reason"].get("fallback")) for t in exported) == 4


def test_the_progress_line_counts_fallbacks_and_the_first_of_each_reason_is_printed(write_campaign):
    reporter = Recorder()
    c = Campaign(load_config(write_campaign("fbp", trials=6, **NO_C)), reporter=reporter)
    summary = c.run()
    c.close()
    assert reporter.fallbacks[-1] == 3 and reporter.fallbacks == sorted(reporter.fallbacks)
    assert sum("fell back" in m for m in reporter.messages) == 1
    assert summary.fallbacks["count"] == 3
    assert status_note("HV 2", 1, 3) == "HV 2, 1 failed, fallbacks: 3"


@pytest.mark.parametrize("how", ["file", "env"])
def test_strict_mode_raises_instead_and_the_store_resumes(write_campaign, how):
    policy = dict(NO_C["policy"], strict=True) if how == "file" else {k: v for k, v in NO_C["policy"].items() if k != "strict"}
    path = write_campaign("strict", trials=6, policy=policy, constraints=NO_C["constraints"],
                          executor=NO_C["executor"])
    run = _cli("run", str(path), env={"AEC_STRICT": "1"})
    assert run.returncode == EXIT_STRICT
    assert "error: policy botorch would have fallen back (strict mode): too few completed observations" in run.stderr
    assert "Traceback" not in run.stderr
    store = str(path.parent / "strict.db")
    trials = json.loads(_cli("export", store).stdout)
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials)  # the initial design is kept
    if how == "env":  # the same store, no longer strict, continues with fallbacks counted
        done = _cli("resume", store, "--json", env={"AEC_STRICT": "0"})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["fallbacks"]["count"] == 3


def test_the_campaign_level_fallback_around_any_policy_is_marked_or_strict(write_campaign, monkeypatch):
    def broken(history, n, pending):
        raise RuntimeError("the policy broke")

    path = write_campaign("wrap", trials=4, policy={"kind": "sobol", "strict": False})
    c = Campaign(load_config(path), reporter=Recorder())
    monkeypatch.setattr(c.policy, "propose", broken)
    summary = c.run()
    c.close()
    assert summary.completed == 4 and summary.fallbacks["count"] == 4
    assert "policy error: RuntimeError: the policy broke" in summary.fallbacks["reasons"][0]["reason"]

    path = write_campaign("wrap2", trials=4, policy={"kind": "sobol", "strict": True})
    c = Campaign(load_config(path), reporter=Recorder())
    monkeypatch.setattr(c.policy, "propose", broken)
    with pytest.raises(PolicyFallbackError, match="the policy broke"):
        c.run()
    c.close()


def test_strict_must_be_a_boolean(write_campaign, capsys):
    path = write_campaign("badstrict", policy={"kind": "botorch", "strict": "yes please"})
    assert main(["validate", str(path)]) == 2
    assert "policy.strict" in capsys.readouterr().err


def test_the_tally_groups_reasons_and_writes_trial_ranges():
    recs = [TrialRecord(id=i, status="completed", params={}, x=[0.0], reason={"fallback": "A"} if i in (1, 2, 3, 7) else {})
            for i in range(1, 9)]
    recs.append(TrialRecord(id=9, status="completed", params={}, x=[0.0], reason={"fallback": "B"}))
    tally = FallbackTally.from_records(recs)
    assert tally.to_json() == {"count": 5, "reasons": [{"reason": "A", "count": 4, "trials": "1-3, 7"},
                                                       {"reason": "B", "count": 1, "trials": "9"}]}
    assert np.isclose(FallbackTally({}).count, 0)


def test_more_workers_than_the_initial_design_extend_it_instead_of_falling_back():
    """With the initial design's results still pending, extra proposals are more of the design, not a fallback."""
    from policies.base import Observation, Proposal
    from tests.bayes_helpers import cube, policy

    pol = policy(cube(2), initial=3, strict=True)
    history = History()
    history.append(Observation(trial_id=0, x=np.array([0.5, 0.5]), metrics={"y": 1.0}))
    pending = [Proposal(x=np.array([0.1 * k, 0.2]), reason={}) for k in range(1, 4)]
    out = pol.propose(history, 2, pending)  # strict: a fallback would raise
    assert len(out) == 2 and all(p.reason["initial_design"] and "extended" in p.reason for p in out)
    assert not any("fallback" in p.reason for p in out)
    for k in range(1, 3):
        history.append(Observation(trial_id=k, x=np.array([0.3 * k, 0.1]), metrics={"z": 1.0}))  # 'y' never came
    with pytest.raises(PolicyFallbackError, match="too few completed observations"):
        pol.propose(history, 1, pending)  # the design's results are in and still no model: a real fallback


def test_fast_paths_turned_off_show_in_the_progress_line_the_summary_and_stderr(write_campaign):
    path = write_campaign("slowpath", trials=5, policy={"kind": "botorch", "initial": 3, "num_restarts": 2,
                                                         "raw_samples": 32})
    run = _cli("run", str(path), "--json", env={"AEC_FAST_PATHS": "0"})
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["fallbacks"]["count"] == 0 and len(summary["degraded"]) == 1
    assert summary["degraded"][0].startswith("fast paths off (AEC_FAST_PATHS=0)")
    assert "warning: the policy ran degraded: fast paths off" in run.stderr
    plain = _cli("run", str(path.parent / "slowpath.yaml"), "--store", str(path.parent / "again.db"),
                 env={"AEC_FAST_PATHS": "0"})
    assert "degraded: fast paths off" in plain.stdout + plain.stderr  # said at the start and on the progress line
    fast = json.loads(_cli("run", str(path), "--json", "--store", str(path.parent / "fast.db")).stdout)
    assert fast["degraded"] == []
