"""ophyd and bluesky (issue 14, item 5): ophyd.sim devices named by a factory module, and a real RunEngine."""
from __future__ import annotations

import json
import math
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from controller.cli import EXIT_USER, main
from controller.store import Store
from instruments.base import InstrumentError, InstrumentTimeout
from instruments.ophyd import OphydInstrument

CENTER, SIGMA, IMAX = 0.3, 0.2, 10.0

DEVICES = textwrap.dedent(f'''
    import threading, time
    from ophyd.sim import SynAxis, SynGauss
    from ophyd.status import DeviceStatus

    class Stage(SynAxis):
        """A SynAxis whose slow move stop() halts where it is (its status fails); it records every stop()."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.stops = []
            self.halt = threading.Event()

        def set(self, value):
            if not self.delay:
                return super().set(value)
            status = DeviceStatus(self)
            self.halt.clear()

            def travel():
                if self.halt.wait(self.delay):
                    status.set_exception(RuntimeError("stopped"))
                    return
                self.sim_state.update(setpoint=value, readback=value, readback_ts=time.time())
                status.set_finished()

            threading.Thread(target=travel, daemon=True).start()
            return status

        def stop(self, *, success=False):
            self.stops.append(success)
            self.halt.set()

    def make(delay=0.0):
        motor = Stage(name="motor", delay=delay)
        det = SynGauss("det", motor, "motor", center={CENTER}, Imax={IMAX}, sigma={SIGMA})
        return {{"motor": motor, "det": det}}
''')

SUBSCRIBER = textwrap.dedent('''
    import json, os

    def record(name, doc):
        with open(os.environ["AEC_TEST_DOCUMENTS"], "a") as fh:
            fh.write(json.dumps([name, doc], default=str) + "\\n")
''')


def gaussian(x: float) -> float:
    return IMAX * math.exp(-((x - CENTER) ** 2) / (2 * SIGMA**2))


@pytest.fixture
def beamline(tmp_path: Path, monkeypatch) -> Path:
    """A folder with the device factory and a document subscriber that appends to documents.jsonl."""
    (tmp_path / "beamline_devices.py").write_text(DEVICES)
    (tmp_path / "doc_sink.py").write_text(SUBSCRIBER)
    monkeypatch.setenv("AEC_TEST_DOCUMENTS", str(tmp_path / "documents.jsonl"))
    return tmp_path


def instrument_spec(**changes) -> dict:
    spec = {"kind": "ophyd", "devices": "beamline_devices:make", "options": {}, "parameters": {"x": "motor"},
            "metrics": {"y": {"device": "det"}}, "timeout": 5.0, "mode": "direct"}
    spec.update(changes)
    return spec


def write_campaign(folder: Path, name: str, trials: int = 5, **instrument) -> Path:
    data = {
        "name": name, "seed": 11,
        "space": {"parameters": [{"name": "x", "type": "real", "low": -1.0, "high": 1.0}]},
        "objectives": [{"metric": "y", "goal": "maximize"}],
        "instrument": instrument_spec(**instrument),
        "policy": {"kind": "sobol"},
        "budget": {"trials": trials},
        "store": str(folder / f"{name}.db"),
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def documents(folder: Path) -> list[tuple[str, dict]]:
    path = folder / "documents.jsonl"
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


def completed(folder: Path, name: str) -> list[dict]:
    with Store(folder / f"{name}.db") as store:
        return [{"id": r.id, "params": r.params, "metrics": r.metrics, "reason": r.reason}
                for r in store.trials() if r.status == "completed"]


def in_worker_thread(fn):
    """Run `fn` in another thread, as the executors do; its result or exception comes back."""
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_campaign_moves_the_movable_before_reading_the_readable(beamline, capsys):
    path = write_campaign(beamline, "direct")
    assert main(["run", str(path), "--quiet"]) == 0
    trials = completed(beamline, "direct")
    assert len(trials) == 5
    for t in trials:  # SynGauss computes from the motor's position at trigger time: it must already be there
        assert t["metrics"]["y"] == pytest.approx(gaussian(t["params"]["x"]), rel=1e-9, abs=1e-12)


def test_bluesky_mode_puts_the_trial_id_and_reason_in_the_start_document(beamline):
    inst = OphydInstrument(instrument_spec(mode="bluesky", subscribers=["doc_sink:record"], metadata={"beamline": "t"}),
                           base_dir=beamline, parameter_names=["x"])
    reason = {"policy": "botorch", "acquisition": "qlognei"}
    m = in_worker_thread(lambda: inst.measure({"x": 0.1}, context={"trial_id": 12, "attempt": 2, "reason": reason}))
    docs = documents(beamline)
    assert [name for name, _ in docs] == ["start", "descriptor", "event", "stop"]
    start, event, stop = docs[0][1], docs[2][1], docs[3][1]
    assert start["aec_trial_id"] == 12 and start["aec_attempt"] == 2 and start["aec_reason"] == reason
    assert start["aec_params"] == {"x": 0.1} and start["beamline"] == "t" and start["plan_name"] == "aec_measure"
    assert event["data"]["det"] == m.metrics["y"] == pytest.approx(gaussian(0.1))
    assert event["data"]["motor"] == pytest.approx(0.1) and stop["exit_status"] == "success"


def test_a_bluesky_mode_campaign_is_one_run_per_trial_for_the_subscribers(beamline, capsys):
    path = write_campaign(beamline, "bluesky", trials=4, mode="bluesky", subscribers=["doc_sink:record"])
    assert main(["run", str(path), "--quiet"]) == 0
    trials = completed(beamline, "bluesky")
    starts = [d for name, d in documents(beamline) if name == "start"]
    events = [d for name, d in documents(beamline) if name == "event"]
    assert len(trials) == len(starts) == len(events) == 4
    for t, start, event in zip(trials, starts, events):
        assert start["aec_params"] == t["params"] and event["data"]["det"] == pytest.approx(t["metrics"]["y"])
        assert start["aec_trial_id"] == t["id"] and start["aec_attempt"] == 1  # the campaign passes its trial's context
        assert start["aec_reason"] == t["reason"]


@pytest.mark.parametrize("mode", ["direct", "bluesky"])
def test_a_move_past_the_timeout_is_retryable_stops_the_motor_and_abort_ends_a_slow_one(beamline, mode):
    slow = instrument_spec(options={"delay": 60.0}, mode=mode, timeout=0.3)  # a move takes 60 s unless stopped
    inst = OphydInstrument(slow, base_dir=beamline, parameter_names=["x"])
    motor = inst.movables["x"]
    t0 = time.monotonic()
    with pytest.raises(InstrumentError) as info:
        in_worker_thread(lambda: inst.measure({"x": 0.5}))
    assert info.value.retryable and time.monotonic() - t0 < 30.0
    assert "moving x" in str(info.value) and "did not finish within 0.3 s" in str(info.value)
    assert motor.stops and motor.halt.is_set() and motor.position == 0.0  # stopped before the trial failed
    inst.close()

    inst = OphydInstrument({**slow, "timeout": 600.0}, base_dir=beamline, parameter_names=["x"])
    timer = threading.Timer(0.3, inst.abort)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeout, match="aborted"):
        in_worker_thread(lambda: inst.measure({"x": -0.5}))
    assert time.monotonic() - t0 < 30.0 and inst.movables["x"].stops
    inst.close()


@pytest.mark.parametrize("mode", ["direct", "bluesky"])
def test_close_aborts_a_measurement_ends_the_run_engine_thread_and_is_idempotent(beamline, mode):
    inst = OphydInstrument(instrument_spec(mode=mode), base_dir=beamline, parameter_names=["x"])
    before = set(threading.enumerate())  # after the devices are made: ophyd's own control-layer threads are not ours
    assert in_worker_thread(lambda: inst.measure({"x": 0.2})).metrics["y"] == pytest.approx(gaussian(0.2))
    inst.movables["x"].delay = 60.0
    timer = threading.Timer(0.3, inst.close)
    timer.start()
    with pytest.raises(InstrumentTimeout, match="aborted"):
        in_worker_thread(lambda: inst.measure({"x": -0.5}))
    timer.join()
    inst.close()
    assert inst.movables["x"].stops
    deadline = time.monotonic() + 30
    while [t for t in threading.enumerate() if t not in before and t.is_alive()]:
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate() if t not in before]
        time.sleep(0.05)


@pytest.mark.parametrize("change, message", [
    ({"devices": "no_such_module:make"}, "instrument.devices: cannot import module 'no_such_module'"),
    ({"devices": "beamline_devices:nothing"}, "instrument.devices: module 'beamline_devices' has no function 'nothing'"),
    ({"parameters": {"x": "det"}}, "instrument.parameters.x: device 'det' (SynGauss) is not Movable"),
    ({"metrics": {"y": "camera"}}, "instrument.metrics.y: the factory made no device 'camera'; it made det, motor"),
    ({"subscribers": ["doc_sink:record"]}, "instrument: 'subscribers' and 'metadata' need 'mode: bluesky'"),
])
def test_mistakes_in_the_instrument_section_are_one_line_field_errors(beamline, capsys, change, message):
    path = write_campaign(beamline, "bad", **change)
    assert main(["validate", str(path)]) == EXIT_USER
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
