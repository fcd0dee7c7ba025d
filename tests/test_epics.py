"""EPICS Channel Access (issue 14, item 4): campaigns against the example caproto IOC on loopback.

The IOC (examples/epics_ioc.py, with its default prefix and specimen) runs in a subprocess on a free
port; the client finds it through EPICS_CA_ADDR_LIST=127.0.0.1 with auto address lists off, as on a
facility's isolated network.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from controller.campaign import Campaign
from controller.cli import EXIT_FAILED, EXIT_USER, main
from controller.preflight import load_config
from controller.store import Store
from instruments.base import InstrumentError, InstrumentTimeout
from instruments.epics import EpicsInstrument

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "microscope_epics.yaml"
PREFIX = "aec:microscope:"
SIZE = 128
TOLERANCE = 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class IOC:
    """examples/epics_ioc.py in a subprocess on a loopback port; start() again after kill() serves the same PVs."""

    def __init__(self, port: int, speed: float = 400.0, dwell: float = 0.1, *extra: str):
        self.port, self.speed, self.dwell, self.extra = port, speed, dwell, list(extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "IOC":
        env = {**os.environ, "EPICS_CA_SERVER_PORT": str(self.port)}
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "epics_ioc.py"), "--interfaces", "127.0.0.1",
             "--speed", str(self.speed), "--settle", "0.01", "--dwell", str(self.dwell), "-q", *self.extra],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, "the example IOC exited at start-up"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "the example IOC did not start listening within 60 s"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def ca_env():
    """Client-side Channel Access settings: loopback only, and this module's own server port."""
    port = _free_port()
    saved = {k: os.environ.get(k) for k in ("EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST", "EPICS_CA_SERVER_PORT")}
    os.environ.update(EPICS_CA_ADDR_LIST="127.0.0.1", EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_SERVER_PORT=str(port))
    yield port
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ioc(ca_env):
    server = IOC(ca_env).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def client(ioc):
    """A Channel Access client of the test's own, to put and get the IOC's PVs by name."""
    from caproto.threading.client import Context

    ctx = Context()
    yield lambda name: ctx.get_pvs(PREFIX + name)[0]
    ctx.disconnect(wait=False)


@pytest.fixture(scope="module")
def callback_port(ca_env):
    """A second IOC whose puts to X, Y and ACQUIRE complete only when the move or acquisition ends (a motor
    record's and an areaDetector's put-callback), at 20 px/s and a 1 s dwell."""
    port = _free_port()
    server = IOC(port, 20.0, 1.0, "--callback-puts").start()
    yield port
    server.kill()


@pytest.fixture
def callback_ioc(callback_port, monkeypatch):
    """Clients made in the test find the callback-put IOC; yields a PV getter of the test's own there."""
    from caproto.threading.client import Context

    monkeypatch.setenv("EPICS_CA_SERVER_PORT", str(callback_port))
    ctx = Context()
    yield lambda name: ctx.get_pvs(PREFIX + name)[0]
    ctx.disconnect(wait=True)
    ctx.broadcaster.disconnect(wait=True)


def instrument_spec(timeout: float = 3.0, **changes) -> dict:
    axes = {a: {"setpoint": a.upper(), "readback": f"{a.upper()}_RBV", "tolerance": TOLERANCE,
                "done": f"{a.upper()}_DMOV", "stop": "STOP"} for a in ("x", "y")}
    spec = {"kind": "epics", "prefix": PREFIX, "parameters": axes,
            "trigger": {"pv": "ACQUIRE", "value": 1, "done": "ACQUIRE_DONE", "done_value": 1},
            "metrics": {"peak_ratio": "PEAK_RATIO", "total_counts": "TOTAL_COUNTS"}, "data": "SPECTRUM",
            "timeout": timeout, "move_timeout": 20.0, "acquire_timeout": 20.0}
    spec.update(changes)
    return spec


def write_campaign(folder: Path, name: str, trials: int, attempts: int = 3, max_failures: int | None = None,
                   **instrument) -> Path:
    data = {
        "name": name, "seed": 5,
        "space": {"parameters": [{"name": a, "type": "real", "low": 0.0, "high": SIZE - 1.0} for a in ("x", "y")]},
        "objectives": [{"metric": "peak_ratio", "goal": "maximize"}],
        "instrument": instrument_spec(**instrument),
        "policy": {"kind": "sobol"},
        "executor": {"attempts": attempts, "timeout": 60},
        "budget": {"trials": trials, **({"max_failures": max_failures} if max_failures is not None else {})},
        "store": str(folder / f"{name}.db"),
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _instrument(**changes) -> EpicsInstrument:
    spec = instrument_spec(**changes)
    spec.pop("kind")
    return EpicsInstrument(**spec)


def _interrupted(inst: EpicsInstrument, params: dict, interrupt, join: float) -> dict:
    """Measure `params` in a worker thread, call `interrupt()` 0.5 s in; {'error', 'took'} of the measurement."""
    outcome: dict = {}

    def measure():
        t0 = time.monotonic()
        try:
            inst.measure(params)
        except InstrumentError as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - t0

    worker = threading.Thread(target=measure)
    worker.start()
    time.sleep(0.5)
    interrupt()
    worker.join(join)
    return outcome


def test_the_example_campaign_sets_reads_back_and_stores_the_waveform_through_channel_access(ioc, tmp_path, capsys):
    store_path = str(tmp_path / "ca.db")
    assert main(["run", str(EXAMPLE), "--trials", "4", "--store", store_path, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", store_path, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["completed"] * 4
    with Store(store_path) as store:
        for row in rows:
            spectrum = store.read_data(row["data"])
            assert spectrum.shape == (256,)
            assert spectrum.sum() == pytest.approx(row["metrics"]["total_counts"])  # the same acquisition's waveform
        completed = [p for _, _, kind, _, _, p in store.events() if kind == "completed"]
    assert len({tuple(r["params"].values()) for r in rows}) == 4
    for row, payload in zip(rows, completed):
        for axis in ("x", "y"):
            assert abs(payload["metadata"][f"{axis}_readback"] - row["params"][axis]) <= TOLERANCE


def test_a_monitor_update_ends_the_acquisition_so_each_measurement_reads_a_fresh_one(ioc):
    inst = _instrument(trigger={"pv": "ACQUIRE", "monitor": "COUNTER"},
                       metrics={"n": "COUNTER", "total_counts": "TOTAL_COUNTS"})
    try:
        counts = [inst.measure({"x": 3.0 + i, "y": 7.0}).metrics["n"] for i in range(3)]
    finally:
        inst.close()
    assert np.diff(counts).tolist() == [1.0, 1.0]


def test_a_setpoint_the_stage_refuses_fails_naming_the_readback(ioc):
    inst = _instrument()
    try:
        with pytest.raises(InstrumentError, match=rf"x did not reach 200 .*{PREFIX}X_RBV reads"):
            inst.measure({"x": 200.0, "y": 1.0})
    finally:
        inst.close()


def test_abort_puts_stop_and_ends_the_measurement_mid_move(client):
    inst = _instrument()
    try:
        inst.measure({"x": 0.0, "y": 0.0})
        client("VELO").write([1.0], wait=True, timeout=3)  # 30 pixels now take 30 s
        outcome = _interrupted(inst, {"x": 30.0, "y": 0.0}, inst.abort, 30)
        rbv, dmov = (client(n).read(timeout=3).data[0] for n in ("X_RBV", "X_DMOV"))
    finally:
        client("VELO").write([400.0], wait=True, timeout=3)
        inst.close()
    assert isinstance(outcome["error"], InstrumentTimeout) and outcome["took"] < 15.0  # the move takes 30 s
    assert dmov == 1 and 0.0 <= rbv < 15.0  # stopped, far short of 30 (30 s away)


def test_a_server_that_stops_answering_gives_put_and_get_timeouts_naming_the_pv(ioc):
    inst = _instrument(timeout=0.5)
    try:
        inst.measure({"x": 1.0, "y": 1.0})
        os.kill(ioc.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            # the setpoint puts go out without waiting; the done PV read while they are pending does not answer
            with pytest.raises(InstrumentError, match=rf"PV {PREFIX}X_DMOV did not answer a get within 0.5 s") as info:
                inst.measure({"x": 2.0, "y": 1.0})
            took = time.monotonic() - t0
        finally:
            os.kill(ioc.proc.pid, signal.SIGCONT)
        assert f"putting {PREFIX}STOP to stop x, y failed too" in str(info.value)
        assert info.value.retryable and took < 15.0  # within `timeout`s, long before move_timeout (20 s)
        time.sleep(0.5)
        assert inst.measure({"x": 2.0, "y": 1.0}).metrics["total_counts"] > 0  # the same client recovers
    finally:
        inst.close()


def _dmov_times(getter) -> tuple[list, Any]:
    """Server timestamps of every X_DMOV and Y_DMOV update (name, value, timestamp), and a function ending it."""
    seen: list = []
    subs, callbacks = [], []  # caproto holds callbacks weakly
    for name in ("X_DMOV", "Y_DMOV"):
        sub = getter(name).subscribe(data_type="time")
        callbacks.append(lambda s, r, name=name: seen.append((name, int(r.data[0]), r.metadata.timestamp)))
        sub.add_callback(callbacks[-1])
        subs.append(sub)
    _wait_until(lambda: {name for name, _, _ in seen} == {"X_DMOV", "Y_DMOV"}, 30)  # each sends its value first
    return seen, lambda: [sub.clear() for sub in subs] and callbacks


def test_puts_that_complete_when_the_move_ends_are_bounded_by_move_timeout_and_the_axes_travel_together(
        callback_ioc):
    inst = _instrument(timeout=0.5)  # each move takes over 1 s (>= 25 px at 20 px/s), and so does its put
    start = {a: float(callback_ioc(f"{a.upper()}_RBV").read(timeout=3).data[0]) for a in ("x", "y")}
    target = {a: 10.0 if start[a] > 60 else 100.0 for a in ("x", "y")}
    seen, end = _dmov_times(callback_ioc)
    try:
        m = inst.measure(target)
        _wait_until(lambda: all([v for name, v, _ in seen if name == n][-2:] == [0, 1]
                                for n in ("X_DMOV", "Y_DMOV")), 30)  # each has left and arrived
    finally:
        end()
        inst.close()
    for a in ("x", "y"):
        assert abs(m.metadata[f"{a}_readback"] - target[a]) <= TOLERANCE
    left = {n: min(t for name, v, t in seen if name == n and v == 0) for n in ("X_DMOV", "Y_DMOV")}
    arrived = {n: max(t for name, v, t in seen if name == n and v == 1) for n in ("X_DMOV", "Y_DMOV")}
    assert left["Y_DMOV"] < arrived["X_DMOV"] and left["X_DMOV"] < arrived["Y_DMOV"]  # both moved at once


def test_a_trigger_put_that_completes_when_the_acquisition_ends_is_bounded_by_acquire_timeout(callback_ioc):
    inst = _instrument(timeout=0.5)  # the acquisition (and its put) takes 1 s
    here = {a: float(callback_ioc(f"{a.upper()}_RBV").read(timeout=3).data[0]) for a in ("x", "y")}
    counter = callback_ioc("COUNTER").read(timeout=3).data[0]
    try:
        m = inst.measure(here)
    finally:
        inst.close()
    assert m.metrics["total_counts"] > 0 and callback_ioc("COUNTER").read(timeout=3).data[0] == counter + 1


@pytest.mark.parametrize("server", ["ioc", "callback_ioc"])
def test_a_move_past_move_timeout_stops_the_axes_before_it_fails(server, request):
    getter = request.getfixturevalue("client" if server == "ioc" else server)
    inst = _instrument(move_timeout=0.5)
    try:
        x = float(getter("X_RBV").read(timeout=3).data[0])
        target = 10.0 if x > 60 else 110.0  # at 5 px/s, 50 px or more: over 10 s away
        getter("VELO").write([5.0], wait=True, timeout=3)
        stopped = rf"x did not finish moving .*0.5 s.* \(put {PREFIX}STOP to stop x, y\)"
        with pytest.raises(InstrumentError, match=stopped):
            inst.measure({"x": target, "y": 5.0})
        rbv, dmov = (getter(n).read(timeout=3).data[0] for n in ("X_RBV", "X_DMOV"))
        time.sleep(0.3)
        later = getter("X_RBV").read(timeout=3).data[0]
    finally:
        getter("VELO").write([400.0 if server == "ioc" else 20.0], wait=True, timeout=3)
        inst.close()
    assert dmov == 1 and later == rbv and abs(rbv - target) > 20  # at rest, far from the target


def test_an_abort_ends_the_wait_for_a_pv_that_never_connects(ioc):
    inst = _instrument(timeout=60.0, metrics={"peak_ratio": "PEAK_RATIO", "gain": "NO_SUCH_PV"})
    outcome = _interrupted(inst, {"x": 1.0, "y": 1.0}, inst.abort, 60)
    inst.close()
    assert isinstance(outcome["error"], InstrumentTimeout) and outcome["took"] < 30.0  # not the 60 s timeout


def test_close_aborts_the_measurement_stops_the_stage_ends_every_client_thread_and_is_idempotent(client):
    before = set(threading.enumerate())
    inst = _instrument()
    outcome: dict = {}
    try:
        inst.measure({"x": 0.0, "y": 0.0})
        client("VELO").write([1.0], wait=True, timeout=3)  # 30 pixels now take 30 s
        outcome = _interrupted(inst, {"x": 30.0, "y": 0.0}, inst.close, 30)
        inst.close()
        dmov = client("X_DMOV").read(timeout=3).data[0]
    finally:
        client("VELO").write([400.0], wait=True, timeout=3)
        inst.close()
    assert isinstance(outcome["error"], InstrumentTimeout) and dmov == 1
    _wait_until(lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()], 30)


def test_killing_the_ioc_mid_campaign_is_a_retryable_failure_naming_the_pv_and_the_campaign_goes_on(
        ca_env, tmp_path, monkeypatch):
    port = _free_port()  # its own server, which it kills and restarts
    monkeypatch.setenv("EPICS_CA_SERVER_PORT", str(port))
    server = IOC(port, dwell=0.25).start()  # slow enough that the kill lands mid-campaign
    try:
        path = write_campaign(tmp_path, "kill", trials=8, attempts=50, timeout=0.5)
        campaign = Campaign(load_config(path))
        runner = threading.Thread(target=campaign.run)
        runner.start()
        reader = Store(tmp_path / "kill.db")  # its journal is read live; its trials() would be a snapshot
        _wait_until(lambda: any(k == "completed" for _, _, k, _, _, _ in reader.events()), 60)
        server.kill()
        _wait_until(lambda: any(k == "failed" for _, _, k, _, _, _ in reader.events()), 30)
        server.start()
        runner.join(120)
        assert not runner.is_alive()
        failures = [p["error"] for _, _, k, _, _, p in reader.events() if k == "failed"]
        reader.close()
        trials = campaign.store.trials()
        campaign.close()
    finally:
        server.kill()
    assert [t.status for t in trials] == ["completed"] * 8
    assert failures and all(f"PV {PREFIX}" in e and ("disconnected" in e or "did not answer" in e) for e in failures)
    assert max(t.attempts for t in trials) > 1


def test_a_pv_no_server_has_fails_every_trial_naming_it_and_the_run_ends_cleanly(ioc, tmp_path, capsys):
    path = write_campaign(tmp_path, "missing", trials=2, attempts=2, max_failures=2, timeout=0.5,
                          metrics={"peak_ratio": "PEAK_RATIO", "gain": "NO_SUCH_PV"})
    assert main(["run", str(path), "--quiet"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"PV {PREFIX}NO_SUCH_PV is disconnected" in err and "Traceback" not in err
    with Store(tmp_path / "missing.db") as store:
        assert {t.status for t in store.trials()} == {"failed"}


@pytest.mark.parametrize("change, message", [
    ({"parameters": {"x": {"setpoint": "X"}}}, "instrument.parameters: no PV for parameter(s) y"),
    ({"metrics": {"total_counts": "TOTAL_COUNTS"}}, "objectives[0].metric: 'peak_ratio' is not one of instrument.metrics"),
    ({"data": "SPEC TRUM"}, "instrument.data: a PV name must be non-empty text without spaces"),
    ({"parameters": {"x": {"setpoint": "X", "readback": "X_RBV"}, "y": "Y"}},
     "instrument.parameters.x: 'readback' and 'tolerance' go together"),
])
def test_mistakes_in_the_instrument_section_are_one_line_field_errors(tmp_path, capsys, change, message):
    path = write_campaign(tmp_path, "bad", trials=1, **change)
    assert main(["validate", str(path)]) == EXIT_USER
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the campaign"
        time.sleep(0.05)


def test_a_daemon_campaign_runs_through_channel_access_end_to_end(ioc, tmp_path):
    """`aec daemon` against the example IOC: values set and read back, the waveform kept, SIGTERM exits 0."""
    from tests.daemon_helpers import Daemon

    path = write_campaign(tmp_path, "daemon_ca", trials=4)
    data = yaml.safe_load(path.read_text())
    data["daemon"] = {"port": 0}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    daemon = Daemon(str(path), cwd=tmp_path)
    try:
        status = daemon.wait_state("finished", timeout=120)
        assert status["counts"].get("completed") == 4
        trials = daemon.get("/trials").json()["trials"]
        assert [t["status"] for t in trials] == ["completed"] * 4
        assert all(t["data_shape"] == [256] for t in trials)  # the SPECTRUM waveform, stored as the data product
    finally:
        assert daemon.terminate() == 0
    with Store(str(tmp_path / "daemon_ca.db")) as store:
        completed = [p for _, _, kind, _, _, p in store.events() if kind == "completed"]
        for trial, payload in zip(trials, completed):
            for axis in ("x", "y"):
                assert abs(payload["metadata"][f"{axis}_readback"] - trial["params"][axis]) <= TOLERANCE


STOPPING_TRIGGER = {"pv": "ACQUIRE", "value": 1, "done": "ACQUIRE_DONE", "done_value": 1, "stop": "ACQUIRE",
                    "stop_value": 0}


def _counts(getter) -> tuple[int, int, int]:
    """(acquisitions finished, acquisitions stopped, ACQUIRE_DONE) as the IOC serves them."""
    return tuple(int(getter(n).read(timeout=3).data[0]) for n in ("COUNTER", "ABORTED", "ACQUIRE_DONE"))


@pytest.mark.parametrize("server", ["ioc", "callback_ioc"])
def test_an_acquisition_past_acquire_timeout_is_stopped_on_the_ioc_before_it_fails(server, request):
    getter = request.getfixturevalue("client" if server == "ioc" else server)
    inst = _instrument(acquire_timeout=0.5, trigger=STOPPING_TRIGGER)
    here = {a: float(getter(f"{a.upper()}_RBV").read(timeout=3).data[0]) for a in ("x", "y")}
    dwell = float(getter("DWELL").read(timeout=3).data[0])
    finished, stopped, _ = _counts(getter)
    try:
        getter("DWELL").write([30.0], wait=True, timeout=3)  # an acquisition now takes 30 s
        with pytest.raises(InstrumentError, match=rf"0.5 s.*\(put {PREFIX}ACQUIRE=0 to stop the acquisition\)"):
            inst.measure(here)
        after = _counts(getter)
    finally:
        getter("DWELL").write([dwell], wait=True, timeout=3)
        inst.close()
    assert after == (finished, stopped + 1, 1)  # stopped on the IOC: idle again, nothing published


def test_the_watchdog_stops_a_timed_out_acquisition_on_the_ioc(client, tmp_path, capsys):
    """A trial past executor.timeout: the executor's watchdog aborts it, and the abort puts ACQUIRE=0."""
    path = write_campaign(tmp_path, "watchdog", trials=1, attempts=1, max_failures=1, trigger=STOPPING_TRIGGER)
    data = yaml.safe_load(path.read_text())
    data["executor"]["timeout"] = 2.0  # the move (at most 0.4 s at 400 px/s) is over: the acquisition is cut
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    finished, stopped, _ = _counts(client)
    try:
        client("DWELL").write([30.0], wait=True, timeout=3)
        t0 = time.monotonic()
        main(["run", str(path)])
        took = time.monotonic() - t0
        _wait_until(lambda: _counts(client)[1] == stopped + 1, 10)
        after = _counts(client)
    finally:
        client("DWELL").write([0.1], wait=True, timeout=3)
    assert took < 25.0 and after == (finished, stopped + 1, 1)
    with Store(tmp_path / "watchdog.db") as store:
        (trial,) = store.trials()
    assert trial.status == "failed" and "time" in trial.error


def test_an_abort_without_a_trigger_stop_pv_says_the_acquisition_may_still_run(client):
    inst = _instrument(acquire_timeout=0.3)
    here = {a: float(client(f"{a.upper()}_RBV").read(timeout=3).data[0]) for a in ("x", "y")}
    try:
        client("DWELL").write([2.0], wait=True, timeout=3)
        with pytest.raises(InstrumentError, match="the trigger has no stop PV: the acquisition may still run"):
            inst.measure(here)
    finally:
        _wait_until(lambda: _counts(client)[2] == 1, 10)
        client("DWELL").write([0.1], wait=True, timeout=3)
        inst.close()


@pytest.mark.parametrize("workers, single_stage, code", [(2, None, EXIT_USER), (1, None, 0), (2, False, 0)])
def test_an_epics_instrument_is_one_stage_so_more_than_one_worker_is_refused(tmp_path, capsys, workers, single_stage,
                                                                             code):
    changes = {} if single_stage is None else {"single_stage": single_stage}
    path = write_campaign(tmp_path, "stage", trials=1, **changes)
    data = yaml.safe_load(path.read_text())
    data["executor"]["workers"] = workers
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["validate", str(path)]) == code
    err = capsys.readouterr().err
    if code:
        assert err.strip().splitlines() == [f"error: {path}: executor.workers: 2 workers, but the instrument drives one "
                                            "physical stage (instrument.single_stage, true by default: every worker "
                                            "puts the same PVs); two workers would fight over it: use workers: 1"]
        assert main(["run", str(path)]) == EXIT_USER and not (tmp_path / "stage.db").exists()
        assert "executor.workers: 2 workers" in capsys.readouterr().err
