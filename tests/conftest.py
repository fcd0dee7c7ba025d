"""Shared fixtures: small campaign files and instrument modules written into a temporary folder."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

INSTRUMENTS = textwrap.dedent('''
    import math, os, time

    def branin(p):
        x1, x2 = 15 * p["x0"] - 5, 15 * p["x1"]
        return {"y": (x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
                + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10}

    def flaky(p):
        if p["x0"] > 0.7:
            raise RuntimeError("stage did not reach x0=%.3f" % p["x0"])
        return branin(p)

    def hangs(p):
        if p["x0"] > 0.8:
            time.sleep(30)
        return branin(p)

    def with_data(p):
        import numpy as np
        return {"y": p["x0"], "data": np.full(8, p["x0"])}

    def slow(p):
        time.sleep(float(os.environ.get("AEC_TEST_SLEEP", "0.05")))
        return branin(p)

    def slow_spectrum(p):
        import numpy as np
        time.sleep(float(os.environ.get("AEC_TEST_SLEEP", "0.05")))
        channels = np.linspace(0.0, 1.0, 32)
        line = np.exp(-0.5 * ((channels - p["x0"]) / 0.05) ** 2) * (3.0 if p["x1"] > 0.9 else 1.0)
        return {**branin(p), "data": (line + 0.01 * np.sin(40 * p["x1"] * channels)).astype(np.float32)}

    def odd_shape(p):
        import numpy as np
        n = 9 if p["x0"] > 0.8 else 8
        return {**branin(p), "data": np.sin(np.arange(n) * (1 + p["x1"])).astype(np.float32)}

    def wrong_metric(p):
        return {"z": 1.0}
''')


# Strict: a policy that would fall back (to Sobol points, a jittered model, the CPU) raises, so an
# exception inside a policy fails its test instead of passing as Sobol. Subprocesses inherit it.
os.environ["AEC_STRICT"] = "1"


def campaign_dict(name: str = "t", target: str = "fns:branin", trials: int = 8, **extra) -> dict:
    data = {
        "name": name,
        "seed": 3,
        "space": {"parameters": [
            {"name": "x0", "type": "real", "low": 0.0, "high": 1.0},
            {"name": "x1", "type": "real", "low": 0.0, "high": 1.0},
        ]},
        "objectives": [{"metric": "y", "goal": "minimize"}],
        "instrument": {"kind": "function", "target": target},
        "policy": {"kind": "sobol"},
        "budget": {"trials": trials},
    }
    data.update(extra)
    return data


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "fns.py").write_text(INSTRUMENTS)
    return tmp_path


@pytest.fixture
def write_campaign(workdir: Path):
    def write(name: str = "t", **kwargs) -> Path:
        data = campaign_dict(name, **kwargs)
        data.setdefault("store", str(workdir / f"{name}.db"))
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
