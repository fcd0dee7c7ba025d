"""Ray executor scaling: a 0.5 s instrument (a sleep, so a 2-core machine can show it), 1, 2, 4 and 8 Ray
workers, 64 trials, the botorch policy proposing while the workers measure (lookahead = workers, or
--lookahead-per-worker x workers).

Reports, per worker count, the measuring span (first submit to last result; Ray's start and the
actors' start-up excluded), the speedup over one worker, the workers' utilisation (time measuring
over workers x span; 1 - utilisation is their idle fraction), the part of their time they waited
with nothing to measure (no proposal ready), and the best y found (what deeper lookahead costs: its
proposals see fewer results). Targets: speedup >= 0.9 x N up to 8 workers, utilisation >= 90%. Then
Ray's overhead per trial against the local executor for a zero-cost instrument (one trial in flight,
submit to result).
Prints JSON and a table. Usage: python benchmarks/ray_scaling.py [--workers 1 2 4 8] [--trials 64]
[--lookahead-per-worker 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def sleepy(params: dict, seconds: float = 0.5) -> dict:
    """A measurement that waits (a stage move, an exposure) and returns a smooth 4-d function."""
    time.sleep(seconds)
    return {"y": sum((params[f"x{i}"] - 0.3) ** 2 for i in range(4))}


def zero(params: dict) -> dict:
    """A measurement that costs nothing, so only the executor is timed."""
    return {"y": params["x0"]}


def _config(executor: dict, trials: int, store: Path, seconds: float, seed: int):
    from controller import parse_config

    return parse_config({
        "name": "ray-scaling", "seed": seed,
        "space": {"parameters": [{"name": f"x{i}", "type": "real", "low": 0, "high": 1} for i in range(4)]},
        "objectives": [{"metric": "y"}],
        "instrument": {"kind": "function", "target": "ray_scaling:sleepy", "options": {"seconds": seconds}},
        "policy": {"kind": "botorch", "initial": 8}, "executor": executor, "budget": {"trials": trials},
        "store": str(store),
    }, base_dir=HERE)


def scaling(workers: int, trials: int, seconds: float, cpus: float, seed: int, lookahead: int) -> dict:
    """One campaign on `workers` Ray actors; the executor's own utilisation record."""
    from controller import Campaign
    from controller.progress import SilentReporter

    class Measured(Campaign):
        def _make_executor(self):
            self.executor = super()._make_executor()
            return self.executor

    executor = {"kind": "ray", "workers": workers, "cpus_per_worker": cpus, "lookahead": lookahead}
    with tempfile.TemporaryDirectory() as tmp:
        campaign = Measured(_config(executor, trials, Path(tmp) / "s.db", seconds, seed), reporter=SilentReporter())
        t0 = time.perf_counter()
        summary = campaign.run()
        total = time.perf_counter() - t0
        campaign.close()
    u = campaign.executor.utilisation
    return {"workers": workers, "seed": seed, "lookahead": lookahead, "completed": summary.completed, "fallbacks": summary.fallbacks["count"],
            "waited_for_policy": u.to_json()["waited_for_policy"],
            "best_y": float(summary.best["metrics"]["y"]) if summary.best else None, "span_s": u.span, "run_s": total, "utilisation": u.fraction, "idle_fraction": 1 - u.fraction,
            "ideal_s": trials * seconds / workers}


def overhead(trials: int) -> dict:
    """Seconds per zero-cost trial, submit to result, one in flight: the local executor and a warm Ray actor."""
    from controller.executors import LocalExecutor, RayExecutor, Trial
    from instruments.registry import build_instrument

    spec = {"kind": "function", "target": "ray_scaling:zero"}
    out = {}
    for name, ex in (("local", LocalExecutor(lambda: build_instrument(spec, HERE), workers=1)),
                     ("ray", RayExecutor(spec, str(HERE), seed=0, workers=1, cpus_per_worker=0.5))):
        for warm in range(20):
            ex.submit(Trial(warm, 1, {"x0": 0.5}))
            while not ex.completed(timeout=5.0):
                pass
        t0 = time.perf_counter()
        for i in range(trials):
            ex.submit(Trial(i, 1, {"x0": i / trials}))
            while not ex.completed(timeout=5.0):
                pass
        out[f"{name}_ms_per_trial"] = 1000 * (time.perf_counter() - t0) / trials
        ex.shutdown()
    out["ray_overhead_ms_per_trial"] = out["ray_ms_per_trial"] - out["local_ms_per_trial"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=0.5, help="the instrument's sleep")
    ap.add_argument("--overhead-trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lookahead", type=int, help="proposals computed ahead (default: --lookahead-per-worker x workers)")
    ap.add_argument("--lookahead-per-worker", type=float, default=1.0, help="lookahead per worker when --lookahead is not given")
    ap.add_argument("--repeats", type=int, default=1, help="runs per worker count, seeds --seed, --seed + 1, ...")
    ap.add_argument("--out", default=str(HERE / "out" / "ray_scaling.json"))
    args = ap.parse_args()
    import ray

    cpus = 2
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
             logging_level="WARNING")
    try:
        rows = [scaling(n, args.trials, args.seconds, cpus / max(args.workers), args.seed + k,
                        args.lookahead if args.lookahead is not None else max(1, round(args.lookahead_per_worker * n)))
                for n in args.workers for k in range(args.repeats)]
        base = next((r for r in rows if r["workers"] == 1), rows[0])
        for r in rows:
            r["speedup"] = base["span_s"] / r["span_s"] * base["workers"]
            r["speedup_over_n"] = r["speedup"] / r["workers"]
            r["met"] = r["speedup_over_n"] >= 0.9 and r["utilisation"] >= 0.9
        over = overhead(args.overhead_trials)
    finally:
        ray.shutdown()
    result = {"benchmark": "ray_scaling", "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load": os.getloadavg()[0], "trials": args.trials, "seconds": args.seconds,
              "policy": "botorch (initial 8)", "rows": rows, "overhead": over}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\n{'workers':>7} {'ahead':>5} {'seed':>4} {'span s':>7} {'ideal s':>7} {'speedup':>8} {'/N':>5} {'util':>6} "
          f"{'waited':>6} {'best y':>9} {'met':>4}")
    for r in rows:
        print(f"{r['workers']:>7} {r['lookahead']:>5} {r['seed']:>4} {r['span_s']:>7.2f} {r['ideal_s']:>7.2f} {r['speedup']:>8.2f} "
              f"{r['speedup_over_n']:>5.2f} {r['utilisation']:>6.1%} {r['waited_for_policy']:>6.1%} {r['best_y']:>9.2e} "
              f"{'yes' if r['met'] else 'no':>4}")
    print(f"\nper zero-cost trial: local {over['local_ms_per_trial']:.2f} ms, ray {over['ray_ms_per_trial']:.2f} ms "
          f"(overhead {over['ray_overhead_ms_per_trial']:.2f} ms)")


if __name__ == "__main__":
    main()
