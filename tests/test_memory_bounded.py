"""Memory per trial stays small and bounded (issue 14: a daemon runs for days and millions of trials).

tracemalloc over thousands of cheap trials: the History keeps columns (about 60 bytes a row, at most twice
that while its arrays double) or, for policies that read only counts, nothing; an in-process daemon (the
campaign thread, real uvicorn serving the API, polled) keeps nothing per trial: the Store's writer holds only
unfinished trials in memory, finished ones in its table.
"""
from __future__ import annotations

import gc
import socket
import threading
import time
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pytest

from controller import Campaign, parse_config
from policies import Observation, Problem, make_policy
from policies.base import COUNTS_ONLY_KINDS, EncodedSpace, History, Objective

ROW_BYTES = 8 + 1 + 8 + (2 * 8 + 1) + (8 + 1) + (8 + 1)
"""One History row of a 2-d campaign with one metric: id, completed flag, pool row, x (+mask), novelty and
the metric (value + presence mask)."""


def _observations(n: int, pool: bool = False):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield Observation(trial_id=i, x=rng.random(2), metrics={"y": float(i)} if i % 7 else {},
                          status="completed" if i % 7 else "failed", pool_index=i % 50 if pool else None)


def _traced_growth(fn) -> int:
    """Bytes still allocated after `fn()` (returning what it made) minus before; a first small call imports lazily."""
    History(_observations(50)).snapshot().X()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    keep = fn()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    del keep
    return grown


@pytest.fixture
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def test_a_history_row_costs_its_columns_at_most_twice(traced):
    n = 20_000
    grown = _traced_growth(lambda: History(_observations(n)))
    assert grown / n <= 2 * ROW_BYTES + 8  # arrays doubled when full: at most half empty


def test_a_counts_only_history_keeps_nothing_per_trial_and_a_snapshot_copies_no_rows(traced):
    grown = _traced_growth(lambda: History(_observations(20_000, pool=True), counts_only=True))
    # The 50 pool rows used and the last observation (~5 KB measured): nothing that grows with the trials. A row
    # per trial would be ~1.6 MB; the bound leaves room for what other threads of the process allocate meanwhile
    # (tracemalloc sees them all; a loaded CI machine measured 11 KB).
    assert grown < 20_000 * 4
    full = History(_observations(20_000))
    snaps = _traced_growth(lambda: [full.snapshot() for _ in range(100)])
    assert snaps < 100 * 2_000  # each snapshot shares the arrays: about a kilobyte, not 20,000 rows


def test_a_snapshot_is_unchanged_by_later_appends_to_either_history():
    h = History(_observations(20))
    snap = h.snapshot()
    X, Y = snap.X(), snap.Y(["y"])
    for obs in _observations(100):
        h.append(obs)
    snap.append(Observation(trial_id=999, x=np.array([0.5, 0.5]), metrics={"y": -1.0}))
    assert len(h) == 120 and len(snap) == 21
    assert np.array_equal(snap.X()[:-1], X) and np.array_equal(snap.Y(["y"])[:-1], Y) and snap.Y(["y"])[-1, 0] == -1
    assert [o.trial_id for o in h.observations[19:22]] == [19, 0, 1]  # the snapshot's append did not land in h


def test_a_columnar_history_answers_as_a_list_of_observations_did():
    obs = list(_observations(30, pool=True))
    obs[3].sem, obs[4].novelty = {"y": 0.5}, 0.25
    h = History(obs)
    done = [o for o in obs if o.status == "completed"]
    assert [o.trial_id for o in h.completed()] == [o.trial_id for o in done]
    assert np.array_equal(h.X(2), np.vstack([o.x for o in done]))
    assert np.array_equal(h.Y(["y", "missing"])[:, 0], [o.metrics["y"] for o in done])
    assert np.isnan(h.Y(["y", "missing"])[:, 1]).all() and h.Yvar(["y"]) is None  # sem only on one trial
    assert h.used_pool_indices() == {o.pool_index for o in obs}
    again = h.observations[4]
    assert again.sem == {} and again.novelty == 0.25 and again.metrics == obs[4].metrics and again.status == "completed"
    assert h.observations[3].sem == {"y": 0.5} and h.observations[-1].trial_id == 29 and h.last() is obs[-1]
    assert History().X(3).shape == (0, 3) and History().Y(["y"]).shape == (0, 1)


@pytest.mark.parametrize("kind", sorted(COUNTS_ONLY_KINDS))
@pytest.mark.parametrize("pool", [False, True])
def test_policies_declared_counts_only_propose_the_same_from_a_counts_only_history(kind, pool):
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 9), np.linspace(0, 1, 9)), -1).reshape(-1, 2)
    space = EncodedSpace(["a", "b"], [None, None], [False, False], pool=grid if pool else None)
    policy = make_policy(kind, {}, Problem(space, [Objective("y")], seed=3))
    obs = list(_observations(40, pool=pool))
    full, counts = History(obs), History(obs, counts_only=True)
    with pytest.raises(RuntimeError, match="counts only"):
        counts.X()  # a policy that read the rows would fail here, not propose from nothing
    a, b = policy.propose(full, 5, []), policy.propose(counts, 5, [])
    assert [p.pool_index for p in a] == [p.pool_index for p in b]
    assert np.array_equal(np.array([p.x for p in a]), np.array([p.x for p in b]))


def _free_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.slow
def test_a_daemon_keeps_nothing_per_trial(tmp_path, traced):
    """Traced growth from trial 500 to 2,500 of a random-policy daemon."""
    import uvicorn

    from controller.config import DaemonConfig
    from controller.daemon.api import create_app
    from controller.daemon.service import DaemonService

    marks, samples = (500, 2_500), {}
    config = parse_config({
        "name": "mem", "seed": 0, "objectives": [{"metric": "y", "goal": "minimize"}],
        "instrument": {"kind": "simulator", "name": "branin", "options": {}}, "policy": {"kind": "random"},
        "executor": {"workers": 2}, "budget": {"trials": marks[1] + 50}, "store": str(tmp_path / "mem.db"),
    }, base_dir=tmp_path)
    campaign = Campaign(config)
    service = DaemonService(campaign, DaemonConfig(port=0))
    observe, done = service._observe, [0]

    def sample(event, fields):
        observe(event, fields)
        if event == "completed":
            done[0] += 1
            if done[0] in marks:
                gc.collect()
                samples[done[0]] = tracemalloc.get_traced_memory()[0]

    campaign.observer = sample
    sock = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service, "t0ken"), log_config=None, access_log=False,
                                           lifespan="off"))
    api = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    api.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while not server.started and api.is_alive() and time.monotonic() < deadline:  # listening only once started
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        service.start()
        with httpx.Client(base_url=url, timeout=30) as client:
            while len(samples) < len(marks):
                for path in ("/status", "/metrics", "/trials?limit=20", "/health"):
                    assert client.get(path).status_code == 200
                time.sleep(0.05)
    finally:
        service.stop()
        service.done.wait(60)
        server.should_exit = True
        api.join(10)
        service.close()
        campaign.close()
    per_trial = (samples[marks[1]] - samples[marks[0]]) / (marks[1] - marks[0])
    print(f"per trial: {per_trial:.0f} B traced")
    # Before the columnar History and the per-second rate window ~2.5 KB a trial; before the Store kept finished
    # trials in its table only, ~2 KB (its in-memory fold of the journal).
    assert per_trial < 200, f"{per_trial:.0f} B per trial"


def test_a_switch_from_a_counts_only_policy_to_botorch_mid_run_rebuilds_the_history_it_reads(tmp_path):
    """Random keeps no rows; after POST /policy (here: switch_policy from the loop's observer) botorch fits on
    every trial measured so far (strict mode: a model on a counts-only history would raise, not fall back)."""
    from controller.config import PolicyConfig

    config = parse_config({
        "name": "switch", "seed": 1, "objectives": [{"metric": "y", "goal": "minimize"}],
        "instrument": {"kind": "simulator", "name": "branin", "options": {}}, "policy": {"kind": "random"},
        "executor": {"workers": 1}, "budget": {"trials": 12}, "store": str(tmp_path / "switch.db"),
    }, base_dir=tmp_path)
    campaign = Campaign(config)
    done = [0]

    def observer(event, fields):
        if event == "completed":
            done[0] += 1
            if done[0] == 8:
                campaign.switch_policy(PolicyConfig.model_validate({"kind": "botorch", "initial": 4}))

    campaign.observer = observer
    try:
        summary = campaign.run()
        reasons = [t.reason for t in campaign.store.trials()]
    finally:
        campaign.close()
    assert summary.completed == 12 and summary.fallbacks["count"] == 0
    first = next(r for r in reasons if r["policy"] == "botorch")
    assert reasons[0]["policy"] == "random" and not first["initial_design"]
    assert first["model"]["n_train"] >= 8  # fitted on the trials the random policy measured
