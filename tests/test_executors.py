"""Executors: local threads own their instruments; Ray actors run the same trials."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from controller import Campaign, load_config
from controller.executors import LocalExecutor, Trial, local
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
    for i in range(3):
        ex.submit(Trial(i, 1, {"sleep": 1.0}))
    assert ex.free_slots() == 0
    results = []
    while len(results) < 3:
        results += ex.completed(timeout=2.0)
    # in parallel: every measurement started before any finished (an order, not a duration, so a loaded
    # machine cannot fail it; in series the second would start after the first had finished)
    assert max(r.started for r in results) < min(r.finished for r in results)
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


class Beamline:
    """A network instrument as aec meets them: it opens a socket and starts a reader thread when built, and
    only its close() releases them. A measurement waits on the connection (ignoring abort, as a hung
    Channel Access call does) until it is done or the instrument is closed."""

    opened = 0
    closed = 0

    def __init__(self):
        Beamline.opened += 1
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.closing = threading.Event()
        self.reader = threading.Thread(target=self.closing.wait, daemon=True, name="beamline-reader")
        self.reader.start()

    def describe(self):
        return {}

    def measure(self, params):
        if self.closing.wait(params.get("sleep", 0.0)):
            raise InstrumentError("connection closed")
        return Measurement({"y": 1.0})

    def close(self):
        Beamline.closed += 1
        self.closing.set()
        self.sock.close()
        self.reader.join()


def _threads_and_fds() -> tuple[frozenset[int], int]:
    """The executor's and instruments' threads alive now (by ident), and the number of open fds."""
    ours = frozenset(t.ident for t in threading.enumerate() if t.name.startswith(("aec-", "beamline-")))
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    return ours, fds


def _leaked_since(baseline: tuple[frozenset[int], int], within: float = 20.0) -> tuple[int, int]:
    """(threads started since `baseline` still alive, fds open beyond it), waiting up to `within` s for 0, 0.
    Threads are compared by identity, so another test's leftover thread that ends meanwhile does not upset it."""
    deadline = time.monotonic() + within
    while True:
        threads, fds = _threads_and_fds()
        leaked = (len(threads - baseline[0]), max(0, fds - baseline[1]))
        if leaked == (0, 0) or time.monotonic() >= deadline:
            return leaked
        time.sleep(0.05)


def test_instruments_are_closed_on_timeout_cancel_and_shutdown_so_threads_and_sockets_do_not_leak():
    Beamline.opened = Beamline.closed = 0
    baseline = _threads_and_fds()
    ex = LocalExecutor(Beamline, workers=2, timeout=0.3)
    ex.ABORT_GRACE = 0.1
    for i in range(3):  # each times out, ignores abort, and has its worker and instrument replaced
        ex.submit(Trial(i, 1, {"sleep": 60.0}))
        results = []
        while not results:
            results = ex.completed(timeout=2.0)
        assert "timed out" in results[0].error
    ex.submit(Trial(10, 1, {"sleep": 60.0}))
    ex.cancel(10)
    ex.submit(Trial(11, 1, {}))
    results = []
    while not results:
        results = ex.completed(timeout=2.0)
    assert [(r.trial.id, r.ok) for r in results] == [(11, True)]
    ex.shutdown()
    assert Beamline.opened == 2 + 3 + 1
    assert _leaked_since(baseline) == (0, 0), "a replaced or shut-down worker's instrument kept its thread or socket"
    assert Beamline.closed == Beamline.opened


class SlowToClose(Beamline):
    release = threading.Event()

    def close(self):
        SlowToClose.release.wait(60)
        super().close()


def test_a_close_that_blocks_delays_shutdown_by_at_most_the_close_wait_and_says_so(caplog):
    SlowToClose.release.clear()
    ex = LocalExecutor(SlowToClose, workers=2)
    t0 = time.monotonic()
    try:
        ex.shutdown()
        assert time.monotonic() - t0 < local.CLOSE_WAIT + 10.0
        assert caplog.text.count("did not return within") == 2
    finally:
        SlowToClose.release.set()


def test_a_simulator_stays_on_the_cpu_outside_a_ray_worker_whatever_the_shell_says(monkeypatch):
    """CUDA_VISIBLE_DEVICES in the user's shell is no Ray worker's GPU: no silent move to cuda, no fallback."""
    from instruments import simulated
    from instruments.simulated import SimulatedInstrument

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    ex = LocalExecutor(lambda: SimulatedInstrument("branin"), workers=1)
    try:
        (inst,) = [s.instrument for s in ex.slots]
        assert inst.fallback is None and inst.simulator.device.type == "cpu"
        ex.submit(Trial(0, 1, {"x0": 1.0, "x1": 2.0}))
        (r,) = ex.completed(timeout=30.0)
        assert r.ok and "fallback" not in r.measurement.metadata
    finally:
        ex.shutdown()
    # inside a Ray worker that was given a GPU it is placed there, or says why not
    monkeypatch.setattr(simulated, "_WORKER_GPUS", ["0"])
    explicit = SimulatedInstrument("branin", {"device": "cpu"})
    assert explicit.fallback is None and explicit.measure({"x0": 1.0, "x1": 2.0}).metadata.get("fallback") is None
    placed = SimulatedInstrument("branin")
    import torch

    if torch.cuda.is_available():
        assert placed.fallback is None and placed.simulator.device.type == "cuda"
    else:
        assert "CUDA_VISIBLE_DEVICES=0" in placed.fallback and placed.simulator.device.type == "cpu"
        assert placed.measure({"x0": 1.0, "x1": 2.0}).metadata["fallback"] == placed.fallback


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


def test_policy_wait_counts_free_workers_times_the_time_they_wait_and_nothing_before_the_first_submit():
    from controller.executors.base import Utilisation

    u = Utilisation(workers=4)
    u.waiting_for_policy(100.0, 4)  # before any trial: the start-up is not the workers' time (nor is it in the span)
    u.submitted(101.0)
    u.waiting_for_policy(102.0, 2)  # 4 free for the second since the first submit
    u.waiting_for_policy(104.5, 0)  # then 2 free for 2.5 s
    u.finished(101.0, 105.0, 106.0)
    u.waiting_for_policy(106.0, 3)
    u.waiting_for_policy(106.5, 0)
    assert u.policy_wait == 4 * 1.0 + 2 * 2.5 + 3 * 0.5
    record = u.to_json()
    assert record["waited_for_policy_s"] == 10.5 and record["waited_for_policy"] == round(10.5 / (4 * 5.0), 4)
