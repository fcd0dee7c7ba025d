"""Simulator throughput in one run: telescope features for 10^5 fields per step, microscope spectra/s,
detector Monte-Carlo tracks fitted/s; on CPU, and on CUDA too when a device is present (with GPU/CPU ratios).

Prints JSON, then a table. Targets: detector >= 10^6 tracks/s on the 2-core CPU, >= 10^8 on an H100.

    python benchmarks/sim_throughput.py [--seconds 4] [--devices cpu,cuda] [--threads 1] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
import throughput_detector  # noqa: E402
import throughput_microscope  # noqa: E402
import throughput_telescope  # noqa: E402

TARGETS = {"detector": {"cpu": 1e6, "cuda": 1e8}}


def _cases(seconds: float, threads: int | None) -> dict[str, tuple[str, Callable[[str], dict[str, Any]], str]]:
    """name -> (unit, runner(device), key of the rate in the runner's result)."""
    def detector(device: str) -> dict[str, Any]:
        if threads is not None and device == "cpu":
            torch.set_num_threads(threads)
        return throughput_detector.run(device, seconds)

    return {
        "telescope": ("fields/s", lambda d: throughput_telescope.run(d, seconds, threads=threads), "fields_per_s"),
        "microscope": ("spectra/s", lambda d: throughput_microscope.run(d, seconds, threads=threads), "spectra_per_s"),
        "detector": ("tracks/s", detector, "tracks_per_second"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per simulator and device")
    parser.add_argument("--devices", default="cpu,cuda", help="cuda is skipped when no device is present")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    cases = _cases(args.seconds, args.threads)
    rows: list[dict[str, Any]] = []
    for name, (unit, runner, key) in cases.items():
        for device in devices:
            detail = runner(device)
            rows.append({"simulator": name, "device": device, "device_name": detail.get("device_name", device),
                         "rate": float(detail[key]), "unit": unit, "target": TARGETS.get(name, {}).get(device),
                         "detail": detail})
    cpu_rate = {r["simulator"]: r["rate"] for r in rows if r["device"] == "cpu"}
    for r in rows:
        if r["device"] != "cpu" and r["simulator"] in cpu_rate:
            r["gpu_over_cpu"] = r["rate"] / cpu_rate[r["simulator"]]
        r["meets_target"] = None if r["target"] is None else r["rate"] >= r["target"]
    result = {"benchmark": "sim_throughput", "machine": f"{platform.machine()} {platform.processor()}".strip(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "results": rows}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    print(f"\n{'simulator':<11}{'device':<8}{'rate':>14}  {'unit':<10}{'target':>10}  {'met':<5}{'GPU/CPU':>8}")
    for r in rows:
        target = f"{r['target']:.0e}" if r["target"] else "-"
        met = "-" if r["meets_target"] is None else ("yes" if r["meets_target"] else "no")
        ratio = f"{r['gpu_over_cpu']:.1f}x" if "gpu_over_cpu" in r else "-"
        print(f"{r['simulator']:<11}{r['device']:<8}{r['rate']:>14,.0f}  {r['unit']:<10}{target:>10}  {met:<5}{ratio:>8}")


if __name__ == "__main__":
    main()
