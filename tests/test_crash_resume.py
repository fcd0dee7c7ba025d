"""Crash safety: SIGKILL at random moments, then `aec resume`: exactly the budget, no duplicate, no loss."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller import Store, UserError


def _aec(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "controller.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _completed(store: Path) -> dict[int, dict]:
    try:
        with Store(store) as s:
            return {r.id: r.metrics for r in s.trials() if r.status == "completed"}
    except UserError:
        return {}  # killed while the store was being created


def test_sigkill_at_random_points_then_resume_loses_and_repeats_nothing(write_campaign):
    path = write_campaign(target="fns:slow", trials=24, policy={"kind": "random"}, executor={"workers": 2})
    store = Path(str(path).replace(".yaml", ".db"))
    rng = random.Random(1234)
    env = {"AEC_TEST_SLEEP": "0.05"}
    seen: dict[int, dict] = {}
    proc = _aec("run", str(path), "--quiet", env=env)
    for _ in range(300):
        if store.exists() and _completed(store):
            break
        time.sleep(0.1)
    for round_ in range(4):
        time.sleep(rng.uniform(0.0, 1.0) if round_ == 0 else rng.uniform(0.2, 1.2))
        proc.kill()
        proc.wait()
        if store.exists():
            now = _completed(store)
            for tid, metrics in seen.items():
                assert now[tid] == metrics, f"trial {tid} lost or re-recorded"
            seen = now
        proc = _aec("resume", str(store), "--quiet", env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    with Store(store) as s:
        recs = s.trials()
        ids = [r.id for r in recs]
        assert len(ids) == len(set(ids))
        assert sum(r.status == "completed" for r in recs) == 24
        for tid, metrics in seen.items():
            assert next(r for r in recs if r.id == tid).metrics == metrics
        assert s.replay() == {r.id: r for r in recs}
        completions = [e for e in s.events() if e[2] == "completed"]
        assert len(completions) == len({e[1] for e in completions}), "a trial was recorded completed twice"


def test_sigint_finishes_trials_in_flight_and_resume_completes(write_campaign):
    path = write_campaign(target="fns:slow", trials=40, policy={"kind": "sobol"}, executor={"workers": 2})
    store = Path(str(path).replace(".yaml", ".db"))
    proc = _aec("run", str(path), "--quiet", env={"AEC_TEST_SLEEP": "0.3"})
    for _ in range(100):
        if store.exists() and _completed(store):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    with Store(store) as s:
        statuses = {r.status for r in s.trials()}
    assert statuses <= {"completed"}, statuses
    n_before = len(_completed(store))
    assert 0 < n_before < 40
    res = _aec("resume", str(store), "--json", env={"AEC_TEST_SLEEP": "0.0"})
    out, err = res.communicate(timeout=120)
    assert res.returncode == 0, err
    assert json.loads(out)["completed"] == 40


@pytest.mark.parametrize("delay", [0.0])
def test_resume_after_kill_before_any_completion(write_campaign, delay):
    path = write_campaign(target="fns:slow", trials=4, executor={"workers": 2})
    store = Path(str(path).replace(".yaml", ".db"))
    proc = _aec("run", str(path), "--quiet", env={"AEC_TEST_SLEEP": "30"})
    for _ in range(150):
        if store.exists():
            try:
                with Store(store) as s:
                    if any(r.status == "started" for r in s.trials()):
                        break
            except UserError:
                pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    res = _aec("resume", str(store), "--quiet", env={"AEC_TEST_SLEEP": "0"})
    assert res.wait(timeout=120) == 0
    with Store(store) as s:
        recs = s.trials()
    assert [r.status for r in recs] == ["completed"] * 4
    assert recs[0].attempts == 2


def test_sigkill_with_novelty_selection_then_resume_keeps_every_decision_and_data_product(write_campaign):
    selection = {"kind": "autoencoder", "warmup": 8, "keep_fraction": 0.3, "epochs": 40, "patience": 10,
                 "retrain_every": 10, "device": "cpu"}
    path = write_campaign(target="fns:slow_spectrum", trials=30, policy={"kind": "random"}, selection=selection)
    store = Path(str(path).replace(".yaml", ".db"))
    env = {"AEC_TEST_SLEEP": "0.1"}
    proc = _aec("run", str(path), "--quiet", env=env)
    before: dict = {}
    for _ in range(600):
        if store.exists() and len(_completed(store)) >= 14:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    with Store(store) as s:
        before = {r.id: (r.kept, r.decision, r.novelty, r.pvalue) for r in s.trials() if r.status == "completed"}
    assert any(nov is not None for _, _, nov, _ in before.values()), "no measurement was scored before the kill"
    res = _aec("resume", str(store), "--quiet", env={"AEC_TEST_SLEEP": "0"})
    out, err = res.communicate(timeout=180)
    assert res.returncode == 0, err
    with Store(store) as s:
        recs = [r for r in s.trials() if r.status == "completed"]
        data_dir = Path(str(store) + ".data")
        assert len(recs) == 30
        for r in recs:
            if r.id in before:
                assert (r.kept, r.decision, r.novelty, r.pvalue) == before[r.id], f"trial {r.id} was rescored"
            assert r.decision, f"trial {r.id} has no journaled decision"
            on_disk = r.data_path is not None and (store.parent / r.data_path).exists()
            assert on_disk == bool(r.kept), f"trial {r.id}: kept={r.kept} but data on disk={on_disk}"
        assert sum(1 for f in data_dir.iterdir() if f.suffix == ".npy") == sum(bool(r.kept) for r in recs)
