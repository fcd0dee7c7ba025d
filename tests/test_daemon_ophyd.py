"""What a daemon on a beamline needs from the ophyd adapter (issue 14): a timed-out acquisition is stopped on
the detector, and an instrument with one physical stage runs with one worker (ophyd.sim devices, a real
RunEngine; an EpicsMotor with no IOC behind it, as `aec validate` meets one)."""
from __future__ import annotations

import os
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parent.parent

DEVICES = textwrap.dedent('''
    import threading
    from pathlib import Path
    from ophyd.sim import SynAxis, SynGauss
    from ophyd.status import DeviceStatus

    class Camera(SynGauss):
        """A SynGauss whose trigger takes `exposure` s unless stop() ends it (its status fails); it records each
        stop(), also in stops.log beside this module (a campaign's devices live in its workers)."""

        def __init__(self, *args, exposure=0.0, **kwargs):
            self.exposure, self.stops, self.halt = 0.0, [], threading.Event()  # SynGauss's __init__ triggers once
            super().__init__(*args, **kwargs)
            self.exposure = exposure

        def trigger(self):
            status = DeviceStatus(self)
            self.halt.clear()

            def expose():
                if self.halt.wait(self.exposure):
                    status.set_exception(RuntimeError("exposure stopped"))
                    return
                SynGauss.trigger(self).wait(5)
                status.set_finished()

            threading.Thread(target=expose, daemon=True).start()
            return status

        def stop(self, *, success=False):
            self.stops.append(success)
            self.halt.set()
            with open(Path(__file__).parent / "stops.log", "a") as fh:
                fh.write(f"{self.name} {success}\\n")

    def make(exposure=0.0):
        motor = SynAxis(name="motor")
        return {"motor": motor, "cam": Camera("cam", motor, "motor", center=0.0, Imax=1.0, sigma=1.0, exposure=exposure)}

    def epics_motor():
        from ophyd import EpicsMotor
        from ophyd.sim import SynSignal

        return {"motor": EpicsMotor("AEC:TEST:NO_IOC:m1", name="motor"), "cam": SynSignal(lambda: 1.0, name="cam")}
''')


@pytest.fixture
def beamline(tmp_path: Path) -> Path:
    (tmp_path / "stage_devices.py").write_text(DEVICES)
    return tmp_path


def spec(**changes) -> dict:
    out = {"kind": "ophyd", "devices": "stage_devices:make", "options": {}, "parameters": {"x": "motor"},
           "metrics": {"y": {"device": "cam", "field": "cam"}}, "timeout": 5.0, "mode": "direct"}
    out.update(changes)
    return out


def write_campaign(folder: Path, name: str, workers: int = 1, **instrument) -> Path:
    data = {"name": name, "seed": 3,
            "space": {"parameters": [{"name": "x", "type": "real", "low": -1.0, "high": 1.0}]},
            "objectives": [{"metric": "y", "goal": "maximize"}], "instrument": spec(**instrument),
            "policy": {"kind": "sobol"}, "executor": {"workers": workers, "attempts": 1},
            "budget": {"trials": 2, "max_failures": 2}, "store": str(folder / f"{name}.db")}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def measure_in_thread(inst: OphydInstrument, params: dict, interrupt=None) -> BaseException | None:
    """Measure in a worker thread (as the executors do), calling `interrupt()` 0.3 s in; the error raised, if any."""
    out: dict = {}

    def body():
        try:
            inst.measure(params)
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    worker = threading.Thread(target=body)
    worker.start()
    if interrupt is not None:
        time.sleep(0.3)
        interrupt()
    worker.join(30)
    assert not worker.is_alive(), "the measurement did not end"
    return out.get("error")


def test_a_trigger_past_the_timeout_stops_the_detector_before_the_trial_fails(beamline):
    inst = OphydInstrument(spec(options={"exposure": 60.0}, timeout=0.3), base_dir=beamline, parameter_names=["x"])
    t0 = time.monotonic()
    error = measure_in_thread(inst, {"x": 0.1})
    inst.close()
    assert isinstance(error, InstrumentError) and error.retryable and time.monotonic() - t0 < 20
    assert "triggering cam did not finish within 0.3 s (stopped cam)" in str(error)
    cam = inst.metrics["y"].device
    assert cam.stops and cam.stops[0] is False and cam.halt.is_set()  # (ophyd stop()s it again as its status fails)


@pytest.mark.parametrize("mode", ["direct", "bluesky"])
def test_an_abort_during_an_exposure_stops_the_detector(beamline, mode):
    inst = OphydInstrument(spec(options={"exposure": 60.0}, timeout=600.0, mode=mode), base_dir=beamline,
                           parameter_names=["x"])
    cam = inst.metrics["y"].device
    t0 = time.monotonic()
    error = measure_in_thread(inst, {"x": 0.1}, interrupt=inst.abort)
    took = time.monotonic() - t0
    inst.close()
    assert isinstance(error, InstrumentTimeout) and took < 20 and cam.stops and cam.halt.is_set()


def test_the_watchdog_of_a_campaign_stops_the_exposure_it_times_out(beamline, capsys):
    path = write_campaign(beamline, "watchdog", options={"exposure": 60.0}, timeout=600.0)
    data = yaml.safe_load(path.read_text())
    data["executor"]["timeout"] = 0.5
    data["budget"] = {"trials": 1, "max_failures": 1}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    t0 = time.monotonic()
    main(["run", str(path), "--quiet"])
    assert time.monotonic() - t0 < 30  # a 60 s exposure, cut at 0.5 s
    with Store(beamline / "watchdog.db") as store:
        (trial,) = store.trials()
    assert trial.status == "failed" and "time" in trial.error
    assert "cam False" in (beamline / "stops.log").read_text().splitlines()  # the abort stop()ped the camera


@pytest.mark.parametrize("workers, changes, code", [
    (2, {}, 0),                         # ophyd.sim devices: each worker has its own
    (2, {"single_stage": True}, EXIT_USER),
    (1, {"single_stage": True}, 0),
])
def test_single_stage_ophyd_instruments_refuse_a_second_worker(beamline, capsys, workers, changes, code):
    path = write_campaign(beamline, "stage", workers=workers, **changes)
    assert main(["validate", str(path)]) == code
    err = capsys.readouterr().err
    if code:
        assert err.strip().splitlines() == [
            f"error: {path}: executor.workers: 2 workers, but the instrument drives one physical stage "
            "(instrument.single_stage: true); two workers would fight over it: use workers: 1"]
        assert main(["run", str(path)]) == EXIT_USER and not (beamline / "stage.db").exists()


def test_an_epics_motor_parameter_makes_the_instrument_one_stage_unless_told_otherwise(beamline):
    """Run in a subprocess: the EpicsMotor starts ophyd's Channel Access client, which stays for the process."""
    def validate(**changes) -> subprocess.CompletedProcess:
        path = write_campaign(beamline, "motor", workers=2, devices="stage_devices:epics_motor",
                              metrics={"y": {"device": "cam", "field": "cam"}}, **changes)
        return subprocess.run([sys.executable, "-m", "controller.cli", "validate", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "EPICS_CA_ADDR_LIST": "127.0.0.1", "EPICS_CA_AUTO_ADDR_LIST": "NO"})

    refused = validate()
    assert refused.returncode == EXIT_USER and "Traceback" not in refused.stderr
    assert refused.stderr.strip().endswith("executor.workers: 2 workers, but the instrument drives one physical stage "
                                           "(a parameter's device is EPICS-backed, so every worker drives the same "
                                           "hardware; instrument.single_stage: false if it is not); two workers would "
                                           "fight over it: use workers: 1")
    assert validate(single_stage=False).returncode == 0
