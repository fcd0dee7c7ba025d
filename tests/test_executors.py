"""Executors: local threads own their instruments; Ray actors run the same trials."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller import Campaign, load_config
from controller.executors import LocalExecutor, Trial
from controller.progress import SilentReporter
from instruments.base import InstrumentError, Measurement


class Counter:
    """An instrument that records which instance measured what."""

    instances = 0

    def __init__(self):
        Counter.instances += 1
        self.me = Counter.instances

    def describe(self):
        return {}

    def measure(self, params):
        if params.get("fail"):
            raise InstrumentError("no beam", retryable=False)
        time.sleep(params.get("sleep", 0.0))
        return Measurement({"who": float(self.me)})


def test_each_worker_owns_one_instrument_and_runs_in_parallel():
    Counter.instances = 0
    ex = LocalExecutor(Counter, workers=3)
    t0 = time.time()
    for i in range(3):
        ex.submit(Trial(i, 1, {"sleep": 0.3}))
    assert ex.free_slots() == 0
    results = []
    while len(results) < 3:
        results += ex.completed(timeout=2.0)
    assert time.time() - t0 < 0.85
    assert sorted(r.measurement.metrics["who"] for r in results) == [1.0, 2.0, 3.0]
    ex.shutdown()


def test_errors_carry_retryability_and_timeouts_replace_the_worker():
    Counter.instances = 0
    ex = LocalExecutor(Counter, workers=1, timeout=0.2)
    ex.ABORT_GRACE = 0.1
    ex.submit(Trial(0, 1, {"fail": True}))
    (r,) = ex.completed(timeout=2.0)
    assert not r.ok and not r.retryable and "no beam" in r.error
    ex.submit(Trial(1, 1, {"sleep": 5.0}))
    (r,) = ex.completed(timeout=3.0)
    assert "timed out" in r.error and r.retryable
    assert Counter.instances == 2 and ex.free_slots() == 1
    ex.submit(Trial(2, 1, {}))
    (r,) = ex.completed(timeout=2.0)
    assert r.ok and r.measurement.metrics["who"] == 2.0
    ex.shutdown(wait=False)


@pytest.mark.ray
@pytest.mark.slow
def test_a_campaign_runs_on_ray_workers(write_campaign, workdir: Path):
    ray = pytest.importorskip("ray")
    path = write_campaign(trials=6, executor={"kind": "ray", "workers": 2})
    try:
        c = Campaign(load_config(path), reporter=SilentReporter())
        summary = c.run()
    finally:
        ray.shutdown()
    assert summary.completed == 6
    assert {r.worker for r in c.store.trials()} <= {"ray-0", "ray-1"}
