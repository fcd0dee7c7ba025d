"""Controller overhead per trial (store + loop) with a zero-cost instrument and the random policy.

Prints JSON and a table. Target: < 2 ms per trial over 10,000 trials on a 2-core machine, and
memory that grows no faster than the history itself.
With --idle: the instrument idle fraction (time between one measurement's end and the next one's
start, over the wall time) of a 0.2 s instrument, the botorch policy, 1 worker and 60 trials, with
the next proposal computed while the trial runs (executor.lookahead 1, the default) and without (0).
Target: idle < 2% of wall time.
Usage: python benchmarks/loop_overhead.py [--trials 10000] [--workers 1] [--idle]
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


def sleepy(params: dict) -> dict:
    """A 0.2 s measurement of a smooth function (an instrument that waits rather than computes)."""
    time.sleep(0.2)
    return {"y": sum((params[f"x{i}"] - 0.3) ** 2 for i in range(4))}


def _config(function: str, policy: str, executor: dict, trials: int, store: Path):
    """A 4-d campaign measuring this module's `function`."""
    return parse_config({
        "name": function, "seed": 0,
        "space": {"parameters": [{"name": f"x{i}", "type": "real", "low": 0, "high": 1} for i in range(4)]},
        "objectives": [{"metric": "y"}],
        "instrument": {"kind": "function", "target": f"loop_overhead:{function}"},
        "policy": {"kind": policy}, "executor": executor, "budget": {"trials": trials}, "store": str(store),
    }, base_dir=Path(__file__).parent)


def idle_fraction(trials: int, lookahead: int) -> dict:
    """Instrument idle time over wall time, from the first measurement's start to the last one's end."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config("sleepy", "botorch", {"workers": 1, "lookahead": lookahead}, trials, Path(tmp) / "i.db")
        campaign = Campaign(cfg, reporter=SilentReporter())
        campaign.run()
        recs = [r for r in campaign.store.trials() if r.status == "completed"]
        campaign.close()
    spans = sorted((r.started_at, r.finished_at) for r in recs)
    wall = spans[-1][1] - spans[0][0]
    gaps = [max(0.0, b[0] - a[1]) for a, b in zip(spans, spans[1:])]
    model_gaps = gaps[10:]  # after botorch's initial design
    return {"lookahead": lookahead, "trials": len(recs), "wall_s": wall, "idle_s": sum(gaps),
            "idle_fraction": sum(gaps) / wall, "median_gap_ms_model_phase": 1000 * sorted(model_gaps)[len(model_gaps) // 2]}


class _Checkpoints(SilentReporter):
    """Samples time and traced memory at given trial counts."""

    def __init__(self, marks: list[int]):
        self.marks, self.samples, self._t0 = set(marks), [], time.perf_counter()

    def update(self, done: int, failed: int, best: float | None, note: str = "", fallbacks: int = 0) -> None:
        if done in self.marks:
            current, _ = tracemalloc.get_traced_memory()
            self.samples.append({"trials": done, "seconds": time.perf_counter() - self._t0, "traced_mb": current / 2**20})


def run(trials: int, workers: int, trace: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config("zero", "random", {"workers": workers}, trials, Path(tmp) / "o.db")
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
    ap.add_argument("--idle", action="store_true", help="measure the instrument idle fraction instead (60 trials)")
    args = ap.parse_args()
    if args.idle:
        rows = [idle_fraction(60, lookahead) for lookahead in (1, 0)]
        machine = f"{platform.machine()} {platform.processor() or ''} {platform.python_version()}".strip()
        print(json.dumps({"idle": rows, "machine": machine}, indent=1))
        print(f"\n{'lookahead':>9} {'trials':>6} {'wall s':>7} {'idle s':>7} {'idle %':>7} {'median gap ms':>14}")
        for r in rows:
            print(f"{r['lookahead']:>9} {r['trials']:>6} {r['wall_s']:>7.2f} {r['idle_s']:>7.2f} {100 * r['idle_fraction']:>7.2f}"
                  f" {r['median_gap_ms_model_phase']:>14.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return
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
