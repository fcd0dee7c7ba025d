"""Optimisation quality of aec's policies against Ax and the baselines, side by side in one process.

Single objective: simple regret after 50 evaluations on Branin, Hartmann6 and Ackley (6-d).
Multi-objective: hypervolume after 40 evaluations on BraninCurrin, DTLZ2 (d=6) and VehicleSafety.
Long runs (--long): 150-250 evaluations, past every internal threshold of the BoTorch policy
(64 baseline points, warm starts, the fit subset), on DTLZ2 (d=8), VehicleSafety, CarSideImpact
(4 objectives), Penicillin (3 objectives), ZDT3 (a disconnected front) and aec's detector study;
and for one objective Hartmann6, Ackley6 and Hartmann6 with noise. Each run counts the proposals
that a fallback made (the target is 0) and the seconds per decision at n = 64, 150 and 250.
Each (problem, policy, seed) is one run, appended to the --out JSON as soon as it finishes, so an
interrupted benchmark resumes where it stopped. Prints median and IQR per (problem, policy), says
whether aec's BoTorch policy is at least as good as Ax by the median, and draws the median curves.

    python benchmarks/bo_quality.py --seeds 5 --out benchmarks/out/bo_quality.json
    python benchmarks/bo_quality.py --long --seeds 20 --out benchmarks/out/bo_quality_long.json
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.stats import mannwhitneyu

from bo_common import (
    OUT_DIR,
    build_policy,
    environment,
    fmt,
    count_fallbacks,
    DETECTOR,
    hypervolume_trace,
    make_problem,
    parse_json_option,
    parse_list,
    print_table,
    regret_trace,
    ResultFile,
    run_campaign,
    summary,
)

SINGLE = ["branin", "hartmann6", "ackley6"]
MULTI = ["branincurrin", "dtlz2", "vehiclesafety"]
LONG_SINGLE = ["hartmann6", "ackley6", "hartmann6_noisy"]
LONG_MULTI = ["dtlz2_8d", "vehiclesafety", "carsideimpact", "penicillin", "zdt3", DETECTOR]
SINGLE_ALL, MULTI_ALL = SINGLE + ["hartmann6_noisy"], MULTI + [p for p in LONG_MULTI if p not in MULTI]
DECISION_AT = (64, 150, 250)  # history sizes at which seconds per decision are reported
MODEL_PHASE_FROM = 14  # from this proposal on every policy compared uses a model (the largest initial design: 2d+2 at d=6)
POLICIES = ["random", "sobol", "botorch", "ax"]
AEC, AX = "botorch", "ax"
# Verdicts: aec against Ax with the same initial-design convention: both start at the centre of
# the box (the defaults), or neither does. The centre is the optimum of Ackley and a
# Pareto-optimal point of DTLZ2, so there one point decides the default comparison.
VERDICTS = [(AEC, AX), ("botorch-nocenter", "ax-nocenter"), ("botorch-nocenter", AX)]
# Named variants: label -> (policy kind, options depending on the problem's dimension d).
VARIANTS: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "ax-nocenter": ("ax", lambda d: {"center": False}),
    "botorch-nocenter": ("botorch", lambda d: {"center": False}),  # the default before the centre point
    "botorch-2d2": ("botorch", lambda d: {"initial": 2 * d + 2, "center": False}),  # the design before max(d, 6)
    "botorch-logei": ("botorch", lambda d: {"acquisition": "logei", "center": False}),  # analytic LogEI
    "botorch-r20": ("botorch", lambda d: {"num_restarts": 20, "raw_samples": 1024, "center": False}),  # Ax's search effort
    "botorch-winsor": ("botorch", lambda d: {"winsorize": True}),  # Ax's automatic winsorization
    "botorch-warm30": ("botorch", lambda d: {"warm_start_after": 30}),  # the default before cold multi-metric fits
    "botorch-warm0": ("botorch", lambda d: {"warm_start_after": 0}),  # every fit after the first warm-started
    "botorch-metrichv": ("botorch", lambda d: {"standardize_objectives": False}),  # hypervolume in metric units, the default before 2026-12-01
    "botorch-cold": ("botorch", lambda d: {"warm_start": False}),  # every fit from BoTorch's defaults, as Ax's
    "botorch-init5": ("botorch", lambda d: {"initial": 5}),  # Ax's initial design size (centre + 4 Sobol)
    "botorch-r20c": ("botorch", lambda d: {"num_restarts": 20, "raw_samples": 1024}),  # Ax's search effort, with the centre
    # the multi-objective search effort until 2026-12-01 10:45, then until 11:20 (now Ax's: 20, 1024, 200, scipy's tolerance)
    "botorch-r12": ("botorch", lambda d: {"num_restarts": 12, "raw_samples": 512, "maxiter": 100, "acq_ftol": 1e-6}),
    "botorch-r20loose": ("botorch", lambda d: {"num_restarts": 20, "raw_samples": 1024, "maxiter": 100, "acq_ftol": 1e-6}),
    "botorch-tight": ("botorch", lambda d: {"maxiter": 200, "acq_ftol": None}),  # restarts run to scipy's tolerance, as Ax's
    "botorch-pool": ("botorch", lambda d: {"lengthscale_pooling": 0.5}),  # log length scales pooled towards their mean
    "botorch-ard": ("botorch", lambda d: {"lengthscale_pooling": None}),  # BoTorch's independent ARD prior
}


def run_one(problem: str, policy: str, seed: int, budget: int, q: int, options: dict[str, Any]) -> dict[str, Any]:
    sim, prob = make_problem(problem, seed)
    record: dict[str, Any] = {"problem": problem, "policy": policy, "seed": seed, "budget": budget, "q": q}
    t0 = time.perf_counter()
    fallbacks: list[str] = []
    try:
        kind, preset = VARIANTS.get(policy, (policy, lambda d: {}))
        record["options"] = {**preset(prob.space.dim), **(options.get(kind) or {})}
        pol = build_policy(kind, prob, record["options"])
        history, seconds = run_campaign(pol, sim, budget, q, fallbacks=fallbacks)
    except Exception as exc:  # a broken policy must not stop the other runs
        record.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
        return record
    multi = sim.multi_objective
    trace = hypervolume_trace(sim, history) if multi else regret_trace(sim, history)
    record.update(
        fallbacks=len(fallbacks),
        fallback_reasons=sorted(set(fallbacks))[:5],
        decision_seconds={str(n): _seconds_near(seconds, n, q) for n in DECISION_AT if n - 5 < budget},
        measure="hypervolume" if multi else "regret",
        trace=trace,
        final=trace[-1],
        seconds=time.perf_counter() - t0,
        propose_seconds=seconds,
        max_hv=sim.max_hv if multi else None,
    )
    return record


def _seconds_near(seconds: list[float], n: int, q: int, half_window: int = 5) -> float | None:
    """Median seconds of the proposals made with n - 5 .. n + 5 observations (q per proposal)."""
    picked = [t for i, t in enumerate(seconds) if abs(i * q - n) <= half_window]
    return float(np.median(picked)) if picked else None


def report(results: ResultFile, problems: list[str], policies: list[str], plain: bool) -> dict[str, Any]:
    """Tables of median [IQR] per (problem, policy) and the aec-vs-Ax verdicts."""
    out: dict[str, Any] = {}
    for measure, names, better in (("regret", SINGLE_ALL, "lower"), ("hypervolume", MULTI_ALL, "higher")):
        rows = []
        for problem in [p for p in problems if p in names]:
            stats, finals = {}, {}
            for policy in policies:
                runs = [r for r in results.runs if r["problem"] == problem and r["policy"] == policy and "final" in r]
                finals[policy] = {r["seed"]: r["final"] for r in runs}
                errors = [r for r in results.runs if r["problem"] == problem and r["policy"] == policy and "error" in r]
                s = summary(r["final"] for r in runs)
                s["errors"] = len(errors)
                model_phase = [t for r in runs for t in r["propose_seconds"][MODEL_PHASE_FROM:]]
                s["propose_s"] = float(np.median(model_phase)) if model_phase else None
                s["run_s"] = float(np.median([r["seconds"] for r in runs])) if runs else None
                s["fallbacks"] = int(sum(r.get("fallbacks", 0) for r in runs))
                s["decision_s"] = {
                    str(n): float(np.median(v)) if v else None
                    for n in DECISION_AT
                    for v in [[r["decision_seconds"][str(n)] for r in runs
                               if (r.get("decision_seconds") or {}).get(str(n)) is not None]]
                }
                stats[policy] = s
                rows.append(
                    [
                        problem,
                        policy,
                        str(s["n"]) + (f" (+{len(errors)} failed)" if errors else ""),
                        fmt(s["median"]),
                        f"[{fmt(s['q25'])}, {fmt(s['q75'])}]",
                        fmt(s["run_s"]),
                        fmt(s["propose_s"]),
                        " / ".join(fmt(s["decision_s"][str(n)]) for n in DECISION_AT),
                        str(s["fallbacks"]),
                    ]
                )
            verdicts: dict[str, bool] = {}
            p_values: dict[str, float] = {}
            for mine, theirs in VERDICTS:
                seeds = sorted(set(finals.get(mine, {})) & set(finals.get(theirs, {})))
                if seeds:  # medians over the seeds both have
                    xs, ys = [finals[mine][k] for k in seeds], [finals[theirs][k] for k in seeds]
                    a, b = float(np.median(xs)), float(np.median(ys))
                    ok = bool(a <= b) if measure == "regret" else bool(a >= b)
                    verdicts[f"{mine} vs {theirs}"] = ok
                    # two-sided Mann-Whitney U: could the two sets of runs come from one distribution?
                    p_values[f"{mine} vs {theirs}"] = p = float(mannwhitneyu(xs, ys).pvalue) if len(seeds) > 1 else 1.0
                    rows.append([
                        problem, f"{mine} >= {theirs} ({better} is better)", str(len(seeds)),
                        f"{'yes' if ok else 'no'}: {fmt(a)} vs {fmt(b)}", f"U-test p={p:.2g}", "", "", "", "",
                    ])
            out[problem] = {
                "measure": measure,
                "stats": stats,
                "aec_at_least_as_good_as_ax": verdicts.get(f"{AEC} vs {AX}"),
                "verdicts": verdicts,
                "p_values": p_values,
            }
        if rows:
            print_table(
                f"{'simple regret' if measure == 'regret' else 'hypervolume'} after the budget (median over seeds)",
                ["problem", "policy", "seeds", "median", "IQR", "s/run", "s/propose (model phase)",
                 "s/decision at n=" + "/".join(map(str, DECISION_AT)), "fallbacks"],
                rows,
                plain,
            )
    return out


def plot(results: ResultFile, problems: list[str], policies: list[str], path: Path) -> Path | None:
    """Median curves with IQR bands, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in problems if any(r["problem"] == p and "trace" in r for r in results.runs)]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    for ax, problem in zip(axes.flat, panels):
        measure = "regret"
        for policy in policies:
            traces = [r["trace"] for r in results.runs if r["problem"] == problem and r["policy"] == policy and "trace" in r]
            if not traces:
                continue
            measure = next(r["measure"] for r in results.runs if r["problem"] == problem and "measure" in r)
            length = min(len(t) for t in traces)
            T = np.array([t[:length] for t in traces])
            x = np.arange(1, length + 1)
            q25, med, q75 = np.percentile(T, [25, 50, 75], axis=0)
            ax.plot(x, med, label=f"{policy} ({len(traces)})")
            ax.fill_between(x, q25, q75, alpha=0.2)
        if measure == "regret":
            ax.set_yscale("log")
        ax.set_title(problem)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("simple regret" if measure == "regret" else "hypervolume")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 per (problem, policy)")
    parser.add_argument("--first-seed", type=int, default=0, help="start at this seed (split the seeds over processes)")
    parser.add_argument("--problems", default=None, help="comma-separated: " + ", ".join(SINGLE_ALL + MULTI_ALL)
                        + " (default: the short set; with --long, the long set)")
    parser.add_argument("--long", action="store_true", help="the long runs: --budget 200 and --budget-multi 150 unless "
                        "given, on " + ", ".join(LONG_SINGLE + LONG_MULTI))
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help=f"comma-separated policy kinds or variants ({', '.join(VARIANTS)})"
    )
    parser.add_argument("--budget", type=int, default=None, help="evaluations for single-objective problems (50; --long 200)")
    parser.add_argument("--budget-multi", type=int, default=None, help="evaluations for multi-objective problems (40; --long 150)")
    parser.add_argument("--q", type=int, default=1, help="batch size per propose")
    parser.add_argument("--botorch-options", help="JSON options for the botorch policy, e.g. '{\"initial\": 10}'")
    parser.add_argument("--ax-options", help="JSON options for the ax policy")
    parser.add_argument("--out", default=str(OUT_DIR / "bo_quality.json"), help="results JSON (appended run by run)")
    parser.add_argument("--figure", default=None, help="PNG path (default: next to --out, .png)")
    parser.add_argument("--redo-errors", action="store_true", help="run again the runs that raised")
    parser.add_argument("--report-only", action="store_true", help="summarise --out without running anything")
    parser.add_argument("--plain", action="store_true", help="plain-text tables")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    default_problems = LONG_SINGLE + LONG_MULTI if args.long else SINGLE + MULTI
    problems, policies = parse_list(args.problems or ",".join(default_problems)), parse_list(args.policies)
    args.budget = args.budget or (200 if args.long else 50)
    args.budget_multi = args.budget_multi or (150 if args.long else 40)
    unknown = [p for p in problems if p not in SINGLE_ALL + MULTI_ALL]
    if unknown:
        parser.error(f"unknown problems {unknown}; choose from {SINGLE_ALL + MULTI_ALL}")
    options = {"botorch": parse_json_option(args.botorch_options), "ax": parse_json_option(args.ax_options)}
    results = ResultFile(args.out, "bo_quality", meta={"environment": environment()})

    if not args.report_only:
        # Seeds outermost, so that a partial run covers every (problem, policy) evenly.
        for seed in range(args.first_seed, args.seeds):
            for problem in problems:
                budget = args.budget if problem in SINGLE_ALL else args.budget_multi
                for policy in policies:
                    key = {"problem": problem, "policy": policy, "seed": seed, "budget": budget, "q": args.q}
                    done = results.find(**key)
                    if done is not None and not ("error" in done and args.redo_errors):
                        continue
                    record = run_one(problem, policy, seed, budget, args.q, options)
                    results.add(record, replace_key=key)
                    status = record.get("error") or (f"{record['measure']} {fmt(record['final'])} in {record['seconds']:.0f} s, "
                                                     f"{record['fallbacks']} fallbacks")
                    print(f"seed {seed} {problem:>13} {policy:>8}: {status}", flush=True)

    results.reload()
    summary_out = report(results, problems, policies, args.plain)
    results.data["summary"] = summary_out
    results.save()
    figure = Path(args.figure) if args.figure else Path(args.out).with_suffix(".png")
    written = plot(results, problems, policies, figure)
    if written:
        print(f"figure: {written}")
    total_fallbacks = sum(r.get("fallbacks", 0) for r in results.runs if r["problem"] in problems and r["policy"] in policies)
    print(f"fallbacks in all runs: {total_fallbacks}")
    print(json.dumps({"benchmark": "bo_quality", "results": args.out, "fallbacks": total_fallbacks, "summary": summary_out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
