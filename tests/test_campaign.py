"""The campaign loop: budgets, retries, timeouts, external programs, data products, resume."""
from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from controller import Campaign, Store, load_config
from controller.progress import SilentReporter


def _run(path: Path, **overrides) -> Campaign:
    c = Campaign(load_config(path, overrides), reporter=SilentReporter())
    c.summary_result = c.run()
    return c


def test_runs_to_the_trial_budget_and_reports_the_best(write_campaign):
    c = _run(write_campaign(trials=12))
    recs = c.store.trials()
    assert [r.status for r in recs] == ["completed"] * 12
    best = min(r.metrics["y"] for r in recs)
    assert c.summary_result.best["metrics"]["y"] == best
    assert c.summary_result.stopped == "budget reached"


def test_same_config_and_seed_give_the_same_campaign(write_campaign):
    a = _run(write_campaign("a", trials=6)).store.trials()
    b = _run(write_campaign("b", trials=6)).store.trials()
    assert [r.params for r in a] == [r.params for r in b]


def test_failing_measurements_are_retried_then_journaled_failed(write_campaign):
    path = write_campaign(target="fns:flaky", trials=10, executor={"attempts": 2})
    c = _run(path)
    recs = c.store.trials()
    failed = [r for r in recs if r.status == "failed"]
    assert sum(r.status == "completed" for r in recs) == 10
    assert failed and all(r.attempts == 2 and "stage did not reach" in r.error for r in failed)
    kinds = [e[2] for e in c.store.events() if e[1] == failed[0].id]
    assert kinds == ["proposed", "started", "failed", "started", "failed"]


def test_a_hung_measurement_times_out_and_the_campaign_goes_on(write_campaign):
    path = write_campaign(target="fns:hangs", trials=6,
                          executor={"workers": 2, "timeout": 0.5, "attempts": 1},
                          space={"parameters": [{"name": "x0", "type": "real", "low": 0.79, "high": 0.95},
                                                {"name": "x1", "type": "real", "low": 0.0, "high": 1.0}]},
                          budget={"trials": 6, "max_failures": 2})
    c = _run(path)
    failed = [r for r in c.store.trials() if r.status == "failed"]
    assert failed and all("timed out" in r.error for r in failed)
    assert "max_failures" in c.summary_result.stopped


def test_an_external_program_is_an_instrument(workdir: Path, write_campaign):
    script = workdir / "sim.py"
    script.write_text(
        "import json, sys\n"
        "p = json.load(sys.stdin)\n"
        "print('log line before the result')\n"
        "if p['x0'] > 0.9:\n"
        "    sys.stderr.write('geant4 crashed\\n'); sys.exit(3)\n"
        "print(json.dumps({'y': (p['x0'] - 0.3) ** 2 + p['x1']}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    path = write_campaign(trials=6, instrument={"kind": "command", "argv": [sys.executable, "sim.py"]},
                          executor={"attempts": 1})
    c = _run(path)
    done = [r for r in c.store.trials() if r.status == "completed"]
    assert len(done) == 6
    for r in done:
        assert np.isclose(r.metrics["y"], (r.params["x0"] - 0.3) ** 2 + r.params["x1"])
    for r in c.store.trials():
        if r.status == "failed":
            assert "status 3" in r.error and "geant4 crashed" in r.error


def test_missing_objective_metric_is_a_clear_failure(write_campaign):
    c = _run(write_campaign(target="fns:wrong_metric", trials=2, budget={"trials": 2, "max_failures": 2}))
    errs = {r.error for r in c.store.trials()}
    assert errs == {"the instrument returned no 'y' (it returned ['z'])"}


def test_data_products_are_kept_on_disk(write_campaign):
    c = _run(write_campaign(target="fns:with_data", trials=3))
    for r in c.store.trials():
        assert r.kept is True
        assert np.allclose(c.store.read_data(r.data_path), r.params["x0"])


def test_stop_when_ends_the_campaign_early(write_campaign):
    c = _run(write_campaign(trials=50, budget={"trials": 50, "stop_when": {"metric": "y", "below": 30.0}}))
    assert c.summary_result.stopped.startswith("stop_when")
    assert len(c.store.trials()) < 50


def test_resume_re_runs_trials_left_in_flight_with_the_next_attempt(write_campaign):
    path = write_campaign(trials=5)
    c = _run(path)
    c.close()
    store = Store(Path(c.config.store), writer=True)
    cfg = store.get_meta("config")
    cfg["budget"]["trials"] = 7
    store.set_meta("config", cfg)
    store.append(5, "proposed", 1, {"params": {"x0": 0.5, "x1": 0.5}, "x": [0.5, 0.5]})
    store.append(5, "started", 1, {})
    store.close()
    r = Campaign.resume(Path(c.config.store), reporter=SilentReporter())
    r.run()
    recs = r.store.trials()
    assert len(recs) == 7 and all(x.status == "completed" for x in recs)
    assert recs[5].attempts == 2 and recs[5].params == {"x0": 0.5, "x1": 0.5}
    kinds = [e[2] for e in r.store.events() if e[1] == 5]
    assert kinds == ["proposed", "started", "abandoned", "started", "completed"]


def test_resume_of_a_finished_campaign_measures_nothing(write_campaign):
    c = _run(write_campaign(trials=3))
    n_events = len(list(c.store.events()))
    c.close()
    r = Campaign.resume(Path(c.config.store), reporter=SilentReporter())
    assert r.run().completed == 3
    assert len(list(r.store.events())) == n_events


def test_pool_campaign_never_repeats_a_candidate(workdir: Path, write_campaign):
    (workdir / "pool.csv").write_text("x0,x1\n" + "\n".join(f"{i/9},{(i*7 % 10)/9}" for i in range(10)))
    c = _run(write_campaign(trials=10, space={"pool": {"file": "pool.csv"}}, policy={"kind": "random"}))
    idx = [r.pool_index for r in c.store.trials()]
    assert sorted(idx) == list(range(10))


def test_export_json_has_the_contract_fields(write_campaign, capsys):
    from controller.cli import main

    path = write_campaign(trials=3)
    assert main(["run", str(path), "--quiet"]) == 0
    store = load_config(path).store
    assert main(["export", store, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3
    for row in rows:
        assert {"id", "status", "params", "metrics", "attempts"} <= set(row)
    assert main(["export", store, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("id,status,attempts,x0,x1,y") and len(lines) == 4


def test_run_refuses_to_overwrite_a_store(write_campaign, capsys):
    from controller.cli import main

    path = write_campaign(trials=2)
    assert main(["run", str(path), "--quiet", "--seed", "5"]) == 0
    assert main(["run", str(path), "--quiet"]) == 2  # another campaign (seed) in the store: refused
    assert "aec resume" in capsys.readouterr().err


class _Notes(SilentReporter):
    def __init__(self):
        self.notes: list[str] = []

    def update(self, done, failed, best, note="", fallbacks=0):
        self.notes.append(note)


def test_multi_objective_progress_reports_the_front_and_hypervolume_after_every_trial(write_campaign):
    path = write_campaign(trials=10, instrument={"kind": "simulator", "name": "branincurrin"},
                          objectives=[{"metric": "f0", "goal": "minimize", "threshold": 300.0},
                                      {"metric": "f1", "goal": "minimize", "threshold": 15.0}], space=None)
    reporter = _Notes()
    c = Campaign(load_config(path), reporter=reporter)
    summary = c.run()
    assert len(reporter.notes) == 10 and all(n.startswith("HV ") for n in reporter.notes)
    hvs = [float(n.split()[1]) for n in reporter.notes]
    assert hvs == sorted(hvs)  # hypervolume never decreases as trials are added
    assert hvs[-1] == pytest.approx(summary.hypervolume, rel=1e-3)


def test_a_data_product_of_the_wrong_shape_fails_its_trial_and_the_campaign_goes_on(write_campaign):
    selection = {"kind": "autoencoder", "warmup": 8, "epochs": 20, "patience": 5, "retrain_every": 0, "device": "cpu"}
    c = _run(write_campaign(target="fns:odd_shape", trials=30, policy={"kind": "random"}, selection=selection))
    recs = c.store.trials()
    failed = [r for r in recs if r.status == "failed"]
    assert sum(r.status == "completed" for r in recs) == 30
    assert failed and all("data selection" in r.error and "shape" in r.error for r in failed)
    first_is_long = recs[0].params["x0"] > 0.8  # the first data product fixes the shape
    assert all((r.params["x0"] > 0.8) != first_is_long for r in failed)


def test_warm_up_never_writes_past_budget_bytes():
    from policies.selection import NoveltySelector

    sel = NoveltySelector(NoveltySelector.Options(warmup=10, budget_bytes=5 * 32, background=False, epochs=5,
                                                  retrain_every=0, device="cpu"), seed=0)
    decisions = [sel.decide(i, np.full(8, float(i), dtype=np.float32), {}) for i in range(10)]
    assert sum(d.keep for d in decisions) == 5
    assert all(d.reason.startswith("budget exhausted") for d in decisions[5:])


# -- several workers: proposals computed on a background thread, off the loop's critical path ------------------


class _SlowSecondProposal:
    """Wraps a policy: its `slow_call`-th call (the second by default) sleeps `seconds` (a slow GP fit), recording
    when it ran."""

    def __init__(self, inner, seconds: float, fail: Exception | None = None, slow_call: int = 2):
        import threading

        self.inner, self.seconds, self.fail, self.calls, self.slow = inner, seconds, fail, 0, None
        self.slow_call = slow_call
        self.threads: set[str] = set()
        self._threading = threading

    def propose(self, history, n, pending):
        import time

        self.calls += 1
        self.threads.add(self._threading.current_thread().name)
        if self.calls == self.slow_call:
            t0 = time.monotonic()
            time.sleep(self.seconds)
            self.slow = (t0, time.monotonic())
            if self.fail is not None:
                raise self.fail
        return self.inner.propose(history, n, pending)


def _observed(c: Campaign) -> list[tuple[str, float, dict]]:
    import time

    events: list[tuple[str, float, dict]] = []
    c.observer = lambda event, fields: events.append((event, time.monotonic(), dict(fields)))
    return events


def test_with_several_workers_results_are_collected_and_workers_refilled_while_a_proposal_runs(write_campaign, monkeypatch):
    monkeypatch.setenv("AEC_TEST_SLEEP", "0.2")
    path = write_campaign("bg", target="fns:slow", trials=24, executor={"workers": 4, "lookahead": 8})
    c = Campaign(load_config(path), reporter=SilentReporter())
    c.policy = slow = _SlowSecondProposal(c.policy, seconds=3.0, slow_call=4)
    events = _observed(c)
    summary = c.run()
    recs = c.store.trials()
    c.close()
    assert summary.completed == 24 and len(recs) == 24  # the budget, never more
    assert slow.threads == {"aec-proposer"}  # never on the loop's thread
    t0, t1 = slow.slow
    during = [(e, f) for e, t, f in events if t0 < t < t1]
    # The first three calls filled the 4 workers and the 8 proposals of lookahead (PROPOSER_CHUNK at a time);
    # while the fourth (slow) one ran, the loop went on collecting results and submitting the proposals queued
    # ahead: with the policy on the loop's thread nothing completes or starts until the proposal returns.
    assert sum(e == "completed" for e, _ in during) >= 2, during
    assert sum(e == "started" for e, _ in during) >= 1, during
    # The 8 queued proposals and the 4 running trials take three 0.2 s rounds of the 3 s stall (10.5 worker-s of
    # waiting measured here); on a machine slow enough to stretch each round to 0.6 s, all 4 workers still wait 1 s
    waited = summary.workers["waited_for_policy_s"]
    assert 4 * 1.0 <= waited <= 4 * summary.workers["span_s"], summary.workers
    assert summary.workers["lookahead"] == 8 and summary.workers["measured"] == 24
    # every trial was journaled 'proposed' before its attempt started (the journal's order)
    c2 = Store(path.parent / "bg.db")
    try:
        order = {}
        for seq, tid, kind, *_ in c2.events():
            order.setdefault((tid, kind), seq)
        assert all(order[(r.id, "proposed")] < order[(r.id, "started")] for r in recs)
    finally:
        c2.close()


def test_with_several_workers_the_policy_warms_up_once_on_the_proposer_thread_after_the_first_answer(write_campaign, monkeypatch):
    import threading

    monkeypatch.setenv("AEC_TEST_SLEEP", "0.2")
    path = write_campaign("bgwarm", target="fns:slow", trials=8, executor={"workers": 2, "lookahead": 2})
    c = Campaign(load_config(path), reporter=SilentReporter())
    calls: list[tuple[str, int]] = []
    wrapped = _SlowSecondProposal(c.policy, seconds=0.0)
    wrapped.warm_up = lambda: calls.append((threading.current_thread().name, wrapped.calls))
    c.policy = wrapped
    summary = c.run()
    c.close()
    assert summary.completed == 8
    # once, on the proposer's thread, and only after it answered the first request (the initial design is not delayed)
    assert len(calls) == 1 and calls[0][0] == "aec-proposer" and calls[0][1] >= 1, calls


def test_with_several_workers_a_strict_policy_error_in_the_proposer_thread_stops_as_before(write_campaign, monkeypatch):
    from policies import PolicyFallbackError

    monkeypatch.setenv("AEC_TEST_SLEEP", "0.2")
    path = write_campaign("bgstrict", target="fns:slow", trials=24, executor={"workers": 4, "lookahead": 2})
    c = Campaign(load_config(path), reporter=SilentReporter())
    c.policy = _SlowSecondProposal(c.policy, seconds=0.5, fail=PolicyFallbackError("sobol", "no model"))
    with pytest.raises(PolicyFallbackError, match="no model"):
        c.run()
    recs = c.store.trials()
    c.close()
    # what was journaled finished and was recorded; nothing was left running or half-journaled
    assert recs and all(r.status == "completed" for r in recs), [r.status for r in recs]
    assert len(recs) <= 6


def test_with_several_workers_pause_discards_proposals_not_yet_journaled(write_campaign, monkeypatch):
    import threading

    monkeypatch.setenv("AEC_TEST_SLEEP", "0.1")
    path = write_campaign("bgpause", target="fns:slow", trials=40, executor={"workers": 2, "lookahead": 4})
    c = Campaign(load_config(path), reporter=SilentReporter())
    events = _observed(c)
    started = threading.Event()

    def observer(event, fields, _inner=c.observer):
        _inner(event, fields)
        if event == "completed" and fields["trial"] == 3:
            c.pause()
            started.set()
            threading.Timer(1.0, c.request_stop).start()

    c.observer = observer
    c.run()
    recs = c.store.trials()
    c.close()
    assert started.is_set()
    # paused after trial 3: the trials in flight finish; no proposal queued before the pause is journaled later
    assert len(recs) <= 5 and all(r.status == "completed" for r in recs), [(r.id, r.status) for r in recs]
