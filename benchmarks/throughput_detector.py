"""Monte-Carlo throughput of the detector simulator: helical tracks propagated, scattered, smeared and fitted per second.

`run()` scans the number of tracks propagated at once (and, on CPU, one thread against all of them, since
a shared machine can make two OpenMP threads slower than one) and reports the best rate with the full scan.
Usage: python benchmarks/throughput_detector.py [--device cpu|cuda] [--seconds 3] [--compile] [--dtype float32]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import torch

from simulators.detector import DetectorSimulator

DESIGN = {"layers": 5, "r1": 40.0, "r2": 100.0, "r3": 200.0, "r4": 400.0, "r5": 700.0, "thickness": 100.0, "pitch": 25.0, "field": 2.0}
BATCHES = {"cpu": [1 << 12, 1 << 14, 1 << 16, 1 << 18], "cuda": [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 23]}


def _rate(sim: DetectorSimulator, batch: int, seconds: float, device: str) -> tuple[float, float]:
    """Tracks fitted per second, timing whole calls of `simulate_tracks` for about `seconds`, and the first call's seconds."""
    start = time.perf_counter()
    sim.simulate_tracks(DESIGN, batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    first = time.perf_counter() - start
    done, start = 0, time.perf_counter()
    while True:
        sim.simulate_tracks(DESIGN, batch)
        done += batch
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed, first


def run(device: str = "cpu", seconds: float = 3.0, compile: bool = False, dtype: str = "float32") -> dict[str, Any]:
    """Best Monte-Carlo throughput (tracks/s) over batch sizes (and CPU thread counts), spending about `seconds` in all."""
    kind = torch.device(device).type
    threads_before = torch.get_num_threads()
    thread_counts = sorted({1, threads_before}) if kind == "cpu" else [threads_before]
    grid = [(t, b) for t in thread_counts for b in BATCHES[kind]]
    scan = []
    try:
        for threads, batch in grid:
            torch.set_num_threads(threads)
            sim = DetectorSimulator(fidelity="montecarlo", device=device, dtype=dtype, batch_elements=batch, compile=compile, seed=0)
            rate, first = _rate(sim, batch, seconds / len(grid), device)
            scan.append({"threads": threads, "batch_size": batch, "tracks_per_second": rate, "first_call_seconds": first})
    finally:
        torch.set_num_threads(threads_before)
    best = max(scan, key=lambda row: row["tracks_per_second"])
    return {
        "benchmark": "detector_mc_throughput",
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if kind == "cuda" else platform.processor() or platform.machine(),
        "dtype": dtype,
        "compiled": compile,
        "layers": DESIGN["layers"],
        "tracks_per_second": best["tracks_per_second"],
        "batch_size": best["batch_size"],
        "threads": best["threads"],
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "scan": scan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--compile", action="store_true", help="fuse the kernel with torch.compile (compiling takes minutes)")
    args = parser.parse_args()
    print(json.dumps(run(args.device, args.seconds, args.compile, args.dtype), indent=2))


if __name__ == "__main__":
    main()
