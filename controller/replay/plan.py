"""A replay's plan: its problems (data sets as pools, campaigns re-run) and one run per problem x policy x seed.

Each run is an ordinary campaign with its own store under `DIR/runs/`, so `aec show`, `aec report` and
`aec resume` work on any of them, and a replay interrupted at any point resumes where it stopped.
The plan is written to `DIR/replay.json`; the report and the summary read it back.

Each run carries a fingerprint (a hash of its campaign config and of its pool's contents), kept in replay.json
and in the run's store: a finished or interrupted run is reused only by the replay that made it. Pool tables are
written under content-hashed names, only when absent, so a replay never overwrites another's data.
"""
from __future__ import annotations

import hashlib
import json
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
    regret: bool = True  # False: a known optimum that does not apply (other goal, narrower bounds): no regret curve
    data_hash: str | None = None  # the pool's (or the campaign's data files') contents
    source: str | None = None  # where the pool came from (the user's file or store)


@dataclass
class Run:
    key: str
    problem: str
    policy: str
    seed: int
    store: str
    config: dict[str, Any]
    base_dir: str
    fingerprint: str = ""  # hash of `config` and the problem's data_hash: which replay made this run
    data_hash: str | None = None
    source: str | None = None

    def meta(self) -> dict[str, Any]:
        """What the run's store keeps about the replay that made it (store meta `replay_run`)."""
        return {"fingerprint": self.fingerprint, "config": self.config, "data_hash": self.data_hash,
                "source": self.source}


def fingerprint(config: dict[str, Any], data_hash: str | None) -> str:
    return hashlib.sha256(json.dumps({"config": config, "data": data_hash}, sort_keys=True, default=str)
                          .encode()).hexdigest()


@dataclass
class Plan:
    name: str
    out: str
    top: float
    problems: dict[str, Problem]
    runs: list[Run]
    pending: list[tuple[Path, Any]] = field(default_factory=list, repr=False)  # data files to write (path, frame)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "top": self.top, "problems": {k: asdict(p) for k, p in self.problems.items()},
                "runs": [asdict(r) for r in self.runs]}

    def write(self) -> Path:
        """The pool tables that are not there yet (an existing file of the same content hash is left alone),
        then replay.json, each atomically."""
        import io

        from controller.report_html import write_atomic

        for path, frame in self.pending:
            if not path.exists():
                buf = io.BytesIO()
                frame.to_parquet(buf, index=False)
                write_atomic(path, buf.getvalue())
        self.pending = []
        return write_atomic(Path(self.out) / PLAN_FILE, json.dumps(self.to_json(), indent=1))

    @classmethod
    def read(cls, out: str | Path) -> "Plan":
        """DIR/replay.json; a missing, unreadable or damaged file is a one-line UserError naming it."""
        path = Path(out) / PLAN_FILE
        if not path.is_file():
            raise UserError(f"{out}: not a replay folder (no {PLAN_FILE}); `aec replay ... --out {out}` makes one")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{path}: not readable as JSON ({str(exc).splitlines()[0]}); "
                            "`aec replay ... --out DIR` writes it") from None
        try:
            if not isinstance(data, dict):
                raise TypeError(f"expected an object, got {type(data).__name__}")
            return cls(str(data["name"]), str(out), float(data["top"]),
                       {str(k): Problem(**p) for k, p in data["problems"].items()}, [Run(**r) for r in data["runs"]])
        except KeyError as exc:
            raise UserError(f"{path}: {exc.args[0]}: missing; the file is damaged (`aec replay ... --out DIR` "
                            "writes it)") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{path}: damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            "`aec replay ... --out DIR` writes it") from None


def make_plan(spec: ReplaySpec, out: Path, base_dir: Path) -> Plan:
    """Problems prepared and the runs listed; nothing is run yet, and nothing in `out` is written (the pool
    tables wait in `plan.pending` for `plan.write()`, after `runner.check_reuse`)."""
    problems: dict[str, Problem] = {}
    pending: list[tuple[Path, Any]] = []
    for d in spec.datasets:
        _add(problems, _dataset_problem(d, spec, out, base_dir, pending))
    for c in spec.campaigns:
        _add(problems, _campaign_problem(c, spec, out, base_dir, pending))
    runs = []
    for prob in problems.values():
        for pol in spec.policies:
            for seed in spec.seed_list():
                key = f"{prob.name}.{pol.label}.s{seed}"
                store = out / "runs" / f"{key}.db"
                config = _run_config(prob, pol.kind, pol.options(), seed, spec, key)
                runs.append(Run(key, prob.name, pol.label, seed, str(store), config, prob.base_dir,
                                fingerprint(config, prob.data_hash), prob.data_hash, prob.source))
    return Plan(spec.name, str(out), spec.top, problems, runs, pending)


def slug(text: str) -> str:
    """A name usable in campaign names and file names: letters, digits, `_`, `.`, `-`."""
    out = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "data"
    return out if re.match(r"[A-Za-z_]", out) else f"d_{out}"


def _add(problems: dict[str, Problem], p: Problem) -> None:
    if p.name in problems:
        raise UserError(f"two problems are named {p.name!r}; give one a 'name'")
    problems[p.name] = p


def _dataset_problem(d: DatasetSpec, spec: ReplaySpec, out: Path, base_dir: Path, pending: list) -> Problem:
    path = Path(d.file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    data = load_dataset(path, d.inputs, [o.metric for o in d.objectives], name=d.name or slug(path.stem),
                        duplicates=d.duplicates, missing=d.missing)
    return _pool_problem(data, [o.model_dump() for o in d.objectives], spec, out, "dataset", pending, str(path))


def _pool_problem(data: Dataset, objectives: list[dict[str, Any]], spec: ReplaySpec, out: Path, kind: str,
                  pending: list, source: str) -> Problem:
    """The pool (inputs only: the policies' view) and the table (inputs + outcomes: the instrument's), named by
    a hash of their contents and queued in `pending` (written by Plan.write when absent)."""
    import pandas as pd

    columns = data.columns()
    h = hashlib.sha256(json.dumps({"inputs": data.inputs, "columns": list(columns)}).encode())
    for v in columns.values():
        h.update(np.ascontiguousarray(v, dtype=np.float64).tobytes())
    data_hash = h.hexdigest()
    folder = (out / "data").resolve()
    pool = folder / f"{data.name}.{data_hash[:12]}.pool.parquet"
    table = folder / f"{data.name}.{data_hash[:12]}.table.parquet"
    pending.append((pool, pd.DataFrame({n: data.X[:, j] for j, n in enumerate(data.inputs)})))
    pending.append((table, pd.DataFrame(columns)))
    config = {
        "space": {"pool": {"file": str(pool)}},
        "objectives": objectives,
        "instrument": {"kind": "recorded", "file": str(table), "metrics": [o["metric"] for o in objectives]},
    }
    budget = min(spec.budget, data.rows)
    notes = data.notes() + ([f"{data.name}: budget {spec.budget} cut to the pool's {data.rows} rows"]
                            if budget < spec.budget else [])
    return Problem(data.name, kind, objectives, budget, config, str(out.resolve()), str(table),
                   data.rows, notes, data_hash=data_hash, source=source)


def _campaign_problem(c: CampaignSpec, spec: ReplaySpec, out: Path, base_dir: Path, pending: list) -> Problem:
    from controller.config import config_to_dict

    if c.file is not None:
        from controller.preflight import load_config

        path = Path(c.file).expanduser()
        cfg = load_config(str(path if path.is_absolute() else base_dir / path))
        base = config_to_dict(cfg)
        return _rerun_problem(c.name or slug(cfg.name), base, str(cfg.base_dir), spec, str(path))
    return store_problem(Path(c.store).expanduser() if Path(c.store).is_absolute() else base_dir / c.store,
                         spec, out, c.name, pending)


def store_problem(store: Path, spec: ReplaySpec, out: Path, name: str | None = None,
                  pending: list | None = None) -> Problem:
    """A recorded campaign: its simulator or function run again, or else its completed measurements as a pool."""
    from controller.store import Store

    with Store(store) as st:
        config = st.config()
        base_dir = st.get_meta("base_dir", ".")
        records = [r for r in st.trials() if r.status == "completed"]
    name = name or slug(config["name"])
    if config["instrument"]["kind"] in RERUN_KINDS:
        return _rerun_problem(name, config, base_dir, spec, str(store))
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
    import tempfile

    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="aec-replay-") as tmp:  # read back as a data set would be
        measured = Path(tmp) / f"{name}.measured.csv"
        pd.DataFrame(table).to_csv(measured, index=False)
        data = load_dataset(measured, inputs, metrics, name=name)
    prob = _pool_problem(data, objectives, spec, out, "store-pool", pending if pending is not None else [], str(store))
    prob.notes.insert(0, f"{name}: instrument '{config['instrument']['kind']}' is not re-run; its {len(records)} "
                         "measurements are the pool")
    return prob


def _rerun_problem(name: str, config: dict[str, Any], base_dir: str, spec: ReplaySpec, source: str) -> Problem:
    base = {k: v for k, v in config.items() if k in ("space", "objectives", "constraints", "instrument", "selection")}
    if spec.selection is not None:
        base["selection"] = spec.selection
    objectives = [{"metric": o["metric"], "goal": o.get("goal", "minimize")} for o in config["objectives"]]
    optimum, why_not = _known_optimum(config)
    return Problem(name, "campaign", objectives, spec.budget, base, base_dir, optimum=optimum,
                   regret=why_not is None, notes=[f"{name}: no regret curve (best so far only): {why_not}"]
                   if why_not else [], data_hash=_files_hash(base, Path(base_dir)), source=source)


def _files_hash(config: dict[str, Any], base_dir: Path) -> str | None:
    """The contents of the files a re-run campaign reads (its pool table, a recorded instrument's file)."""
    files = [((config.get("space") or {}).get("pool") or {}).get("file"), (config.get("instrument") or {}).get("file")]
    h, found = hashlib.sha256(), False
    for f in files:
        if not isinstance(f, str):
            continue
        path = Path(f).expanduser()
        path = path if path.is_absolute() else base_dir / path
        try:
            h.update(path.read_bytes())
            found = True
        except OSError:
            h.update(f"missing:{path}".encode())
    return h.hexdigest() if found else None


def _known_optimum(config: dict[str, Any]) -> tuple[float | None, str | None]:
    """(the optimum a simulator declares (BoTorch's test functions do), None) when it holds for this campaign:
    the single objective is the simulator's metric with the simulator's goal, over its full bounds and without
    constraints; else (None, why not) when a declared optimum does not apply, or (None, None) when none is declared."""
    inst = config["instrument"]
    if inst["kind"] != "simulator" or len(config["objectives"]) != 1:
        return None, None
    from instruments.registry import build_instrument

    try:
        sim = getattr(build_instrument(inst, ".", seed=0), "simulator", None)
    except Exception:  # noqa: BLE001 - no optimum known: regret is then measured from the best value found
        return None, None
    value = getattr(sim, "optimal_value", None)
    metrics = list(getattr(sim, "metrics", lambda: [])())
    objective = config["objectives"][0]
    if value is None or (metrics and metrics[0] != objective["metric"]):
        return None, None
    declared = {o["metric"]: o.get("goal", "minimize") for o in getattr(sim, "objectives", lambda: [])()}
    goal, theirs = objective.get("goal", "minimize"), declared.get(objective["metric"], "minimize")
    if goal != theirs:
        return None, (f"the simulator's known optimum {float(value):.6g} is for goal {theirs}, this campaign's goal "
                      f"is {goal}")
    full = {p["name"]: p for p in getattr(sim, "parameters", lambda: [])()}
    space = config.get("space") or {}
    if space.get("pool") is not None or space.get("constraints"):
        return None, "the space is a pool or has constraints, so the simulator's known optimum may be out of reach"
    mine = {p["name"]: p for p in space.get("parameters") or []}
    for n, p in (full.items() if mine else ()):  # no parameters given: the simulator's own space, its full bounds
        q = mine.get(n)
        if q is None or "low" not in p or not (np.isclose(float(q.get("low", np.nan)), float(p["low"]))
                                               and np.isclose(float(q.get("high", np.nan)), float(p["high"]))):
            shown = "missing" if q is None else f"[{q.get('low')}, {q.get('high')}]"
            return None, (f"parameter {n} is {shown}, not the simulator's full [{p.get('low')}, {p.get('high')}], "
                          "so its known optimum may be out of reach")
    return float(value), None


def _run_config(prob: Problem, kind: str, options: dict[str, Any], seed: int, spec: ReplaySpec, key: str) -> dict[str, Any]:
    """The campaign file of one run: one worker and no lookahead, so each decision sees every result before it."""
    from policies import policy_class

    opts = dict(options)
    if spec.initial is not None and "initial" in policy_class(kind).Options.model_fields and "initial" not in opts:
        opts["initial"] = spec.initial
    return {**prob.base_config, "name": key, "seed": seed, "policy": {"kind": kind, **opts},
            "executor": {"kind": "local", "workers": 1, "lookahead": 0}, "budget": {"trials": prob.budget}}
