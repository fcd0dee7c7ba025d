"""A replay's plan: its problems (data sets as pools, campaigns re-run) and one run per problem x policy x seed.

Each run is an ordinary campaign with its own store under `DIR/runs/`, so `aec show`, `aec report` and
`aec resume` work on any of them, and a replay interrupted at any point resumes where it stopped.
The plan is written to `DIR/replay.json`; the report and the summary read it back.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.errors import UserError
from controller.replay.datasets import Dataset, load_dataset
from controller.replay.spec import CampaignSpec, DatasetSpec, ReplaySpec

PLAN_FILE = "replay.json"
RESULTS_FILE = "results.json"
RERUN_KINDS = ("simulator", "function")
"""Instruments a campaign replay measures again; any other campaign is replayed against its own measurements."""


@dataclass
class Problem:
    """One replayed problem: the campaign sections every run shares, and the pool's recorded truth if any."""

    name: str
    kind: str  # dataset | campaign | store-pool
    objectives: list[dict[str, Any]]
    budget: int
    base_config: dict[str, Any]
    base_dir: str
    table: str | None = None  # inputs + objectives of the pool, row order = pool order (Top% truth)
    rows: int | None = None
    notes: list[str] = field(default_factory=list)
    optimum: float | None = None  # a simulator's known optimum (one objective): regret is measured from it


@dataclass
class Run:
    key: str
    problem: str
    policy: str
    seed: int
    store: str
    config: dict[str, Any]
    base_dir: str


@dataclass
class Plan:
    name: str
    out: str
    top: float
    problems: dict[str, Problem]
    runs: list[Run]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "top": self.top, "problems": {k: asdict(p) for k, p in self.problems.items()},
                "runs": [asdict(r) for r in self.runs]}

    def write(self) -> Path:
        path = Path(self.out) / PLAN_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, out: str | Path) -> "Plan":
        path = Path(out) / PLAN_FILE
        if not path.is_file():
            raise UserError(f"{out}: not a replay folder (no {PLAN_FILE}); `aec replay ... --out {out}` makes one")
        data = json.loads(path.read_text())
        return cls(data["name"], str(out), data["top"], {k: Problem(**p) for k, p in data["problems"].items()},
                   [Run(**r) for r in data["runs"]])


def make_plan(spec: ReplaySpec, out: Path, base_dir: Path) -> Plan:
    """Problems prepared (pool tables written under DIR/data/) and the runs listed; nothing is run yet."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    problems: dict[str, Problem] = {}
    for d in spec.datasets:
        _add(problems, _dataset_problem(d, spec, out, base_dir))
    for c in spec.campaigns:
        _add(problems, _campaign_problem(c, spec, out, base_dir))
    runs = []
    for prob in problems.values():
        for pol in spec.policies:
            for seed in spec.seed_list():
                key = f"{prob.name}.{pol.label}.s{seed}"
                store = out / "runs" / f"{key}.db"
                runs.append(Run(key, prob.name, pol.label, seed, str(store),
                                _run_config(prob, pol.kind, pol.options(), seed, spec, key), prob.base_dir))
    return Plan(spec.name, str(out), spec.top, problems, runs)


def slug(text: str) -> str:
    """A name usable in campaign names and file names: letters, digits, `_`, `.`, `-`."""
    out = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "data"
    return out if re.match(r"[A-Za-z_]", out) else f"d_{out}"


def _add(problems: dict[str, Problem], p: Problem) -> None:
    if p.name in problems:
        raise UserError(f"two problems are named {p.name!r}; give one a 'name'")
    problems[p.name] = p


def _dataset_problem(d: DatasetSpec, spec: ReplaySpec, out: Path, base_dir: Path) -> Problem:
    path = Path(d.file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    data = load_dataset(path, d.inputs, [o.metric for o in d.objectives], name=d.name or slug(path.stem),
                        duplicates=d.duplicates, missing=d.missing)
    return _pool_problem(data, [o.model_dump() for o in d.objectives], spec, out, "dataset")


def _pool_problem(data: Dataset, objectives: list[dict[str, Any]], spec: ReplaySpec, out: Path, kind: str) -> Problem:
    """Write the pool (inputs only: the policies' view) and the table (inputs + outcomes: the instrument's)."""
    import pandas as pd

    pool = out / "data" / f"{data.name}.pool.parquet"
    table = out / "data" / f"{data.name}.table.parquet"
    pd.DataFrame({n: data.X[:, j] for j, n in enumerate(data.inputs)}).to_parquet(pool, index=False)
    pd.DataFrame(data.columns()).to_parquet(table, index=False)
    config = {
        "space": {"pool": {"file": str(pool.resolve())}},
        "objectives": objectives,
        "instrument": {"kind": "recorded", "file": str(table.resolve()), "metrics": [o["metric"] for o in objectives]},
    }
    budget = min(spec.budget, data.rows)
    notes = data.notes() + ([f"{data.name}: budget {spec.budget} cut to the pool's {data.rows} rows"]
                            if budget < spec.budget else [])
    return Problem(data.name, kind, objectives, budget, config, str(out.resolve()), str(table.resolve()),
                   data.rows, notes)


def _campaign_problem(c: CampaignSpec, spec: ReplaySpec, out: Path, base_dir: Path) -> Problem:
    from controller.config import config_to_dict

    if c.file is not None:
        from controller.preflight import load_config

        path = Path(c.file).expanduser()
        cfg = load_config(str(path if path.is_absolute() else base_dir / path))
        base = config_to_dict(cfg)
        return _rerun_problem(c.name or slug(cfg.name), base, str(cfg.base_dir), spec)
    return store_problem(Path(c.store).expanduser() if Path(c.store).is_absolute() else base_dir / c.store,
                         spec, out, c.name)


def store_problem(store: Path, spec: ReplaySpec, out: Path, name: str | None = None) -> Problem:
    """A recorded campaign: its simulator or function run again, or else its completed measurements as a pool."""
    from controller.store import Store

    with Store(store) as st:
        config = st.config()
        base_dir = st.get_meta("base_dir", ".")
        records = [r for r in st.trials() if r.status == "completed"]
    name = name or slug(config["name"])
    if config["instrument"]["kind"] in RERUN_KINDS:
        return _rerun_problem(name, config, base_dir, spec)
    objectives = [{"metric": o["metric"], "goal": o.get("goal", "minimize")} for o in config["objectives"]]
    metrics = [o["metric"] for o in objectives]
    records = [r for r in records if all(m in r.metrics for m in metrics)]
    if not records:
        raise UserError(f"{store}: no completed trial reports {', '.join(metrics)}; nothing to replay")
    pool = (config.get("space") or {}).get("pool") or {}
    names = pool.get("columns") or [k for k in records[0].params if k not in metrics]
    inputs = [k for k in names
              if all(isinstance(r.params.get(k), (int, float)) and not isinstance(r.params.get(k), bool) for r in records)]
    if not inputs:
        raise UserError(f"{store}: the trials have no numeric parameters to use as a pool")
    table = {k: np.array([float(r.params[k]) for r in records]) for k in inputs}
    table.update({m: np.array([r.metrics[m] for r in records]) for m in metrics})
    source = out / "data" / f"{name}.measured.csv"
    import pandas as pd

    pd.DataFrame(table).to_csv(source, index=False)
    data = load_dataset(source, inputs, metrics, name=name)
    prob = _pool_problem(data, objectives, spec, out, "store-pool")
    prob.notes.insert(0, f"{name}: instrument '{config['instrument']['kind']}' is not re-run; its {len(records)} "
                         "measurements are the pool")
    return prob


def _rerun_problem(name: str, config: dict[str, Any], base_dir: str, spec: ReplaySpec) -> Problem:
    base = {k: v for k, v in config.items() if k in ("space", "objectives", "constraints", "instrument", "selection")}
    if spec.selection is not None:
        base["selection"] = spec.selection
    objectives = [{"metric": o["metric"], "goal": o.get("goal", "minimize")} for o in config["objectives"]]
    return Problem(name, "campaign", objectives, spec.budget, base, base_dir, optimum=_known_optimum(config))


def _known_optimum(config: dict[str, Any]) -> float | None:
    """The optimum a simulator declares (BoTorch's test functions do), when it is the single objective's metric."""
    inst = config["instrument"]
    if inst["kind"] != "simulator" or len(config["objectives"]) != 1:
        return None
    from instruments.registry import build_instrument

    try:
        sim = getattr(build_instrument(inst, ".", seed=0), "simulator", None)
    except Exception:  # noqa: BLE001 - no optimum known: regret is then measured from the best value found
        return None
    value = getattr(sim, "optimal_value", None)
    metrics = list(getattr(sim, "metrics", lambda: [])())
    if value is None or (metrics and metrics[0] != config["objectives"][0]["metric"]):
        return None
    return float(value)


def _run_config(prob: Problem, kind: str, options: dict[str, Any], seed: int, spec: ReplaySpec, key: str) -> dict[str, Any]:
    """The campaign file of one run: one worker and no lookahead, so each decision sees every result before it."""
    from policies import policy_class

    opts = dict(options)
    if spec.initial is not None and "initial" in policy_class(kind).Options.model_fields and "initial" not in opts:
        opts["initial"] = spec.initial
    return {**prob.base_config, "name": key, "seed": seed, "policy": {"kind": kind, **opts},
            "executor": {"kind": "local", "workers": 1, "lookahead": 0}, "budget": {"trials": prob.budget}}
