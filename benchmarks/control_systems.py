"""Per-measurement cost of the EPICS and ophyd adapters, with the instrument itself made nearly free.

EPICS: the example IOC (examples/epics_ioc.py) on a loopback port with a 100,000 px/s stage, no
settling and a 1 ms dwell, so what is left is Channel Access round trips and the adapter's polling
(puts with completion, done-moving and readback checks, the trigger's wait, the reads). ophyd:
ophyd.sim SynAxis + SynGauss (instantaneous), `mode: direct` against `mode: bluesky` (a RunEngine
run per measurement, one event). Prints JSON; `--out FILE` keeps it.

Usage: python benchmarks/control_systems.py [--n 300] [--out benchmarks/results/control_systems.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from instruments.epics import EpicsInstrument  # noqa: E402
from instruments.ophyd import OphydInstrument  # noqa: E402

FACTORY = textwrap.dedent('''
    from ophyd.sim import SynAxis, SynGauss

    def make():
        motor = SynAxis(name="motor")
        return {"motor": motor, "det": SynGauss("det", motor, "motor", center=0.0, Imax=1.0, sigma=1.0)}
''')


def timed(measure, points: list[dict]) -> dict:
    """Latency percentiles (ms) and rate of `measure` over `points`, after 5 warm-up calls."""
    for p in points[:5]:
        measure(p)
    times = []
    t0 = time.perf_counter()
    for p in points:
        t = time.perf_counter()
        measure(p)
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    ms = np.array(times) * 1e3
    return {"n": len(points), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "per_s": round(len(points) / wall, 1)}


def epics(n: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(EPICS_CA_ADDR_LIST="127.0.0.1", EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_SERVER_PORT=str(port))
    ioc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "epics_ioc.py"), "--interfaces", "127.0.0.1",
                            "--speed", "100000", "--settle", "0", "--dwell", "0.001", "-q"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the IOC did not start")
                time.sleep(0.05)
        axes = {a: {"setpoint": a.upper(), "readback": f"{a.upper()}_RBV", "tolerance": 0.01, "done": f"{a.upper()}_DMOV"}
                for a in ("x", "y")}
        common = {"prefix": "aec:microscope:", "parameters": axes, "data": "SPECTRUM",
                  "metrics": {"peak_ratio": "PEAK_RATIO", "total_counts": "TOTAL_COUNTS"}}
        rng = np.random.default_rng(0)
        points = [{"x": float(x), "y": float(y)} for x, y in rng.uniform(0, 127, (n, 2))]
        out = {}
        for name, trigger in (("epics_done_pv", {"pv": "ACQUIRE", "done": "ACQUIRE_DONE"}),
                              ("epics_monitor", {"pv": "ACQUIRE", "monitor": "COUNTER"})):
            inst = EpicsInstrument(**common, trigger=trigger)
            out[name] = timed(inst.measure, points)
            inst.close()
        return out
    finally:
        ioc.kill()
        ioc.wait()


def ophyd(n: int) -> dict:
    folder = Path(tempfile.mkdtemp())
    (folder / "bench_devices.py").write_text(FACTORY)
    points = [{"x": float(x)} for x in np.linspace(-1, 1, n)]
    out = {}
    for mode in ("direct", "bluesky"):
        spec = {"devices": "bench_devices:make", "parameters": {"x": "motor"}, "metrics": {"y": {"device": "det"}},
                "mode": mode}
        inst = OphydInstrument(spec, base_dir=folder, parameter_names=["x"])
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(timed(inst.measure, points)))  # as an executor does
        worker.start()
        worker.join()
        out[f"ophyd_{mode}"] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="measurements per case")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()
    result = {"benchmark": "control_systems", "date": time.strftime("%Y-%m-%d"), "load": round(os.getloadavg()[0], 1),
              **epics(args.n), **ophyd(args.n)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
