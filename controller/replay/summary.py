"""A replay's results, computed from its run stores alone (so a report is always current): per problem and
policy, over seeds, the best-so-far, regret, Top%, EF, AF and hypervolume curves, the fraction of the maximum
achievable reward per step (sequential simulators: controller.replay.sequential) and seconds per decision.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from controller.replay import metrics as M
from controller.replay.plan import RESULTS_FILE, Plan, Problem, Run
from controller.replay.runner import FINISHED_META


def run_trace(run: Run) -> dict[str, Any] | None:
    """What one run measured, in journal order: pool rows, objective values, decision seconds, fallbacks."""
    from controller.errors import UserError
    from controller.store import Store

    path = Path(run.store)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with Store(path) as st:
            records = st.trials()
            finished = bool((st.get_meta(FINISHED_META) or {}).get("finished"))
    except UserError:
        return None
    done = sorted((r for r in records if r.status == "completed"), key=lambda r: (r.finished_seq or 0, r.id))
    if not done:
        return None
    by_id = sorted(records, key=lambda r: r.id)
    decisions = [b.proposed_at - a.finished_at for a, b in zip(by_id, by_id[1:])
                 if a.finished_at is not None and b.proposed_at is not None and b.proposed_at >= a.finished_at]
    return {"picks": [r.pool_index for r in done], "metrics": [r.metrics for r in done], "finished": finished,
            "decision_seconds": decisions, "fallbacks": sum(1 for r in records if r.reason.get("fallback"))}


def summarize(plan: Plan) -> dict[str, Any]:
    """results.json's content: `problems.NAME.policies.POLICY`, and `policies` = the first problem's."""
    problems: dict[str, Any] = {}
    for name, prob in plan.problems.items():
        traces: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        notes: list[str] = []
        sequential = _sequential(prob, notes)
        for run in plan.runs:
            if run.problem != name:
                continue
            trace = run_trace(run)
            traces.setdefault(run.policy, [])
            if trace is not None:
                if sequential:
                    trace["reward"] = _reward_fraction(run, notes)
                traces[run.policy].append((run.seed, trace))
        problems[name] = _problem_results(prob, traces, plan.top)
        problems[name]["notes"] = problems[name]["notes"] + notes
    first = next(iter(problems.values()), {"policies": {}})
    return {"name": plan.name, "top": plan.top, "policies": first["policies"], "problems": problems}


def _sequential(prob: Problem, notes: list[str]) -> bool:
    """Whether the problem re-runs a sequential simulator (its reward fraction per step is computed); a note
    when it re-runs one whose reward fraction is not defined."""
    from controller.replay.sequential import SEQUENTIAL_SIMULATORS, applies

    if prob.kind != "campaign":
        return False
    why = applies(prob.base_config)
    if why is not None and (prob.base_config.get("instrument") or {}).get("name") in SEQUENTIAL_SIMULATORS:
        notes.append(f"{prob.name}: no reward fraction per step: {why}")
    return why is None


def _reward_fraction(run: Run, notes: list[str]) -> dict[str, Any] | None:
    """A run's reward-fraction trace, or None with a note saying why it has none."""
    from controller.errors import UserError
    from controller.replay.sequential import run_reward_fraction
    from simulators import SimulatorError

    try:
        out = run_reward_fraction(Path(run.store), run.config)
    except (SimulatorError, ValueError, TypeError, UserError) as exc:
        notes.append(f"{run.key}: no reward fraction per step ({exc})")
        return None
    if out is not None and out["mismatched"]:
        notes.append(f"{run.key}: {out['mismatched']} of {len(out['rewards'])} steps' recorded rewards are not what "
                     "the simulator gives when the run is stepped again; the fraction uses the recorded rewards")
    return out


def results_without_timings(folder: Path) -> dict[str, Any]:
    """A replay folder's results.json less every timing (seconds per decision differ between any two runs),
    so that two replays of the same plan compare equal."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if "second" not in k}
        return [strip(x) for x in v] if isinstance(v, list) else v

    return strip(json.loads((Path(folder) / RESULTS_FILE).read_text()))


def write_results(plan: Plan, folder: Path | None = None) -> dict[str, Any]:
    """Compute the results from the stores and write them to results.json in `folder` (default: the replay's
    own), atomically; returns them."""
    results = summarize(plan)
    from controller.report_html import write_atomic

    write_atomic(Path(folder or plan.out) / RESULTS_FILE, json.dumps(_finite(results), indent=1, allow_nan=False))
    return results


def _problem_results(prob: Problem, traces: dict[str, list[tuple[int, dict[str, Any]]]], top: float) -> dict[str, Any]:
    metrics = [o["metric"] for o in prob.objectives]
    maximize = [o["goal"] == "maximize" for o in prob.objectives]
    truth = _truth(prob, metrics)
    out: dict[str, Any] = {"kind": prob.kind, "budget": prob.budget, "objectives": prob.objectives, "notes": prob.notes,
                           "policies": {}}
    top_idx = None
    if truth is not None and len(metrics) == 1:
        values = truth[metrics[0]]
        top_idx = M.top_set(values, top, maximize[0])
        out.update(pool_size=len(values), top_count=len(top_idx),
                   random_top_fraction=M.random_top_fraction(np.arange(1, prob.budget + 1), len(values)).tolist())
    optimum = None if not prob.regret else (  # a known optimum that does not apply: best so far only (see notes)
        prob.optimum if prob.optimum is not None else _optimum(truth, traces, metrics, maximize))
    reference = _reference(truth, traces, prob) if len(metrics) > 1 else None
    if reference is not None:
        out["reference_point"] = reference.tolist()
        if truth is not None:
            from policies.pareto import hypervolume

            pool_hv = hypervolume(np.stack([truth[m] for m in metrics], axis=1), maximize, reference)
            out["pool_hypervolume"] = float(pool_hv)  # what measuring the whole pool would dominate
    if optimum is not None:
        out["optimum"] = optimum
        out["optimum_source"] = "simulator" if prob.optimum is not None else ("pool" if truth is not None else "best found")
    for policy, runs in traces.items():
        out["policies"][policy] = _policy_results(runs, metrics, maximize, top_idx, truth, optimum, reference)
    return out


def _policy_results(runs, metrics, maximize, top_idx, truth, optimum, reference) -> dict[str, Any]:
    res: dict[str, Any] = {"runs": len(runs), "finished": sum(t["finished"] for _, t in runs),
                           "seeds": [s for s, _ in runs], "fallbacks": sum(t["fallbacks"] for _, t in runs)}
    if not runs:
        return res
    secs = [s for _, t in runs for s in t["decision_seconds"]]
    res["seconds_per_decision_median"] = float(np.median(secs)) if secs else None
    res["seconds_per_decision_mean"] = float(np.mean(secs)) if secs else None
    if len(metrics) == 1:
        curves = [M.best_so_far([m[metrics[0]] for m in t["metrics"]], maximize[0]) for _, t in runs]
        _band(res, "best_so_far", M.Band.of(curves))
        if optimum is not None:
            _band(res, "regret", M.Band.of([M.regret(c, optimum, maximize[0]) for c in curves]))
    elif reference is not None:
        hv = [M.hypervolume_curve(np.array([[m[k] for k in metrics] for m in t["metrics"]]), maximize, reference)
              for _, t in runs]
        _band(res, "hypervolume", M.Band.of(hv))
    fractions = [t["reward"] for _, t in runs if t.get("reward") is not None]
    if fractions and len(fractions) == len(runs):  # sequential simulators: fraction of the max achievable reward
        _band(res, "reward_fraction", M.Band.of([f["fraction"] for f in fractions]))
        res["reward_fraction_at_budget"] = res["reward_fraction_mean"][-1]
        res["reward_fraction_mismatched"] = sum(f["mismatched"] for f in fractions)
    if top_idx is not None and all(None not in t["picks"] for _, t in runs):
        pool_size = len(truth[metrics[0]])
        band = M.Band.of([M.top_fraction(t["picks"], top_idx) for _, t in runs])
        _band(res, "top_fraction", band)
        mean = np.array(band.mean)
        ef = M.enhancement_factor(mean, pool_size)
        res["enhancement_factor"] = {"n": list(range(1, len(ef) + 1)), "ef": ef.tolist(), "at_budget": float(ef[-1])}
        res["acceleration_factor"] = M.acceleration_factor(mean, pool_size, len(top_idx))
    return res


def _band(res: dict[str, Any], name: str, band: M.Band) -> None:
    res[f"{name}_mean"], res[f"{name}_median"] = band.mean, band.median
    res[f"{name}_q25"], res[f"{name}_q75"] = band.q25, band.q75


def _truth(prob: Problem, metrics: list[str]) -> dict[str, np.ndarray] | None:
    """The pool's recorded objective values, row order = pool order (data-set and store-pool problems)."""
    if not prob.table:
        return None
    import pandas as pd

    frame = pd.read_parquet(prob.table)
    return {m: frame[m].to_numpy(dtype=float) for m in metrics}


def _optimum(truth, traces, metrics: list[str], maximize: list[bool]) -> float | None:
    """The pool's best value, or (no pool) the best any run of any policy found: regret is measured from it."""
    if len(metrics) != 1:
        return None
    if truth is not None:
        v = truth[metrics[0]]
        return float(v.max() if maximize[0] else v.min())
    seen = [m[metrics[0]] for runs in traces.values() for _, t in runs for m in t["metrics"]]
    if not seen:
        return None
    return float(max(seen) if maximize[0] else min(seen))


def _reference(truth, traces, prob: Problem) -> np.ndarray | None:
    """Hypervolume reference point: objectives' thresholds, else inferred from the pool (or all runs' data)."""
    from policies.base import Objective
    from policies.pareto import reference_point

    metrics = [o["metric"] for o in prob.objectives]
    if truth is not None:
        Y = np.stack([truth[m] for m in metrics], axis=1)
    else:
        rows = [[m[k] for k in metrics] for runs in traces.values() for _, t in runs for m in t["metrics"]]
        if not rows:
            return None
        Y = np.array(rows, dtype=float)
    thresholds = {o["metric"]: o.get("threshold") for o in prob.base_config.get("objectives", [])}
    objs = [Objective(o["metric"], o["goal"] == "maximize", thresholds.get(o["metric"])) for o in prob.objectives]
    ref, _ = reference_point(Y, objs)
    return np.asarray(ref, dtype=float)


def _finite(value: Any) -> Any:
    """NaN and inf as null: results.json is strict JSON."""
    from controller.store import json_safe

    return json_safe(value)
