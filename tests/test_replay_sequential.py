"""`aec replay` of a sequential simulator (the telescope): fraction of the maximum achievable reward per step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import yaml
from pydantic import BaseModel, ConfigDict

import policies
from controller.cli import main
from controller.replay.sequential import fraction_curve
from policies.base import History, Problem, Proposal
from simulators.telescope import TelescopeSimulator
from simulators.telescope.batch import NightBatch

SKY = {"site": "cerro_pachon", "date": "2025-03-20", "nights": 1, "n_transients": 200, "exposure": 300.0,
       "catalogue": {"spacing": 12.0, "ra_min": 40.0, "ra_max": 220.0, "dec_min": -80.0, "dec_max": 10.0},
       "seed": 5, "images": False}


class OraclePolicy:
    """Always the allowed field with the highest reward now: the night stepped through the history exactly."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        kind: Literal["oracle"] = "oracle"

    def __init__(self, problem: Problem, options=None):
        self.pool = problem.space.pool

    def propose(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        batch = NightBatch(TelescopeSimulator(**SKY), [0])
        for o in history.completed():
            batch.step(torch.tensor([int(o.pool_index)]))
        preview = batch.preview()[0]
        if not bool(torch.isfinite(preview).any()):
            return []
        row = int(preview.argmax())
        return [Proposal(x=self.pool[row], pool_index=row, reason={"policy": "oracle"})]


def test_fraction_curve_by_hand():
    assert fraction_curve([1.0, 0.0, 2.0], [2.0, 0.0, 2.0]).tolist() == [0.5, 0.5, 0.75]
    assert fraction_curve([0.0, 1.0, 1.0], [0.0, 2.0, 1.0]).tolist() == [1.0, 0.5, 2 / 3]  # nothing achievable: 1


@pytest.fixture
def oracle(monkeypatch):
    monkeypatch.setitem(policies.POLICY_KINDS, "oracle", f"{__name__}:OraclePolicy")


def _campaign(tmp_path: Path) -> Path:
    cfg = {"name": "tiny-night", "seed": 5, "space": {"pool": {"simulator": True, "columns": ["ra", "dec"]}},
           "objectives": [{"metric": "reward", "goal": "maximize"}],
           "instrument": {"kind": "simulator", "name": "telescope", "options": SKY},
           "policy": {"kind": "random"}, "budget": {"trials": 6}, "store": str(tmp_path / "night.db")}
    path = tmp_path / "night.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_replay_of_a_telescope_campaign_reports_the_reward_fraction(tmp_path, oracle, capsys):
    out = tmp_path / "rep"
    replay = {"name": "tiny", "campaigns": [{"file": str(_campaign(tmp_path))}], "policies": ["oracle", "random"],
              "seeds": 2, "budget": 6}
    (tmp_path / "replay.yaml").write_text(yaml.safe_dump(replay))
    assert main(["replay", str(tmp_path / "replay.yaml"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "reward fraction" in table
    res = json.loads((out / "results.json").read_text())
    prob = res["problems"]["tiny-night"]
    orc, rnd = prob["policies"]["oracle"], prob["policies"]["random"]
    assert orc["runs"] == 2 and len(orc["reward_fraction_mean"]) == 6
    for key in ("reward_fraction_mean", "reward_fraction_median", "reward_fraction_q25", "reward_fraction_q75"):
        assert orc[key] == pytest.approx([1.0] * 6, abs=1e-9), key  # the best allowed field at every step
    assert orc["reward_fraction_at_budget"] == pytest.approx(1.0) and orc["reward_fraction_mismatched"] == 0
    assert rnd["reward_fraction_mismatched"] == 0  # the recorded rewards are what the simulator gives
    frac = np.array(rnd["reward_fraction_mean"])
    assert len(frac) >= 1 and (frac <= 1.0 + 1e-9).all() and (frac >= 0).all() and frac[-1] < 1.0
    assert not [n for n in prob["notes"] if "reward fraction" in n]
    # the report: a curve and a column
    assert main(["report", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert "fraction of the maximum achievable reward per step" in html
    assert (out / "figures" / "tiny-night.reward_fraction.png").stat().st_size > 1000


def test_non_sequential_problems_have_no_reward_fraction(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("x,y\n" + "".join(f"{i},{(i * 7) % 11}\n" for i in range(12)))
    out = tmp_path / "rep"
    assert main(["replay", "--data", str(csv), "--inputs", "x", "--objective", "y", "--policies", "random",
                 "--seeds", "1", "--budget", "4", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert "reward_fraction_mean" not in res["policies"]["random"]


def _two_nights(tmp_path: Path, **sky) -> dict:
    """Long exposures over two nights: a greedy campaign of 14 measurements crosses into the second night."""
    opts = {**SKY, "nights": 2, "exposure": 3000.0, **sky}
    return {"name": "two-nights", "seed": 5, "space": {"pool": {"simulator": True, "columns": ["ra", "dec"]}},
            "objectives": [{"metric": "reward", "goal": "maximize"}],
            "instrument": {"kind": "simulator", "name": "telescope", "options": opts},
            "policy": {"kind": "greedy", "simulator": opts}, "budget": {"trials": 14},
            "store": str(tmp_path / "two.db")}


def test_a_campaign_across_nights_is_followed_exactly_and_a_different_sky_is_reported(tmp_path):
    from controller.campaign import Campaign
    from controller.config import validate_config
    from controller.replay.sequential import run_reward_fraction

    cfg = _two_nights(tmp_path)
    Campaign(validate_config(cfg, base_dir=tmp_path, source="test")).run()
    out = run_reward_fraction(tmp_path / "two.db", cfg)
    assert len(out["rewards"]) == 14 and out["mismatched"] == 0  # every step reproduced, the second night too
    assert (out["best"] >= out["rewards"] - 1e-9).all() and 0 < out["fraction"][-1] <= 1.0
    assert out["fraction"][-1] == pytest.approx(out["rewards"].sum() / out["best"].sum())
    other = {**cfg, "instrument": {**cfg["instrument"], "options": {**cfg["instrument"]["options"], "seed": 6}}}
    assert run_reward_fraction(tmp_path / "two.db", other)["mismatched"] > 0  # other weather: counted, not hidden


def test_a_telescope_with_exposure_range_says_why_it_has_no_reward_fraction(tmp_path):
    cfg = _two_nights(tmp_path, exposure_range=[60.0, 600.0])
    cfg["policy"] = {"kind": "random"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "rep"
    assert main(["replay", "--policies", "random", "--seeds", "1", "--budget", "2", "--out", str(out), "--quiet",
                 str(_replay_file(tmp_path, tmp_path / "c.yaml"))]) == 0
    res = json.loads((out / "results.json").read_text())
    prob = res["problems"]["two-nights"]
    assert "reward_fraction_mean" not in prob["policies"]["random"]
    assert any("no reward fraction per step" in n and "exposure_range" in n for n in prob["notes"])


def _replay_file(tmp_path: Path, campaign: Path) -> Path:
    path = tmp_path / "replay.yaml"
    path.write_text(yaml.safe_dump({"campaigns": [{"file": str(campaign)}]}))
    return path


def test_the_telescope_replay_example_reports_the_reward_fraction(tmp_path):
    example = Path(__file__).parent.parent / "examples" / "replay_telescope.yaml"
    out = tmp_path / "r"
    assert main(["replay", str(example), "--seeds", "1", "--budget", "4", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["policies"]) == {"random", "sobol", "greedy"}
    for r in res["policies"].values():
        assert r["finished"] == 1 and r["reward_fraction_mismatched"] == 0
        assert 0.0 <= r["reward_fraction_at_budget"] <= 1.0
    assert not res["problems"]["telescope-night"]["notes"]
