"""Spectra per second of the microscope simulator at several batch sizes; the best one is reported.

Wall-clock rates are the result; rates per CPU-second of this process are reported beside them
because on a shared machine they say what the code costs when other work steals the cores.

    python benchmarks/throughput_microscope.py [cpu|cuda] [seconds] [threads]
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any

import torch

from simulators.microscope import MicroscopeSimulator

BATCH_SIZES = (1, 16, 256, 2048, 8192)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(device: str = "cpu", seconds: float = 3.0, threads: int | None = None, **options: Any) -> dict[str, Any]:
    """Measure spectra/s for each batch size (seconds split between them) on the default specimen.

    `threads` sets torch's intra-op threads for the run (on a busy machine 1 avoids OpenMP stalls);
    other keywords are microscope options.
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    sim = MicroscopeSimulator(device=device, **options)
    hi_x, hi_y = sim.width - 1, sim.height - 1
    generator = torch.Generator().manual_seed(0)
    per_size = seconds / len(BATCH_SIZES)
    rates: dict[int, float] = {}
    cpu_rates: dict[int, float] = {}
    for b in BATCH_SIZES:
        params = {
            "x": torch.rand(b, generator=generator, dtype=torch.float64) * hi_x,
            "y": torch.rand(b, generator=generator, dtype=torch.float64) * hi_y,
        }
        sim.evaluate(params)
        _sync(device)
        done, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while True:
            sim.evaluate(params)
            done += b
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= per_size:
                break
        rates[b] = done / elapsed
        cpu_rates[b] = done / max(time.process_time() - cpu_start, 1e-9)
    best = max(rates, key=rates.get)
    return {
        "benchmark": "throughput_microscope",
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "image": sim.sample.name,
        "size": [sim.height, sim.width],
        "channels": sim.channels,
        "probe_sigma": sim.probe_sigma,
        "dtype": str(sim.dtype).replace("torch.", ""),
        "spectra_per_s_by_batch": {str(b): round(r, 1) for b, r in rates.items()},
        "spectra_per_cpu_s_by_batch": {str(b): round(r, 1) for b, r in cpu_rates.items()},
        "best_batch": best,
        "spectra_per_s": round(rates[best], 1),
    }


if __name__ == "__main__":
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps(run(device, seconds, threads), indent=2))
