"""Seconds per `propose` for aec's BoTorch policy and for Ax, as the history grows.

Hartmann6 data (d=6) at 50, 200, 1,000 and 5,000 observations, batches of q=1 and q=4, and a
65,536-point candidate pool; for each setting a fresh policy is built in its own process (so a
hung or slow setting can be cut off with --timeout) and `propose(history, q, [])` is timed
--repeats times. Ax's cost grows quickly with the number of trials, so Ax is
run only up to --ax-max-n observations. Reports the median time per propose and per candidate;
the first call is kept apart (it includes building the model, and for Ax replaying the history
into a fresh Client), and before each later call the history gains one more observation, as in a
campaign. `--loop N` also times closed loops of N evaluations from an empty history (the issue's
reference: Ax's Client on a 25-trial Hartmann6 loop), median over the proposals from --loop-from.

    python benchmarks/bo_latency.py --out benchmarks/out/bo_latency.json
    python benchmarks/bo_latency.py --ns '' --pool-size 0 --loop 25 --loop-seeds 5
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bo_common import (
    OUT_DIR,
    build_policy,
    environment,
    evaluate,
    fmt,
    history_from_points,
    make_problem,
    parse_json_option,
    parse_list,
    print_table,
    ResultFile,
    run_campaign,
)
from policies.base import Observation

PROBLEM = "hartmann6"
DATA_SEED = 0


def settings(ns: list[int], qs: list[int], pool_size: int, pool_n: int) -> list[dict[str, int]]:
    out = [{"n": n, "q": q, "pool": 0} for n in ns for q in qs]
    if pool_size:
        out += [{"n": pool_n, "q": q, "pool": pool_size} for q in qs]
    return out


def measure(policy: str, n: int, q: int, pool: int, repeats: int, options: dict[str, Any]) -> dict[str, Any]:
    """Time `repeats` proposals of q candidates from a fresh policy on n Hartmann6 observations."""
    sim, problem = make_problem(PROBLEM, DATA_SEED)
    d = sim.dim
    if pool:
        P = torch.quasirandom.SobolEngine(d, scramble=True, seed=DATA_SEED + 1).draw(pool, dtype=torch.float64).numpy()
        problem.space.pool = P
        rows = np.random.default_rng(DATA_SEED).choice(pool, size=n + repeats, replace=False)
        history = history_from_points(sim, P[rows[:n]], pool_index=[int(i) for i in rows[:n]])
        extra, extra_index = P[rows[n:]], [int(i) for i in rows[n:]]
    else:
        X = torch.quasirandom.SobolEngine(d, scramble=True, seed=DATA_SEED).draw(n + repeats, dtype=torch.float64).numpy()
        history = history_from_points(sim, X[:n])
        extra, extra_index = X[n:], [None] * repeats
    t0 = time.perf_counter()
    pol = build_policy(policy, problem, options)
    build_s = time.perf_counter() - t0
    inner: list[float] = []
    if hasattr(pol, "_generate"):  # AxPolicy: time Ax's own get_next_trials apart from the replay
        generate = pol._generate

        def timed(k: int):
            t = time.perf_counter()
            try:
                return generate(k)
            finally:
                inner.append(time.perf_counter() - t)

        pol._generate = timed
    times, counts = [], []
    for k in range(repeats):
        if k:  # one more observation before each later call, as in a campaign
            metrics = evaluate(sim, extra[k - 1 : k])[0]
            history.append(Observation(trial_id=len(history), x=extra[k - 1], metrics=metrics, pool_index=extra_index[k - 1]))
        t = time.perf_counter()
        proposals = pol.propose(history, q, [])
        times.append(time.perf_counter() - t)
        counts.append(len(proposals))
        if pool:
            used = history.used_pool_indices()
            assert all(p.pool_index is not None and p.pool_index not in used for p in proposals)
    steady = times[1:] if len(times) > 1 else times
    return {
        "status": "ok",
        "build_s": build_s,
        "times_s": times,
        "first_s": times[0],
        "median_s": float(np.median(steady)),
        "per_candidate_s": float(np.median(steady)) / q,
        "candidates": counts,
        "ax_get_next_trials_s": inner or None,
    }


def measure_loop(policy: str, budget: int, seed: int, start: int, options: dict[str, Any]) -> dict[str, Any]:
    """Seconds per propose in a closed loop of `budget` Hartmann6 evaluations from an empty history."""
    sim, problem = make_problem(PROBLEM, seed)
    pol = build_policy(policy, problem, options)
    history, seconds = run_campaign(pol, sim, budget)
    best = float(np.min(history.Y(sim.metrics())[:, 0]))
    return {
        "status": "ok", "times_s": seconds, "median_s": float(np.median(seconds[start:])),
        "regret": best - float(sim.optimal_value),
    }


def run_worker(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        if "loop" in spec:
            out = measure_loop(spec["policy"], spec["loop"], spec["seed"], spec["start"], spec["options"])
        else:
            out = measure(spec["policy"], spec["n"], spec["q"], spec["pool"], spec["repeats"], spec["options"])
    except Exception as exc:
        out = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))


def run_isolated(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a child process, cut off after `timeout` seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"over {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": "error", "error": (proc.stderr or proc.stdout)[-2000:], "wall_s": time.perf_counter() - t0}
    out = json.loads(lines[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def report_loops(results: ResultFile, policies: list[str], plain: bool) -> list[dict[str, Any]]:
    """Median seconds per propose over the model phase of the closed loops, pooled over their seeds."""
    loops = sorted({(r["loop"], r["start"]) for r in results.runs if "loop" in r})
    rows, table = [], []
    for budget, start in loops:
        entry: dict[str, Any] = {"loop": budget, "from": start}
        row = [str(budget), str(start)]
        for policy in policies:
            runs = [r for r in results.runs if r.get("loop") == budget and r.get("start") == start and r["policy"] == policy and r["status"] == "ok"]
            times = [t for r in runs for t in r["times_s"][start:]]
            med = float(np.median(times)) if times else None
            regret = float(np.median([r["regret"] for r in runs])) if runs else None
            entry[policy] = {"median_s": med, "seeds": len(runs), "median_regret": regret}
            row += [fmt(med), str(len(runs)), fmt(regret)]
        a, b = entry.get("botorch", {}).get("median_s"), entry.get("ax", {}).get("median_s")
        entry["ax_over_aec"] = b / a if a and b else None
        row.append(fmt(entry["ax_over_aec"]) if entry["ax_over_aec"] else "-")
        rows.append(entry)
        table.append(row)
    if table:
        columns = ["loop", "from"] + [f"{p} {c}" for p in policies for c in ("s/propose", "seeds", "regret")]
        print_table("seconds per propose in closed Hartmann6 loops (median over seeds and proposals)", columns + ["ax / aec"], table, plain)
    return rows


def report(results: ResultFile, policies: list[str], plain: bool) -> list[dict[str, Any]]:
    keys = sorted({(r["pool"], r["n"], r["q"]) for r in results.runs if "loop" not in r})
    rows, table = [], []
    for pool, n, q in keys:
        entry: dict[str, Any] = {"n": n, "q": q, "pool": pool}
        row = [str(n), str(q), str(pool) if pool else "-"]
        for policy in policies:
            r = results.find(policy=policy, n=n, q=q, pool=pool)
            if r is None:
                row += ["-", "-", "-"]
                continue
            if r["status"] == "ok":
                entry[policy] = {k: r[k] for k in ("median_s", "per_candidate_s", "first_s")}
                row += [fmt(r["median_s"]), fmt(r["per_candidate_s"]), fmt(r["first_s"])]
            else:
                entry[policy] = {"status": r["status"], "error": r.get("error", "")[:200]}
                row += [r["status"], "", ""]
        a, b = entry.get("botorch"), entry.get("ax")
        ratio = b["median_s"] / a["median_s"] if isinstance(a, dict) and isinstance(b, dict) and "median_s" in a and "median_s" in b else None
        entry["ax_over_aec"] = ratio
        row.append(fmt(ratio) if ratio else "-")
        rows.append(entry)
        table.append(row)
    columns = ["n obs", "q", "pool"]
    for policy in policies:
        columns += [f"{policy} s/propose", f"{policy} s/cand", f"{policy} 1st call s"]
    print_table("seconds per propose (median of repeated calls; Hartmann6, d=6)", columns + ["ax / aec"], table, plain)
    return rows


def _outcome(record: dict[str, Any]) -> str:
    if record["status"] == "ok":
        return f"{fmt(record['median_s'])} s/propose"
    return f"{record['status']}: {record.get('error', '')[:300]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--policies", default="botorch,ax", help="comma-separated policy kinds")
    parser.add_argument("--problems", default=PROBLEM, help="only hartmann6 (kept for a uniform CLI)")
    parser.add_argument("--seeds", type=int, default=1, help="data seeds (only 1 is used; kept for a uniform CLI)")
    parser.add_argument("--ns", default="50,200,1000,5000", help="history sizes")
    parser.add_argument("--qs", default="1,4", help="batch sizes")
    parser.add_argument("--pool-size", type=int, default=65536, help="candidate pool rows (0: no pool setting)")
    parser.add_argument("--pool-n", type=int, default=200, help="observations in the pool setting")
    parser.add_argument("--repeats", type=int, default=3, help="timed proposals per setting")
    parser.add_argument("--ax-max-n", type=int, default=1000, help="skip Ax above this many observations")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before one setting is cut off")
    parser.add_argument("--loop", type=int, default=0, help="also time closed loops of this many evaluations (0: none)")
    parser.add_argument("--loop-seeds", type=int, default=3, help="seeds of the closed loops")
    parser.add_argument("--loop-from", type=int, default=12, help="time the loop's proposals from this index on (0-based; the model phase)")
    parser.add_argument("--botorch-options", help="JSON options for the botorch policy")
    parser.add_argument("--ax-options", help="JSON options for the ax policy")
    parser.add_argument("--out", default=str(OUT_DIR / "bo_latency.json"))
    parser.add_argument("--redo", action="store_true", help="measure again settings already in --out")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    if parse_list(args.problems) != [PROBLEM]:
        parser.error("bo_latency measures on hartmann6 only")

    policies = parse_list(args.policies)
    options = {"botorch": parse_json_option(args.botorch_options), "ax": parse_json_option(args.ax_options)}
    results = ResultFile(args.out, "bo_latency", meta={"environment": environment(), "problem": PROBLEM})
    if not args.report_only:
        todo = settings([int(v) for v in parse_list(args.ns)], [int(v) for v in parse_list(args.qs)], args.pool_size, args.pool_n)
        for s in todo:
            for policy in policies:
                key = {"policy": policy, **s}
                old = results.find(**key)
                if old is not None and not args.redo and old["status"] in ("ok", "skipped"):
                    continue
                if policy == "ax" and s["n"] > args.ax_max_n:
                    record = {"status": "skipped", "error": f"n > --ax-max-n {args.ax_max_n}"}
                else:
                    spec = {**key, "repeats": args.repeats, "options": options.get(policy) or {}}
                    record = run_isolated(spec, args.timeout)
                results.add({**key, **record}, replace_key=key)
                print(f"{policy:>8} n={s['n']:<5} q={s['q']} pool={s['pool']}: {_outcome(record)}", flush=True)
        for seed in range(args.loop_seeds if args.loop else 0):
            for policy in policies:
                key = {"policy": policy, "loop": args.loop, "start": args.loop_from, "seed": seed}
                old = results.find(**key)
                if old is not None and not args.redo and old["status"] == "ok":
                    continue
                record = run_isolated({**key, "options": options.get(policy) or {}}, args.timeout)
                results.add({**key, **record}, replace_key=key)
                print(f"{policy:>8} loop={args.loop} seed={seed}: {_outcome(record)}", flush=True)
    results.reload()
    rows = report(results, policies, args.plain)
    loops = report_loops(results, policies, args.plain)
    results.data["summary"] = rows
    results.data["loops"] = loops
    results.save()
    print(json.dumps({"benchmark": "bo_latency", "results": args.out, "summary": rows, "loops": loops}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
