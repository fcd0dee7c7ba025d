"""Instrument adapters: function lookup beside the campaign file, commands, simulators, recorded data."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from controller import Campaign, load_config
from controller.progress import SilentReporter
from instruments.base import InstrumentError, Measurement
from instruments.function import CommandInstrument, FunctionInstrument
from instruments.recorded import RecordedInstrument
from instruments.simulated import SimulatedInstrument


def test_function_module_beside_the_campaign_file_wins(workdir: Path):
    inst = FunctionInstrument("fns:branin", base_dir=workdir)
    m = inst.measure({"x0": 0.5427728, "x1": 0.15})
    assert abs(m.metrics["y"] - 0.397887) < 1e-3


def test_function_errors_name_the_target(workdir: Path):
    with pytest.raises(InstrumentError, match="no function 'nope'"):
        FunctionInstrument("fns:nope", base_dir=workdir)
    with pytest.raises(InstrumentError, match="cannot import module 'missing_mod'"):
        FunctionInstrument("missing_mod:f", base_dir=workdir)
    with pytest.raises(InstrumentError, match="fns:flaky raised RuntimeError"):
        FunctionInstrument("fns:flaky", base_dir=workdir).measure({"x0": 0.9, "x1": 0.0})


def test_measurement_accepts_floats_dicts_with_sem_and_data():
    assert Measurement.from_value(2.5).metrics == {"y": 2.5}
    m = Measurement.from_value({"y": 1, "sem": {"y": 0.1}, "data": [1, 2]})
    assert m.sem == {"y": 0.1} and m.data.tolist() == [1, 2]
    with pytest.raises(InstrumentError, match="expected a number"):
        Measurement.from_value({"y": "high"})


def test_command_output_that_is_not_json_is_not_retryable(tmp_path: Path):
    inst = CommandInstrument([sys.executable, "-c", "print('hello')"], base_dir=tmp_path)
    with pytest.raises(InstrumentError) as info:
        inst.measure({"x": 1})
    assert not info.value.retryable and "no JSON object" in str(info.value)


def test_command_that_cannot_start_is_a_clear_error(tmp_path: Path):
    with pytest.raises(InstrumentError, match="cannot start"):
        CommandInstrument(["./does-not-exist.sh"], base_dir=tmp_path).measure({})


def test_simulator_errors_are_not_retryable():
    with pytest.raises(InstrumentError, match="unknown simulator"):
        SimulatedInstrument("warp-drive")
    inst = SimulatedInstrument("branin", {"noise_std": 0.0})
    assert abs(inst.measure({"x0": np.pi, "x1": 2.275}).metrics["y"] - 0.397887) < 1e-4


def test_recorded_data_set_replays_as_a_pool(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.random(25)
    rows = "\n".join(f"{a},{b},{(a - 0.3) ** 2 + b}" for a, b in zip(x, x[::-1]))
    (tmp_path / "runs.csv").write_text("x0,x1,y\n" + rows + "\n")
    inst = RecordedInstrument("runs.csv", ["x0", "x1"], base_dir=tmp_path)
    assert inst.metric_names == ["y"]
    with pytest.raises(InstrumentError, match="no row"):
        inst.measure({"x0": 2.0, "x1": 2.0})
    (tmp_path / "replay.yaml").write_text(
        "name: replay\nspace: {pool: {file: runs.csv, columns: [x0, x1]}}\n"
        "objectives: [{metric: y}]\ninstrument: {kind: recorded, file: runs.csv}\n"
        f"policy: {{kind: sobol}}\nbudget: {{trials: 25}}\nstore: {tmp_path / 'r.db'}\n"
    )
    c = Campaign(load_config(tmp_path / "replay.yaml"), reporter=SilentReporter())
    s = c.run()
    assert s.completed == 25
    assert np.isclose(s.best["metrics"]["y"], min((a - 0.3) ** 2 + b for a, b in zip(x, x[::-1])))
