"""Controller overhead per trial (store + loop) with a zero-cost instrument and the random policy.

Prints JSON and a table. Target: < 2 ms per trial over 10,000 trials on a 2-core machine, and
memory that grows no faster than the history itself.
Usage: python benchmarks/loop_overhead.py [--trials 10000] [--workers 1]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from controller import Campaign, parse_config
from controller.progress import SilentReporter


def zero(params: dict) -> dict:
    """A measurement that costs nothing, so only the controller is timed."""
    return {"y": params["x0"] + params["x1"]}


class _Checkpoints(SilentReporter):
    """Samples time and traced memory at given trial counts."""

    def __init__(self, marks: list[int]):
        self.marks, self.samples, self._t0 = set(marks), [], time.perf_counter()

    def update(self, done: int, failed: int, best: float | None, note: str = "") -> None:
        if done in self.marks:
            current, _ = tracemalloc.get_traced_memory()
            self.samples.append({"trials": done, "seconds": time.perf_counter() - self._t0, "traced_mb": current / 2**20})


def run(trials: int, workers: int, trace: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({
            "name": "overhead", "seed": 0,
            "space": {"parameters": [{"name": f"x{i}", "type": "real", "low": 0, "high": 1} for i in range(4)]},
            "objectives": [{"metric": "y"}],
            "instrument": {"kind": "function", "target": "loop_overhead:zero"},
            "policy": {"kind": "random"}, "executor": {"workers": workers},
            "budget": {"trials": trials}, "store": str(Path(tmp) / "o.db"),
        }, base_dir=Path(__file__).parent)
        marks = sorted({trials // 10, trials // 2, trials})
        reporter = _Checkpoints(marks)
        if trace:
            tracemalloc.start()
        campaign = Campaign(cfg, reporter=reporter)
        t0 = time.perf_counter()
        summary = campaign.run()
        elapsed = time.perf_counter() - t0
        if trace:
            tracemalloc.stop()
        campaign.close()
        db_mb = (Path(tmp) / "o.db").stat().st_size / 2**20
    return {"trials": summary.completed, "workers": workers, "seconds": elapsed,
            "ms_per_trial": 1000 * elapsed / summary.completed, "store_mb": db_mb,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "samples": reporter.samples,
            "traced": trace, "machine": f"{platform.machine()} {platform.processor() or ''} {platform.python_version()}".strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args()
    timing = run(args.trials, args.workers, trace=False)
    memory = run(max(args.trials // 2, 100), args.workers, trace=True)
    result = {"timing": timing, "memory": memory}
    print(json.dumps(result, indent=1))
    print(f"\n{'trials':>8} {'ms/trial':>9} {'store MB':>9} {'max RSS MB':>11}")
    print(f"{timing['trials']:>8} {timing['ms_per_trial']:>9.3f} {timing['store_mb']:>9.1f} {timing['max_rss_mb']:>11.0f}")
    print(f"\n{'trials':>8} {'traced MB':>10} {'KB/trial':>9}   (memory run, tracemalloc on)")
    for s in memory["samples"]:
        print(f"{s['trials']:>8} {s['traced_mb']:>10.2f} {1024 * s['traced_mb'] / s['trials']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
