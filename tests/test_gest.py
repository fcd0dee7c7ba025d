"""gest-api both ways: aec's policies behind suggest/ingest, and gest-api generators driving aec campaigns."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from gest_api import Generator
from gest_api.vocs import VOCS, ContinuousVariable

from controller.campaign import Campaign
from controller.cli import main
from controller.progress import SilentReporter
from controller.store import Store
from policies.gest import AecGenerator

BRANIN_MIN = 0.397887


def branin(x1: float, x2: float) -> float:
    return ((x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


BRANIN_VOCS = dict(variables={"x1": [-5.0, 10.0], "x2": [0.0, 15.0]}, objectives={"f": "MINIMIZE"})


class LocalSearch(Generator):
    """A real, if simple, gest-api generator: random points, then Gaussian steps around the best result ingested."""

    returns_id = True

    def __init__(self, vocs: VOCS, seed: int = 0, initial: int = 4, step: float = 0.1):
        super().__init__(vocs)
        self.vocs, self.rng, self.initial, self.step = vocs, random.Random(seed), initial, step
        self.objective = next(iter(vocs.objectives))
        self.sign = 1.0 if type(vocs.objectives[self.objective]).__name__ == "MinimizeObjective" else -1.0
        self.outstanding: set[int] = set()
        self.ingested: list[dict] = []
        self.best: dict | None = None
        self._next = 0

    def _validate_vocs(self, vocs: VOCS) -> None:
        if len(vocs.objectives) != 1:
            raise ValueError("LocalSearch optimises exactly one objective")
        for name, var in vocs.variables.items():
            if not isinstance(var, ContinuousVariable):
                raise ValueError(f"LocalSearch only supports continuous variables ({name!r} is not)")

    def _point(self) -> dict:
        point = {}
        for name, var in self.vocs.variables.items():
            lo, hi = var.domain
            if self.best is None or len(self.ingested) < self.initial:
                point[name] = self.rng.uniform(lo, hi)
            else:
                point[name] = min(hi, max(lo, self.rng.gauss(self.best[name], self.step * (hi - lo))))
        return point

    def suggest(self, num_points: int | None = None) -> list[dict]:
        points = []
        for _ in range(num_points or 1):
            points.append({**self._point(), "_id": self._next})
            self.outstanding.add(self._next)
            self._next += 1
        return points

    def ingest(self, results: list[dict]) -> None:
        for r in results:
            if "_id" in r and r["_id"] not in self.outstanding:
                raise ValueError(f"unknown _id {r['_id']!r}")
        for r in results:
            self.outstanding.discard(r.get("_id"))
            self.ingested.append(dict(r))
            value = r[self.objective]
            if math.isfinite(value) and (self.best is None or self.sign * value < self.sign * self.best[self.objective]):
                self.best = dict(r)


class OffTheMap(LocalSearch):
    """A broken generator: its second batch leaves the VOCS's domain."""

    def suggest(self, num_points: int | None = None) -> list[dict]:
        points = super().suggest(num_points)
        if self._next > 4:
            points[0]["x1"] = 2.5
        return points


# ----------------------------------------------------------------------------- aec's policy as a gest-api generator
def test_aec_botorch_generator_driven_by_a_suggest_ingest_loop_finds_the_branin_basin():
    gen = AecGenerator(VOCS(**BRANIN_VOCS, constants={"alpha": 0.5}), "botorch", {"initial": 6}, seed=3)
    assert isinstance(gen, Generator) and gen.returns_id
    ids = []
    for size in [3, 3] + [1] * 16:  # as Xopt's step() does: suggest, evaluate, ingest
        points = gen.suggest(size)
        assert len(points) == size
        for p in points:
            assert -5.0 <= p["x1"] <= 10.0 and 0.0 <= p["x2"] <= 15.0 and p["alpha"] == 0.5
            p["f"] = branin(p["x1"], p["x2"])
        ids += [p["_id"] for p in points]
        gen.ingest(points)
    assert ids == list(range(22))  # stable: one per suggestion, in order, never reused
    values = [o.metrics["f"] for o in gen.history.completed()]
    assert len(values) == 22
    # 16 BoTorch steps on Branin (three global minima of 0.398, range ~0.4-300): well inside a basin,
    # where the best of the six-point Sobol design is not.
    assert min(values) < 1.5
    assert min(values[6:]) < min(values[:6])


def test_asynchronous_callers_never_get_a_pending_point_again_and_results_may_come_back_out_of_order():
    gen = AecGenerator(VOCS(**BRANIN_VOCS), "botorch", {"initial": 4}, seed=5)
    outstanding = gen.suggest(3)
    seen = [(p["x1"], p["x2"]) for p in outstanding]
    for _ in range(8):  # as libEnsemble does: ingest whichever finished, ask for one more
        done = outstanding.pop(0 if len(seen) % 2 else -1)
        gen.ingest([{**done, "f": branin(done["x1"], done["x2"])}])
        new = gen.suggest(1)[0]
        assert all(abs(new["x1"] - a) + abs(new["x2"] - b) > 1e-6 for a, b in seen)
        seen.append((new["x1"], new["x2"]))
        outstanding.append(new)
    assert len(gen.history) == 8 and sorted(gen.pending) == sorted(p["_id"] for p in outstanding)


def test_ingest_refuses_unknown_or_repeated_ids_and_changes_nothing_then():
    gen = AecGenerator(VOCS(**BRANIN_VOCS), "sobol", seed=1)
    points = gen.suggest(2)
    with pytest.raises(ValueError, match="_id 99"):
        gen.ingest([{**points[0], "f": 1.0}, {**points[1], "_id": 99, "f": 2.0}])
    with pytest.raises(ValueError, match="already ingested"):
        gen.ingest([{**points[0], "f": 1.0}, {**points[0], "f": 1.0}])
    assert len(gen.history) == 0 and len(gen.pending) == 2
    gen.ingest([{**points[0], "f": 1.0}])
    with pytest.raises(ValueError, match="already ingested"):
        gen.ingest([{**points[0], "f": 1.0}])


def test_results_without_id_join_the_history_and_bad_ones_are_refused_or_failed():
    gen = AecGenerator(VOCS(**BRANIN_VOCS), "sobol", seed=1)
    gen.ingest([{"x1": 0.0, "x2": 5.0, "f": 17.5}])  # data from elsewhere: no _id
    with pytest.raises(ValueError, match="x2"):
        gen.ingest([{"x1": 0.0, "x2": 20.0, "f": 1.0}])
    point = gen.suggest(1)[0]
    assert point["_id"] == 1  # the external point took id 0
    gen.ingest([{**point, "f": float("nan")}])
    statuses = [(o.trial_id, o.status) for o in gen.history.observations]
    assert statuses == [(0, "completed"), (1, "failed")]
    assert np.allclose(gen.history.observations[0].x, [1 / 3, 1 / 3])


def test_discrete_variables_and_constants_round_trip_through_the_unit_cube():
    vocs = VOCS(variables={"material": {"si", "diamond", "gaas"}, "layers": {3, 5, 8}, "t": [10.0, 20.0]},
                objectives={"cost": "MAXIMIZE"}, constraints={"eff": ["GREATER_THAN", 0.9]}, constants={"tag": "run7"})
    gen = AecGenerator(vocs, "random", seed=2)
    points = gen.suggest(12)
    assert {p["material"] for p in points} <= {"si", "diamond", "gaas"} and {p["layers"] for p in points} <= {3, 5, 8}
    assert all(p["tag"] == "run7" and 10.0 <= p["t"] <= 20.0 for p in points)
    assert len({p["material"] for p in points}) > 1 and len({p["layers"] for p in points}) > 1
    gen.ingest([{**p, "cost": 1.0, "eff": 0.95} for p in points])
    encoded = [gen.codec.encode(p) for p in points]
    assert all(np.allclose(e, o.x) for e, o in zip(encoded, gen.history.observations))
    assert [c.op for c in gen.codec.problem.constraints] == [">="] and gen.codec.problem.objectives[0].maximize


@pytest.mark.parametrize("vocs, words", [
    (dict(variables={"x": "CONTEXTUAL"}, objectives={"f": "MINIMIZE"}), "contextual"),
    (dict(variables={"x": [0.0, 1.0]}, objectives={"f": "EXPLORE"}), "MINIMIZE or MAXIMIZE"),
    (dict(variables={"x": [0.0, 1.0]}), "at least one objective"),
])
def test_a_vocs_the_policies_cannot_take_is_refused_at_construction(vocs, words):
    with pytest.raises(ValueError, match=words):
        AecGenerator(VOCS(**vocs), "botorch")


# ----------------------------------------------------------------------------- gest-api generators driving aec
def _campaign(folder: Path, policy: dict, trials: int = 12, **extra) -> Path:
    data = {
        "name": "gest", "seed": 4,
        "objectives": [{"metric": "y", "goal": "minimize"}],
        "instrument": {"kind": "simulator", "name": "branin"},
        "policy": policy,
        "executor": {"kind": "local", "workers": 2},
        "budget": {"trials": trials},
        "store": str(folder / "gest.db"),
        **extra,
    }
    path = folder / "gest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


LOCAL_SEARCH = {"kind": "gest", "generator": "tests.test_gest:LocalSearch", "seed_argument": "seed",
                "options": {"initial": 6, "step": 0.08}}


def test_aec_run_drives_a_gest_generator_and_resume_rebuilds_it_from_the_history(tmp_path, capsys):
    path = _campaign(tmp_path, LOCAL_SEARCH, trials=16)
    assert main(["validate", str(path), "--quiet"]) == 0
    assert main(["run", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == 16 and summary["fallbacks"]["count"] == 0
    with Store(tmp_path / "gest.db") as store:
        recs = store.trials()
    assert sorted(r.reason["gest_id"] for r in recs) == list(range(16))  # one generator point per trial
    assert all(r.reason["generator"] == "tests.test_gest:LocalSearch" for r in recs)

    resumed = Campaign.resume(tmp_path / "gest.db", trials=24, reporter=SilentReporter())
    try:
        resumed.run()
        gen = resumed.policy.generator
        recs = resumed.store.trials()
    finally:
        resumed.store.close()
    assert len(recs) == 24 and all(r.status == "completed" for r in recs)
    fed_back = [r for r in gen.ingested if "_id" not in r]
    assert len(fed_back) == 16  # the rebuilt generator got the whole history, without ids it never gave out
    by_id = {r["_id"]: r for r in gen.ingested if "_id" in r}
    new = [r for r in recs if r.id > 16]
    for r in new:  # results came back under the _id the generator gave each point, with the measured value
        if r.reason["gest_id"] in by_id:
            assert by_id[r.reason["gest_id"]]["y"] == pytest.approx(r.metrics["y"])
            assert by_id[r.reason["gest_id"]]["x0"] == pytest.approx(r.x[0])
    assert len(by_id) >= len(new) - 2  # all but those still in flight when the budget ran out
    best_random = min(r["y"] for r in gen.ingested[:6])
    assert min(r.metrics["y"] for r in recs) <= best_random


@pytest.mark.parametrize("failed", ["nan", "skip"])
def test_failed_trials_reach_the_generator_as_nan_or_not_at_all(workdir, failed):
    from controller import parse_config
    from tests.conftest import campaign_dict

    policy = {**LOCAL_SEARCH, "failed": failed, "options": {"initial": 4}}
    data = campaign_dict(target="fns:flaky", trials=12, policy=policy, store=str(workdir / "f.db"),
                         executor={"kind": "local", "workers": 1, "attempts": 1})
    campaign = Campaign(parse_config(data, base_dir=workdir), reporter=SilentReporter())
    try:
        campaign.run()
        recs, gen = campaign.store.trials(), campaign.policy.generator
    finally:
        campaign.store.close()
    n_failed = sum(r.status == "failed" for r in recs)
    assert n_failed > 0  # flaky fails wherever x0 > 0.7
    nan = [r for r in gen.ingested if math.isnan(r["y"])]
    assert len(nan) == (n_failed if failed == "nan" else 0)
    assert all(r["x0"] > 0.7 for r in nan)
    fed = len(recs) if failed == "nan" else len(recs) - n_failed
    assert fed - 2 <= len(gen.ingested) <= fed  # all but the last trials, done after the last proposal


def test_a_generator_that_leaves_the_domain_is_a_counted_fallback_not_a_silent_one(tmp_path, capsys):
    policy = {"kind": "gest", "generator": "tests.test_gest:OffTheMap", "strict": False}
    path = _campaign(tmp_path, policy, trials=8)
    assert main(["run", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == 8 and summary["fallbacks"]["count"] >= 1
    assert "x1=2.5" in json.dumps(summary["fallbacks"]["reasons"])
    path = _campaign(tmp_path, {**policy, "strict": True}, trials=8, store=str(tmp_path / "strict.db"))
    assert main(["run", str(path), "--quiet"]) != 0  # strict: the campaign stops instead
    assert "x1=2.5" in capsys.readouterr().err


def test_the_gest_api_packages_own_example_generator_runs_a_campaign(tmp_path, capsys):
    policy = {"kind": "gest", "generator": "gest_api.tests.test_generator:RandomGenerator"}
    path = _campaign(tmp_path, policy, trials=6, objectives=[{"metric": "f", "goal": "minimize"}],
                     instrument={"kind": "function", "target": "fns:f"})
    (tmp_path / "fns.py").write_text("def f(p):\n    return {'f': (p['x0'] - 0.3) ** 2 + p['x1']}\n")
    data = yaml.safe_load(path.read_text())
    data["space"] = {"parameters": [{"name": "x0", "type": "real", "low": 0, "high": 1},
                                    {"name": "x1", "type": "real", "low": 0, "high": 1}]}
    path.write_text(yaml.safe_dump(data))
    state = random.getstate()  # that generator seeds the global `random` module
    try:
        assert main(["run", str(path), "--json"]) == 0
    finally:
        random.setstate(state)
    assert json.loads(capsys.readouterr().out)["completed"] == 6


def test_a_pool_campaign_measures_each_suggestion_at_the_nearest_unused_row(tmp_path, capsys):
    space = {"pool": {"grid": {"x0": [-5.0, 10.0, 4], "x1": [0.0, 15.0, 4]}}}
    path = _campaign(tmp_path, LOCAL_SEARCH, trials=16, space=space)
    assert main(["run", str(path), "--json"]) == 0
    with Store(tmp_path / "gest.db") as store:
        recs = store.trials()
    assert len(recs) == 16 and len({r.pool_index for r in recs}) == 16  # the whole 4 x 4 grid, no row twice


def test_the_example_generator_beside_its_campaign_file_measures_a_latin_hypercube(tmp_path, capsys):
    example = Path(__file__).parent.parent / "examples" / "gest_generator.yaml"
    assert main(["run", str(example), "--store", str(tmp_path / "lhs.db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["completed"] == 24
    with Store(tmp_path / "lhs.db") as store:
        x = np.array([r.x for r in store.trials()])
    for column in x.T:  # one point in each of the 24 strata of each parameter
        assert sorted(np.floor(column * 24).astype(int)) == list(range(24))


@pytest.mark.parametrize("policy, extra, field, words", [
    ({"kind": "gest", "generator": "no_such_gest_module:G"}, {}, "policy.generator", "cannot import module"),
    ({"kind": "gest", "generator": "LocalSearch"}, {}, "policy.generator", "module:Class"),
    ({"kind": "gest", "generator": "json:loads"}, {}, "policy.generator", "not a gest-api generator"),
    ({"kind": "gest", "generator": "tests.test_gest:Nope"}, {}, "policy.generator", "no attribute 'Nope'"),
    ({"kind": "gest", "generator": "tests.test_gest:LocalSearch", "options": {"speed": 2}}, {}, "policy.options",
     "speed"),
    ({"kind": "gest", "generator": "tests.test_gest:LocalSearch"},
     {"space": {"parameters": [{"name": "x0", "type": "integer", "low": 0, "high": 3},
                               {"name": "x1", "type": "real", "low": 0, "high": 1}]}}, "policy.options",
     "only supports continuous"),
    ({"kind": "gest", "generator": "tests.test_gest:LocalSearch"},
     {"space": {"parameters": [{"name": "x0", "type": "real", "low": -5, "high": 10},
                               {"name": "x1", "type": "real", "low": 0, "high": 15}],
                "constraints": ["x0 + x1 <= 10"]}}, "space.constraints", "no constraints between parameters"),
    ({"kind": "gest", "generator": "tests.test_gest:LocalSearch", "failed": "retry"}, {}, "policy.failed", "nan"),
])
def test_validate_and_run_refuse_a_bad_gest_policy_naming_the_field(tmp_path, capsys, policy, extra, field, words):
    path = _campaign(tmp_path, policy, **extra)
    for command in ("validate", "run"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{field}:" in err and words in err and "Traceback" not in err, err
    assert not (tmp_path / "gest.db").exists()
