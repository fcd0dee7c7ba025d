"""Novelty scoring throughput: events per second of NoveltyDetector.score, at the best settings found.

Events: 256- and 1024-feature vectors (the MLP autoencoder) and 64x64 cutouts (the convolutional
one), fp32 from a numpy array in host memory to scores in host memory, so conversion and
transfers are included. On the CPU it sweeps intra-op threads and batch sizes (and bf16, which
pays only where the CPU has native bf16 matrix instructions); with CUDA it also runs the GPU path
(pinned host buffers, host-to-device copies on a side stream overlapped with compute) in fp32 and
bf16, with and without torch.compile. Reports the best rate per event kind and device, the sweep,
and the latency of scoring one event (a campaign's `decide`). Networks are trained for a
couple of epochs only: the rate does not depend on the weights.

    python benchmarks/novelty_throughput.py [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import torch

from policies.selection import DetectorOptions, NoveltyDetector

TARGET_256_CPU = 2e5


def _events(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32)


def _detector(shape: tuple[int, ...], device: str) -> NoveltyDetector:
    det = NoveltyDetector(DetectorOptions(epochs=2, device="cpu"), seed=0).fit(_events(shape, 400, 1))
    if device != "cpu":
        blob = det.to_bytes()
        det, _ = NoveltyDetector.from_bytes(blob, device=device)
    return det


def _rate(det: NoveltyDetector, X: np.ndarray, repeats: int) -> float:
    det.score(X[: min(len(X), 4 * det.options.score_batch)])  # warm-up (allocations, compile)
    if det.device.type == "cuda":
        torch.cuda.synchronize()
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        det.score(X)
        best = max(best, len(X) / (time.perf_counter() - t))
    return best


def sweep(kind: str, shape: tuple[int, ...], device: str, quick: bool) -> list[dict[str, Any]]:
    image = len(shape) == 2
    n = (2048 if image else 131072 if shape[0] <= 256 else 32768) if device == "cpu" else (32768 if image else 1 << 20)
    if quick:
        n //= 4
    X = _events(shape, n)
    det = _detector(shape, device)
    rows = []
    if device == "cpu":
        batches = [64, 256, 1024] if image else [512, 1024, 2048, 4096, 8192]
        threads = sorted({1, torch.get_num_threads()})
        configs = [dict(threads=t, score_batch=b, precision="fp32", compile=False) for t in threads for b in batches]
        configs += [dict(threads=t, score_batch=batches[len(batches) // 2], precision="bf16", compile=False) for t in threads]
    else:
        batches = [1024, 4096, 16384] if image else [16384, 65536, 262144]
        configs = [dict(threads=None, score_batch=b, precision=p, compile=c)
                   for b in batches for p in ("fp32", "bf16") for c in (False, True)]
    for cfg in configs:
        for key, value in cfg.items():
            setattr(det.options, key, value)
        det._compiled_model = None
        # bf16 without native bf16 matrix units is emulated and slow: fewer rows give the same rate
        rows_used = X if not (device == "cpu" and cfg["precision"] == "bf16") else X[: max(len(X) // 8, 256)]
        try:
            rate = _rate(det, rows_used, repeats=2 if quick else 3)
            rows.append({"events": kind, "device": device, **cfg, "rows": len(rows_used), "rate": rate})
        except Exception as exc:  # e.g. torch.compile without a compiler: report, go on
            rows.append({"events": kind, "device": device, **cfg, "rows": n, "error": f"{type(exc).__name__}: {exc}"})
        print(f"{kind:>14} {device:>4} {cfg}: {rows[-1].get('rate', 0):,.0f} events/s {rows[-1].get('error', '')}", flush=True)
    return rows


def single_event_latency(shape: tuple[int, ...]) -> float:
    """Median seconds to score one event (the online selector's path), CPU."""
    det = _detector(shape, "cpu")
    x = _events(shape, 1)
    for _ in range(20):
        det.score(x)
    times = []
    for _ in range(200):
        t = time.perf_counter()
        det.score(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    kinds = {"256 features": (256,), "1024 features": (1024,), "64x64 cutouts": (64, 64)}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: list[dict[str, Any]] = []
    for device in devices:
        for kind, shape in kinds.items():
            rows += sweep(kind, shape, device, args.quick)
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = f"{r['events']} / {r['device']}"
        if "rate" in r and r["rate"] > best.get(key, {}).get("rate", 0):
            best[key] = r
    latency = single_event_latency((256,))

    from rich.console import Console
    from rich.table import Table

    table = Table(title="novelty scoring throughput (best setting)")
    for col in ("events / device", "events/s", "threads", "batch", "precision", "compile"):
        table.add_column(col, justify="right" if col != "events / device" else "left")
    for key, r in best.items():
        table.add_row(key, f"{r['rate']:,.0f}", str(r["threads"]), str(r["score_batch"]), r["precision"], str(r["compile"]))
    Console().print(table)
    cpu256 = best.get("256 features / cpu", {}).get("rate", 0.0)
    result = {
        "benchmark": "novelty_throughput",
        "best": {k: {kk: v[kk] for kk in ("rate", "threads", "score_batch", "precision", "compile")} for k, v in best.items()},
        "target_256_cpu": TARGET_256_CPU,
        "meets_target_256_cpu": cpu256 >= TARGET_256_CPU,
        "single_event_latency_s_256": latency,
        "sweep": rows,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
