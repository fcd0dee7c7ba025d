"""`aec replay` on processes against Ray tasks: wall time of the same replay (the perovskite example's pool,
random, sobol and botorch, S seeds) and whether the curves agree.

    nice -n 10 python benchmarks/replay_ray.py --seeds 4 --budget 30 --out benchmarks/results/replay_ray.json

Each mode runs `aec replay` in a fresh process into a fresh folder, so a Ray mode's time includes starting
a local Ray and its workers (importing torch and botorch) and shutting it down.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
POOL = {"file": str(ROOT / "examples" / "data" / "perovskite_films.csv"), "name": "perovskite",
        "inputs": ["CsPbI3", "MAPbI3", "FAPbI3"], "objectives": ["instability:min"]}
MODES = {"processes, workers 2": {"workers": 2}, "Ray, cpus_per_run 1": {"ray": {"cpus_per_run": 1.0}},
         "Ray, cpus_per_run 0.5": {"ray": {"cpus_per_run": 0.5}}}


def _curves(out: Path) -> dict:
    from controller.replay.summary import results_without_timings

    return results_without_timings(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "replay_ray.json"))
    args = ap.parse_args()
    rows, curves = [], {}
    with tempfile.TemporaryDirectory(prefix="aec-replay-ray-") as tmp:
        for mode, extra in MODES.items():
            spec = {"datasets": [POOL], "policies": ["random", "sobol", "botorch"], "seeds": args.seeds, "budget": args.budget, **extra}
            path, out = Path(tmp) / f"{len(rows)}.yaml", Path(tmp) / f"r{len(rows)}"
            path.write_text(yaml.safe_dump(spec))
            t0 = time.time()
            argv = [sys.executable, "-m", "controller.cli", "replay", str(path), "--out", str(out), "--quiet"]
            proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            wall = time.time() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{mode}: exit {proc.returncode}: {proc.stderr.strip()}")
            curves[mode] = _curves(out)
            rows.append({"mode": mode, "runs": 3 * args.seeds, "budget": args.budget, "wall_s": round(wall, 1),
                         "load_1min": round(os.getloadavg()[0], 1)})
            print(json.dumps(rows[-1]), flush=True)
    first = next(iter(curves.values()))
    same = {mode: c == first for mode, c in curves.items()}
    result = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rows": rows,
              "curves_equal_to_processes": same}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(same))


if __name__ == "__main__":
    main()
