"""Shared harness for aec's Bayesian-optimisation benchmarks (bo_quality.py, bo_latency.py).

Any object with the Policy protocol plugs in: problems come from `simulators.functions`
(BoTorch test functions), the loop is propose -> evaluate at native bounds -> History.append,
and results are appended run by run to a JSON file so that an interrupted benchmark resumes
where it stopped and partial runs still count.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benchmarks run as scripts from a checkout
    sys.path.insert(0, str(REPO))

from policies import make_policy  # noqa: E402
from policies.base import EncodedSpace, History, Objective, Observation, Policy, Problem, Proposal  # noqa: E402
from simulators.functions import TestFunctionSimulator  # noqa: E402

OUT_DIR = REPO / "benchmarks" / "out"

# Benchmark problem name -> (simulators.functions name, options)
PROBLEMS: dict[str, tuple[str, dict[str, Any]]] = {
    "branin": ("branin", {}),
    "hartmann6": ("hartmann6", {}),
    "ackley6": ("ackley", {"dim": 6}),
    "branincurrin": ("branincurrin", {}),
    "dtlz2": ("dtlz2", {"dim": 6, "num_objectives": 2}),
    "vehiclesafety": ("vehiclesafety", {}),
    # long multi-objective runs (150-250 evaluations), past every internal threshold of the policy
    "dtlz2_8d": ("dtlz2", {"dim": 8, "num_objectives": 2}),
    "carsideimpact": ("carsideimpact", {}),
    "penicillin": ("penicillin", {}),
    "zdt3": ("zdt3", {"dim": 6}),
    # long single-objective runs
    "hartmann6_noisy": ("hartmann6", {"noise_std": 0.1}),
}
DETECTOR = "detector"  # aec's own tracker study (DetectorStudy), not a BoTorch test function


class DetectorStudy:
    """aec's tracker design study as a benchmark problem: pT resolution at 10 GeV against material budget.

    8-d and mixed (an integer layer count, four radii with three ordering constraints, sensor thickness,
    pixel pitch, field), analytic fidelity; hypervolume up to (5 %, 2 % X0). Evaluated through
    controller.space, as a campaign file with the simulator's own parameters would be.
    """

    multi_objective = True
    max_hv = float("nan")
    optimal_value = None
    name = DETECTOR

    def __init__(self, seed: int = 0):
        from controller.space import Space
        from simulators.detector import DetectorSimulator

        self.sim = DetectorSimulator(max_layers=4, dtype="float64", seed=seed)
        self.space = Space.from_config(None, REPO, self.sim)
        self.encoded = self.space.encoded()
        self.dim = self.encoded.dim
        self.ref_point = [5.0, 2.0]

    def metrics(self) -> list[str]:
        return ["pt_resolution_10GeV", "material_budget"]

    def objectives(self) -> list[dict[str, Any]]:
        return [{"metric": m, "goal": "minimize", "threshold": r} for m, r in zip(self.metrics(), self.ref_point)]

    def evaluate_unit(self, X: np.ndarray) -> np.ndarray:
        """Metrics (n x 2) of unit-cube rows of X."""
        P = [self.space.decode(x) for x in np.atleast_2d(X)]
        params = {k: torch.tensor([float(p[k]) for p in P], dtype=torch.float64) for k in P[0]}
        r = self.sim.evaluate(params)
        return torch.stack([r.metrics[m] for m in self.metrics()], dim=-1).cpu().numpy()


# ---------------------------------------------------------------- problems and the loop
def make_problem(name: str, seed: int) -> tuple[TestFunctionSimulator, Problem]:
    """A simulator and the unit-cube Problem a policy sees for it."""
    if name == DETECTOR:
        study = DetectorStudy(seed)
        objectives = [Objective(o["metric"], threshold=o["threshold"]) for o in study.objectives()]
        return study, Problem(space=study.encoded, objectives=objectives, seed=seed)
    fn, opts = PROBLEMS[name]
    sim = TestFunctionSimulator(fn, seed=seed, **opts)
    d = sim.dim
    space = EncodedSpace(names=[p["name"] for p in sim.parameters()], levels=[None] * d, categorical=[False] * d)
    objectives = [
        Objective(o["metric"], maximize=o.get("goal") == "maximize", threshold=o.get("threshold"))
        for o in sim.objectives()
    ]
    return sim, Problem(space=space, objectives=objectives, seed=seed)


def to_native(sim: TestFunctionSimulator, X: np.ndarray) -> torch.Tensor:
    """Unit-cube points (n x d) at the simulator's native bounds."""
    b = sim.problem.bounds.to(torch.float64).cpu()
    X = torch.as_tensor(np.atleast_2d(X), dtype=torch.float64)
    return b[0] + X * (b[1] - b[0])


def evaluate(sim: TestFunctionSimulator, X: np.ndarray) -> list[dict[str, float]]:
    """Metrics of each unit-cube row of X."""
    if hasattr(sim, "evaluate_unit"):
        f = sim.evaluate_unit(X)
    else:
        f = sim.evaluate_tensor(to_native(sim, X)).cpu().numpy()
    names = sim.metrics()
    f = f.reshape(len(np.atleast_2d(X)), len(names))
    return [{n: float(v) for n, v in zip(names, row)} for row in f]


def history_from_points(sim: TestFunctionSimulator, X: np.ndarray, pool_index: Iterable[int] | None = None) -> History:
    idx = list(pool_index) if pool_index is not None else [None] * len(X)
    h = History()
    for i, (x, m) in enumerate(zip(X, evaluate(sim, X))):
        h.append(Observation(trial_id=i, x=np.asarray(x, dtype=float), metrics=m, pool_index=idx[i]))
    return h


def build_policy(kind: str, problem: Problem, options: dict[str, Any] | None = None, strict: bool = False) -> Policy:
    """Any registered policy kind, with its options as in a campaign file's policy section.

    Not strict by default: a benchmark counts fallbacks (`count_fallbacks`) rather than stopping at one."""
    return make_policy(kind, dict(options or {}), problem, strict=strict)


def count_fallbacks(proposals: Iterable[Proposal]) -> int:
    """Proposals that a fallback made instead of the policy asked for."""
    return sum(1 for p in proposals if p.reason.get("fallback"))


def run_campaign(
    policy: Policy,
    sim: TestFunctionSimulator,
    budget: int,
    q: int = 1,
    on_step: Callable[[History, list[Proposal], float], None] | None = None,
    fallbacks: list[str] | None = None,
) -> tuple[History, list[float]]:
    """Run the closed loop for `budget` evaluations in batches of q; returns the history and the
    seconds each `propose` call took. Fallback reasons, one per proposal, go to `fallbacks`."""
    history = History()
    seconds: list[float] = []
    while len(history) < budget:
        n = min(q, budget - len(history))
        t0 = time.perf_counter()
        proposals = policy.propose(history, n, [])
        seconds.append(time.perf_counter() - t0)
        if fallbacks is not None:
            fallbacks += [str(p.reason["fallback"]) for p in proposals if p.reason.get("fallback")]
        if not proposals:
            raise RuntimeError(f"{type(policy).__name__} proposed nothing at {len(history)} evaluations")
        X = np.vstack([p.x for p in proposals])
        for p, m in zip(proposals, evaluate(sim, X)):
            history.append(Observation(trial_id=len(history), x=np.asarray(p.x, dtype=float), metrics=m))
        if on_step is not None:
            on_step(history, proposals, seconds[-1])
    return history, seconds


# ---------------------------------------------------------------- quality measures
def regret_trace(sim: TestFunctionSimulator, history: History) -> list[float]:
    """Simple regret (best value so far minus the optimum; minimisation) after each evaluation."""
    y = history.Y(sim.metrics())[:, 0]
    if getattr(sim, "noise_std", 0.0) > 0:  # noisy observations: the true values of the points measured
        y = sim.evaluate_tensor(to_native(sim, history.X(sim.dim)), noise=False).cpu().numpy().reshape(-1)
    return [float(v) for v in np.minimum.accumulate(y) - float(sim.optimal_value)]


def hypervolume(Y: np.ndarray, ref_point: list[float]) -> float:
    """Hypervolume dominated by minimisation values Y (n x m) up to ref_point, computed on -Y."""
    from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning

    ref = -torch.as_tensor(ref_point, dtype=torch.float64)
    Yt = -torch.as_tensor(np.atleast_2d(Y), dtype=torch.float64)
    better = (Yt > ref).all(dim=-1)
    if not better.any():
        return 0.0
    return float(DominatedPartitioning(ref_point=ref, Y=Yt[better]).compute_hypervolume())


def hypervolume_trace(sim: TestFunctionSimulator, history: History) -> list[float]:
    """Hypervolume after each evaluation; recomputed only when a point joins the front (4-d fronts are slow)."""
    Y = history.Y(sim.metrics())
    ref = np.asarray(sim.ref_point, dtype=float)
    out: list[float] = []
    hv = 0.0
    for i in range(len(Y)):
        y, earlier = Y[i], Y[:i]
        inside = bool(np.all(y < ref))
        dominated = bool(len(earlier) and np.any(np.all(earlier <= y, axis=1)))
        if inside and not dominated:
            hv = hypervolume(Y[: i + 1], sim.ref_point)
        out.append(hv)
    return out


# ---------------------------------------------------------------- statistics and tables
def summary(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return {"n": 0, "median": float("nan"), "q25": float("nan"), "q75": float("nan")}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(len(v)), "median": float(med), "q25": float(q25), "q75": float(q75)}


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if a < 1 else f"{v:.{max(digits, 4)}g}"


def print_table(title: str, columns: list[str], rows: list[list[str]], plain: bool = False) -> None:
    """A rich table when rich is installed (and not --plain), else aligned plain text."""
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=title)
            for c in columns:
                table.add_column(c)
            for r in rows:
                table.add_row(*r)
            Console().print(table)
            return
        except ImportError:
            pass
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    print(title)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)))
    print()


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_json_option(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


# ---------------------------------------------------------------- resumable results
class ResultFile:
    """A JSON file {"benchmark": name, "meta": {...}, "runs": [...]} rewritten atomically after
    every run, so a killed benchmark loses at most the run in progress. Each write re-reads the
    file under a lock and merges, so two processes adding different runs do not clobber each other."""

    def __init__(self, path: str | Path, benchmark: str, meta: dict[str, Any] | None = None):
        self.path = Path(path)
        self.benchmark = benchmark
        self.data: dict[str, Any] = {"benchmark": benchmark, "meta": meta or {}, "runs": []}
        self._meta = meta or {}
        self.reload()

    def reload(self) -> None:
        if self.path.exists():
            loaded = json.loads(self.path.read_text())
            if loaded.get("benchmark") not in (None, self.benchmark):
                raise ValueError(f"{self.path} holds results of {loaded.get('benchmark')!r}, not {self.benchmark!r}")
            self.data = {**loaded, "runs": loaded.get("runs", []), "meta": {**loaded.get("meta", {}), **self._meta}}

    @property
    def runs(self) -> list[dict[str, Any]]:
        return self.data["runs"]

    def find(self, **key: Any) -> dict[str, Any] | None:
        for r in self.runs:
            if all(r.get(k) == v for k, v in key.items()):
                return r
        return None

    def add(self, record: dict[str, Any], replace_key: dict[str, Any] | None = None) -> None:
        with self._locked():
            self.reload()
            if replace_key:
                self.data["runs"] = [r for r in self.runs if not all(r.get(k) == v for k, v in replace_key.items())]
            self.runs.append(record)
            self._write()

    def save(self) -> None:
        """Write this object's keys other than runs (e.g. a summary); runs are written by `add` only."""
        with self._locked():
            mine = {k: v for k, v in self.data.items() if k != "runs"}
            self.reload()
            self.data.update(mine)
            self._write()

    def _locked(self):
        import fcntl
        from contextlib import contextmanager

        @contextmanager
        def lock():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(str(self.path) + ".lock", "w") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)

        return lock()

    def _write(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def environment() -> dict[str, Any]:
    """Versions and machine facts stored with results."""
    import platform

    import botorch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "botorch": botorch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
