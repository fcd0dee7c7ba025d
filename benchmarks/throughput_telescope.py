"""Throughput of the telescope simulator's per-field features: a catalogue of 10^5 fields per step.

Each step advances the clock by one minute and computes every field's observation features
(altitude, airmass, moon separation, sky brightness, seeing, depth, slew time, visit history...),
the work an RL scheduler or a pool policy does before each decision. Rates per CPU-second of this
process come beside the wall-clock ones, since on a shared machine other work steals the cores.
`python -m benchmarks.throughput_telescope [device] [seconds] [threads]` (from the repository root) prints JSON.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from simulators.telescope import FEATURES, TelescopeSimulator

N_FIELDS = 100_000


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(device: str = "cpu", seconds: float = 3.0, n_fields: int = N_FIELDS, dtype: str = "float32",
        threads: int | None = None) -> dict:
    """Steps per second and fields per second of `features()` over a random catalogue of n_fields.

    `threads` sets torch's CPU threads for the run (None keeps the current setting); on a busy
    machine one thread is often faster than several.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _measure(device, seconds, n_fields, dtype)
    finally:
        torch.set_num_threads(previous)


def _measure(device: str, seconds: float, n_fields: int, dtype: str) -> dict:
    rng = np.random.default_rng(0)
    catalogue = {"ra": rng.uniform(0.0, 360.0, n_fields), "dec": np.degrees(np.arcsin(rng.uniform(-1.0, 0.6, n_fields)))}
    build = time.perf_counter()
    sim = TelescopeSimulator(catalogue=catalogue, n_transients=n_fields // 10, images=False, device=device,
                             dtype=dtype, seed=0)
    build = time.perf_counter() - build
    evening, morning = sim.night(0)
    for _ in range(3):
        sim.features()
    _sync(device)
    steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        sim.clock = evening + ((steps * 60.0) % ((morning - evening) * 86400.0 - 120.0)) / 86400.0
        features = sim.features()
        steps += 1
    _sync(device)
    elapsed = time.perf_counter() - start
    cpu = max(time.process_time() - cpu_start, 1e-9)
    return {
        "benchmark": "telescope_features", "device": str(sim.device), "dtype": dtype,
        "device_name": torch.cuda.get_device_name(sim.device) if sim.device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "n_fields": n_fields, "n_features": len(FEATURES),
        "steps": steps, "seconds": round(elapsed, 3), "steps_per_s": round(steps / elapsed, 2),
        "fields_per_s": round(steps * n_fields / elapsed, 1), "cpu_seconds": round(cpu, 3),
        "fields_per_cpu_s": round(steps * n_fields / cpu, 1), "build_s": round(build, 3),
        "finite": bool(torch.isfinite(features).all()),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(run(args[0] if args else "cpu", float(args[1]) if len(args) > 1 else 3.0,
                         threads=int(args[2]) if len(args) > 2 else None), indent=2))
