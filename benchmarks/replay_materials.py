"""Pool replays in the manner of Liang et al. 2021 (npj Comput. Mater. 7:188) on simulated materials data sets.

Five pools are regenerated from small simulators with the sizes and input dimensions of the paper's data sets
(Perovskite: 3 composition fractions, ~94 compositions; AgNP: 5 flow rates, 164 rows; P3HT/CNT: 5 blend
fractions, 178 rows; Crossed barrel: 4 geometry inputs, 200 designs x 3 replicates = 600 rows; AutoAM: 4 print
settings, 100 rows), each with measurement noise. `aec replay` runs random, sobol, botorch (aec's default) and
ax on each (duplicates grouped by the mean of their unique values, 2 initial points); the paper's GP baselines
are re-created here as a plain pool loop: 2 random initial points, a GP with a Matern-5/2 kernel, isotropic
(the paper's baseline) or ARD (the paper's best), and LCB with ratio 2 (mean - 2 std). Every policy is scored
with the same functions (controller.replay.metrics): Top% curves, and EF and AF at the budget.

    nice -n 10 python benchmarks/replay_materials.py --seeds 50 --budget 100 --workers 2   # the full run
    nice -n 10 python benchmarks/replay_materials.py --seeds 3 --budget 30 --workers 2     # a short one
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent
POLICIES = ["random", "sobol", "botorch", "ax"]
GP_BASELINES = {"gp-iso-lcb2": False, "gp-ard-lcb2": True}  # name -> ARD
# --policies may also name these variants of aec's botorch policy
VARIANTS = {
    "botorch-ard": {"kind": "botorch", "name": "botorch-ard", "lengthscale_pooling": None},  # BoTorch's independent ARD prior
}


# simulators: (rows, inputs) like the paper's data sets; outputs with noise, goal as in the paper ----------


def _simplex_grid(d: int, steps: int) -> np.ndarray:
    """All compositions of d fractions in multiples of 1/steps."""
    pts = [c for c in np.ndindex(*(steps + 1,) * (d - 1)) if sum(c) <= steps]
    return np.array([[*c, steps - sum(c)] for c in pts], dtype=float) / steps


def perovskite(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Instability of Cs/MA/FA lead-iodide films: lowest near a Cs-FA-rich mix, worse with MA."""
    X = _simplex_grid(3, 12)  # 91 compositions
    cs, ma, fa = X.T
    y = 1.5 * ma + 2.0 * (cs - 0.15) ** 2 + 1.2 * (fa - 0.8) ** 2 + 0.4 * cs * ma + 0.03 * rng.standard_normal(len(X))
    return X, y, "minimize"


def agnp(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Spectral loss of silver nanoparticles against a target, over 5 flow-rate ratios."""
    X = rng.random((164, 5))
    centre = np.array([0.7, 0.25, 0.5, 0.8, 0.35])
    d = (X - centre) * np.array([2.0, 1.5, 1.0, 0.8, 1.2])
    y = np.log1p((d ** 2).sum(1)) + 0.3 * np.sin(3 * X[:, 2]) * X[:, 0] + 0.02 * rng.standard_normal(len(X))
    return X, y, "minimize"


def p3ht(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Conductivity of P3HT/CNT blends: 5 component fractions (Dirichlet), a percolation-like rise."""
    X = rng.dirichlet(np.ones(5), size=178)
    cnt = X[:, 1:] @ np.array([1.0, 0.6, 1.4, 0.8])
    y = 1 / (1 + np.exp(-(cnt - 0.45) * 12)) * (1 + X[:, 3]) * (1 - 0.5 * X[:, 0]) + 0.03 * rng.standard_normal(len(X))
    return X, y, "maximize"


def crossed_barrel(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Toughness of 3-D printed crossed barrels: struts n, angle, radius, thickness; 3 replicates each."""
    n = rng.integers(6, 13, 200).astype(float)
    theta = rng.choice(np.linspace(0, 200, 11), 200)
    r = rng.choice(np.linspace(1.5, 2.5, 6), 200)
    t = rng.choice(np.linspace(0.7, 1.4, 8), 200)
    X = np.column_stack([n, theta, r, t])
    base = (t / 1.4) ** 1.5 * np.exp(-((theta - 120) / 70) ** 2) * (1 + 0.05 * (n - 9)) * (2.6 - r)
    X = np.repeat(X, 3, axis=0)
    y = np.repeat(base, 3) * (1 + 0.08 * rng.standard_normal(len(X)))
    return X, y, "maximize"


def autoam(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Shape error of additively manufactured lines: prime delay, speed and two pressures."""
    X = rng.random((100, 4))
    y = (X[:, 1] - 0.6) ** 2 + 0.5 * (X[:, 2] - X[:, 3]) ** 2 + 0.3 * np.abs(X[:, 0] - 0.2) + 0.02 * rng.standard_normal(100)
    return X, y, "minimize"


DATASETS: dict[str, Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, str]]] = {
    "perovskite": perovskite, "agnp": agnp, "p3ht": p3ht, "crossed_barrel": crossed_barrel, "autoam": autoam,
}


def write_dataset(name: str, folder: Path, seed: int = 0) -> tuple[Path, list[str], str]:
    X, y, goal = DATASETS[name](np.random.default_rng(seed))
    inputs = [f"x{j}" for j in range(X.shape[1])]
    path = folder / f"{name}.csv"
    lines = [",".join(inputs + ["y"])] + [",".join(f"{v:.6g}" for v in (*row, yy)) for row, yy in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path, inputs, goal


# the paper's GP baseline, re-created ------------------------------------------------------------------


def gp_lcb_run(job: tuple[str, np.ndarray, np.ndarray, bool, int, int, int]) -> tuple[str, int, list[int], float]:
    """Pool BO as Liang et al.: 2 random initial rows, then argmin over unmeasured rows of mean - 2 std of a
    Matern-5/2 GP (ARD or one length scale) on inputs scaled to [0, 1] and outcomes standardised (minimised)."""
    name, X, y, ard, seed, budget, initial = job
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.kernels import MaternKernel, ScaleKernel
    from gpytorch.mlls import ExactMarginalLogLikelihood

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    span = np.where(np.ptp(X, 0) > 0, np.ptp(X, 0), 1.0)
    U = torch.tensor((X - X.min(0)) / span, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    picks = [int(i) for i in rng.choice(len(X), initial, replace=False)]
    t0 = time.perf_counter()
    while len(picks) < budget:
        Y = torch.tensor(y[picks], dtype=torch.float64).unsqueeze(-1)
        kernel = ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=X.shape[1] if ard else None))
        model = SingleTaskGP(U[picks], Y, covar_module=kernel)
        try:
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        except Exception:  # noqa: BLE001 - the paper's loop keeps the last fit's prior on a failed fit
            pass
        free = np.setdiff1d(np.arange(len(X)), picks)
        with torch.no_grad():
            post = model.posterior(U[free])
            lcb = post.mean.squeeze(-1) - 2.0 * post.variance.clamp_min(0).sqrt().squeeze(-1)
        picks.append(int(free[int(torch.argmin(lcb))]))
    per_decision = (time.perf_counter() - t0) / max(budget - initial, 1)
    return name, seed, picks, per_decision


# the benchmark ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "out" / "replay_materials"))
    ap.add_argument("--json", default=str(ROOT / "results" / "replay_materials.json"))
    ap.add_argument("--figure", default=str(ROOT / "replay_materials.png"), help="PNG of the Top%% curves")
    ap.add_argument("--show", metavar="JSON", help="print the table of a results file and draw its figure; run nothing")
    ap.add_argument("--reuse-baselines", metavar="JSON", help="take the GP baselines' per-seed runs from an earlier "
                    "results file of the same seeds and budget (on one machine they are deterministic per seed) instead of rerunning them")
    args = ap.parse_args()
    if args.show:
        record = json.loads(Path(args.show).read_text())
        _print(record)
        _figure(record, Path(args.figure))
        return
    from controller.replay import metrics as M
    from controller.replay import replay
    from controller.replay.datasets import load_dataset
    from controller.replay.plan import make_plan
    from controller.replay.spec import parse_spec
    from controller.replay.summary import run_trace

    out = Path(args.out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    names = [n for n in args.datasets.split(",") if n]
    specs, pools = [], {}
    for name in names:
        path, inputs, goal = write_dataset(name, out / "data")
        specs.append({"file": str(path), "name": name, "inputs": inputs, "objectives": [{"metric": "y", "goal": goal}]})
        d = load_dataset(path, inputs, ["y"], name=name)
        pools[name] = (d.X, d.Y["y"], goal == "maximize")
    policies = [VARIANTS.get(p, p) for p in args.policies.split(",") if p]
    spec = parse_spec({"name": "materials", "datasets": specs, "policies": policies,
                       "seeds": args.seeds, "budget": args.budget, "initial": 2, "top": 0.05}, "replay_materials")
    t0 = time.time()
    _, results = replay(spec, out / "replay", workers=args.workers)
    aec_seconds = time.time() - t0
    picks_of = {(run.problem, run.policy, run.seed): (run_trace(run) or {}).get("picks")
                for run in make_plan(spec, out / "replay", Path(".")).runs}
    jobs = [(name, X, -y if maximize else y, ard, seed, min(args.budget, len(X)), 2)
            for name, (X, y, maximize) in pools.items() for ard in (False, True) for seed in range(args.seeds)]
    t1 = time.time()
    gp_runs = _reused_baselines(args.reuse_baselines, args.seeds, args.budget, names)
    if gp_runs is None:
        with ProcessPoolExecutor(args.workers) as pool:
            gp_runs = list(pool.map(gp_lcb_run, [(f"{n}|{'gp-ard-lcb2' if a else 'gp-iso-lcb2'}", X, y, a, s, b, i)
                                                 for n, X, y, a, s, b, i in jobs]))
    table = {}
    for name in names:
        prob = results["problems"][name]
        X, y, maximize = pools[name]
        top = M.top_set(y, 0.05, maximize)
        rows = {pol: _row(r) for pol, r in prob["policies"].items()}
        for pol, row in rows.items():
            seed_picks = [picks_of.get((name, pol, seed)) for seed in range(args.seeds)]
            if all(p is not None for p in seed_picks):
                row["mean_top_per_seed"] = [float(np.mean(M.top_fraction(p, top))) for p in seed_picks]
        for label in GP_BASELINES:
            runs = [(picks, sec, seed) for key, seed, picks, sec in gp_runs if key == f"{name}|{label}"]
            curves = [M.top_fraction(p, top) for p, _, _ in runs]
            curve = np.mean(curves, axis=0)
            ef = M.enhancement_factor(curve, len(y))
            af = M.acceleration_factor(curve, len(y), len(top))
            rows[label] = {"top_fraction_mean": curve.tolist(), "top_at_budget": float(curve[-1]),
                           "ef_at_budget": float(ef[-1]), "af": af, "af_at_half": _af_at(af, 0.5),
                           "seconds_per_decision_median": float(np.median([s for _, s, _ in runs])),
                           "mean_top_per_seed": [float(np.mean(c)) for c in curves],
                           "picks_per_seed": {str(seed): picks for picks, _, seed in runs}}
        table[name] = {"rows": len(y), "inputs": X.shape[1], "top_count": len(top), "budget": prob["budget"],
                       "policies": rows}
    record = {"seeds": args.seeds, "budget": args.budget, "datasets": table, "aec_replay_seconds": round(aec_seconds, 1),
              "gp_baseline_seconds": round(time.time() - t1, 1), "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
              "load": os.getloadavg()[0]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=1))
    _print(record)
    _figure(record, Path(args.figure))


def _reused_baselines(path: str | None, seeds: int, budget: int, names: list[str]) -> list | None:
    """gp_lcb_run's results (key, seed, picks, seconds) read back from an earlier record, or None to run them."""
    if not path:
        return None
    record = json.loads(Path(path).read_text())
    if record["seeds"] != seeds or record["budget"] != budget:
        raise SystemExit(f"{path}: made with {record['seeds']} seeds and budget {record['budget']}, not {seeds} and {budget}")
    out = []
    for name in names:
        for label in GP_BASELINES:
            row = record["datasets"][name]["policies"][label]
            if "picks_per_seed" not in row:
                raise SystemExit(f"{path}: {name} {label} has no per-seed picks (made before they were recorded)")
            sec = row["seconds_per_decision_median"]
            out += [(f"{name}|{label}", int(seed), picks, sec) for seed, picks in row["picks_per_seed"].items()]
    return out


def differences(record: dict, policy: str) -> dict[str, dict[str, dict[str, float]]]:
    """Per data set, `policy`'s mean Top% over the budget minus each other policy's: the difference of the means over
    seeds and twice its standard error (the seeds of the two policies taken as independent samples)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, d in record["datasets"].items():
        ours = d["policies"].get(policy, {}).get("mean_top_per_seed")
        if not ours:
            continue
        for other, r in d["policies"].items():
            theirs = r.get("mean_top_per_seed")
            if other == policy or not theirs or len(theirs) < 2:
                continue
            a, b = np.asarray(ours), np.asarray(theirs)
            se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
            out.setdefault(name, {})[other] = {"difference": float(a.mean() - b.mean()), "two_se": 2 * se}
    return out


def _row(r: dict) -> dict:
    tf = r.get("top_fraction_mean") or [math.nan]
    af = r.get("acceleration_factor") or {"top": [], "af": [], "picks": []}
    return {"top_fraction_mean": tf, "top_at_budget": tf[-1], "ef_at_budget": (r.get("enhancement_factor") or {}).get("at_budget"),
            "af": af, "af_at_half": _af_at(af, 0.5), "seconds_per_decision_median": r.get("seconds_per_decision_median"),
            "fallbacks": r.get("fallbacks", 0), "runs": r.get("runs")}


def _af_at(af: dict, level: float) -> float | None:
    return next((f for a, f in zip(af["top"], af["af"]) if a >= level - 1e-12), None)


def _print(record: dict) -> None:
    """Per data set and policy: Top% and EF at the budget, AF at Top% 0.5, the picks the mean curve needs to
    find the whole top set, the mean of Top% over the budget (the area under the curve / budget)."""
    print(f"seeds {record['seeds']}, budget {record['budget']}")
    print(f"{'data set':15s} {'policy':12s} {'Top%@budget':>11s} {'EF@budget':>9s} {'AF@0.5':>7s} {'picks->1':>8s} "
          f"{'mean Top%':>9s} {'s/decision':>10s}")
    for name, d in record["datasets"].items():
        for pol, r in d["policies"].items():
            af = "-" if r["af_at_half"] is None else f"{r['af_at_half']:.2f}"
            full = dict(zip((round(a, 9) for a in r["af"]["top"]), r["af"]["picks"])).get(1.0, "-")
            sec = r["seconds_per_decision_median"]
            print(f"{name:15s} {pol:12s} {r['top_at_budget']:11.3f} {r['ef_at_budget']:9.2f} {af:>7s} {full!s:>8s} "
                  f"{np.mean(r['top_fraction_mean']):9.3f} {'-' if sec is None else f'{sec:.3f}':>10s}")
    diffs = differences(record, "botorch")
    if diffs:
        print("\nbotorch's mean Top% minus each other policy's (+- 2 standard errors over seeds)")
        for name, d in diffs.items():
            print(f"{name:15s} " + "  ".join(f"{other} {v['difference']:+.3f} +- {v['two_se']:.3f}" for other, v in d.items()))


def _figure(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(record["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        d = record["datasets"][name]
        for i, (pol, r) in enumerate(d["policies"].items()):
            c = r["top_fraction_mean"]
            ax.plot(np.arange(1, len(c) + 1), c, lw=2, color=f"C{i}", label=pol)
        n = np.arange(1, d["budget"] + 1)
        ax.plot(n, n / d["rows"], "k--", lw=1.5, label="random n/N")
        ax.set(title=f"{name} ({d['rows']} rows, {d['inputs']} inputs)", xlabel="measurements", ylabel="Top%", ylim=(0, 1.05))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
