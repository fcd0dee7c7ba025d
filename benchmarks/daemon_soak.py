"""Soak test of `aec daemon`: N trials against a fast instrument (or the EPICS IOC) with the API under load.

A real daemon subprocess runs an open campaign of `--trials` trials; a scraper reads /metrics every
second and a client polls /status and /trials five times a second each. Reports the trial rate, the
API's latency (p50, p99, max) per endpoint, and the daemon's resident memory after warm-up and at the end.
Targets: API p99 < 50 ms; memory flat within 10% from 10% of the trials to the end.
With --attribute: no subprocess; the daemon's service runs in this process under tracemalloc, and the Python
memory that grew per trial from 10% to 50% of the trials is listed by file:line (dicts, lists and floats are
reused from CPython's free lists, so a line names where a block was first allocated, not always its holder).
Usage: python benchmarks/daemon_soak.py [--trials 10000] [--workers 2] [--epics | --sleep S] [--attribute] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "soak-token"


SLEEPY = """import math, time

def branin(p):
    time.sleep({sleep})
    x1, x2 = 15 * p["x0"] - 5, 15 * p["x1"]
    return {{"y": (x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
             + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10}}
"""


def campaign(folder: Path, trials: int, workers: int, epics: bool, sleep: float) -> Path:
    """A campaign file: the branin simulator (about a millisecond a trial), branin behind a `sleep` s wait,
    or the IOC's microscope over Channel Access."""
    if sleep > 0:
        (folder / "soakfns.py").write_text(SLEEPY.format(sleep=sleep))
        data = {"seed": 0, "objectives": [{"metric": "y", "goal": "minimize"}], "policy": {"kind": "random"},
                "space": {"parameters": [{"name": f"x{i}", "type": "real", "low": 0.0, "high": 1.0} for i in range(2)]},
                "instrument": {"kind": "function", "target": "soakfns:branin"}}
    elif epics:
        data = yaml.safe_load((ROOT / "examples" / "microscope_epics.yaml").read_text())
        data["policy"] = {"kind": "random"}
    else:
        data = {"name": "soak", "seed": 0, "objectives": [{"metric": "y", "goal": "minimize"}],
                "instrument": {"kind": "simulator", "name": "branin", "options": {}}, "policy": {"kind": "random"}}
    data.update({"name": "soak", "budget": {"trials": trials}, "store": str(folder / "soak.db"),
                 "executor": {"kind": "local", "workers": workers, "timeout": 30, "attempts": 3},
                 "daemon": {"port": 0}})
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ioc(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "examples" / "epics_ioc.py"), "--interfaces", "127.0.0.1",
                             "--speed", "100000", "--settle", "0", "--dwell", "0.001"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_url(log: Path, proc: subprocess.Popen, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        for line in log.read_text().splitlines():
            if '"listening"' in line:
                return json.loads(line)["reason"]
        time.sleep(0.1)
    raise SystemExit("the daemon did not start listening")


class Poller(threading.Thread):
    """GET `path` every `period` seconds, keeping each call's latency; failures are counted, not hidden."""

    def __init__(self, url: str, path: str, period: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.path, self.period, self.stop = url, path, period, stop
        self.latencies: list[float] = []
        self.errors = 0
        self.last: httpx.Response | None = None

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = client.get(self.url + self.path)
                    self.latencies.append(time.perf_counter() - t0)
                    self.errors += r.status_code != 200
                    self.last = r
                except httpx.HTTPError:
                    self.errors += 1
                self.stop.wait(max(0.0, self.period - (time.perf_counter() - t0)))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


def soak(trials: int, workers: int, epics: bool, sleep: float = 0.0) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="aec-soak-"))
    env = {**os.environ, "AEC_DAEMON_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    ioc = None
    if epics:
        port = str(free_port())
        env.update({"EPICS_CA_SERVER_PORT": port, "EPICS_CA_ADDR_LIST": "127.0.0.1", "EPICS_CA_AUTO_ADDR_LIST": "NO",
                    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1"})
        ioc = start_ioc(env)
        time.sleep(3.0)
    log = folder / "daemon.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "daemon", str(campaign(folder, trials, workers, epics, sleep))],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        url = wait_url(log, proc)
        ps = psutil.Process(proc.pid)
        rss_ready = ps.memory_info().rss
        stop = threading.Event()
        pollers = [Poller(url, "/metrics", 1.0, stop), Poller(url, "/status", 0.2, stop),
                   Poller(url, f"/trials?since={max(trials - 100, 0)}&limit=100", 0.2, stop),
                   Poller(url, "/health", 0.2, stop)]
        for p in pollers:
            p.start()
        rss_warm = None
        while True:
            st = httpx.get(url + "/status", timeout=10).json()
            if rss_warm is None and st["completed"] + st["failed"] >= trials // 10:
                rss_warm = ps.memory_info().rss
            if st["state"] in ("finished", "unhealthy", "stopped"):
                break
            time.sleep(0.5)
        rss_end = ps.memory_info().rss
        stop.set()
        for p in pollers:
            p.join()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if ioc is not None:
            ioc.terminate()
            ioc.wait()
    rates = trial_rates(folder / "soak.db")
    api = {p.path.split("?")[0]: {**percentiles(p.latencies), "errors": p.errors} for p in pollers}
    every = [x for p in pollers for x in p.latencies]
    rss_warm = rss_warm or rss_ready
    return {
        "benchmark": "daemon_soak", "date": time.strftime("%Y-%m-%d"), "instrument": ("epics-ioc" if epics else f"branin + {sleep:g} s wait" if sleep else "branin simulator"),
        "trials": trials, "workers": workers, "completed": st["completed"], "failed": st["failed"], "state": st["state"],
        **rates,
        "api": api, "api_all": percentiles(every),
        "rss_mb": {"ready": round(rss_ready / 2**20, 1), "at_10pct": round(rss_warm / 2**20, 1),
                   "end": round(rss_end / 2**20, 1)},
        "rss_growth_from_10pct": round(rss_end / rss_warm - 1, 4),
        "store_mb": round(sum(f.stat().st_size for f in folder.glob("soak.db*") if f.is_file()) / 2**20, 1),
        "exit_code": code, "load_avg": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def attribute(trials: int, workers: int, epics: bool, sleep: float) -> dict:
    """Traced Python memory per trial between 10% and 50% of the trials of an in-process daemon, by file:line."""
    import gc
    import tracemalloc

    sys.path.insert(0, str(ROOT))
    from controller.campaign import Campaign
    from controller.config import DaemonConfig
    from controller.daemon.service import DaemonService
    from controller.preflight import load_config

    if epics:
        raise SystemExit("--attribute runs without the IOC (the simulator or --sleep)")
    folder = Path(tempfile.mkdtemp(prefix="aec-attribute-"))
    sys.path.insert(0, str(folder))
    campaign_ = Campaign(load_config(campaign(folder, trials, workers, False, sleep)))
    service = DaemonService(campaign_, DaemonConfig(port=0))
    marks, snaps, done = (trials // 10, trials // 2), {}, [0]
    observe = service._observe

    def sample(event: str, fields: dict) -> None:
        observe(event, fields)
        if event == "completed":
            done[0] += 1
            if done[0] in marks:
                gc.collect()
                snaps[done[0]] = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])

    campaign_.observer = sample
    tracemalloc.start()
    service.start()
    while len(snaps) < len(marks) and not service.done.is_set():
        service.metrics.render(), service.view.optimum(), service.snapshot()  # what /metrics and /status do
        time.sleep(0.2)
    service.stop()
    service.done.wait(60)
    service.close()
    campaign_.close()
    tracemalloc.stop()
    n = marks[1] - marks[0]
    diff = snaps[marks[1]].compare_to(snaps[marks[0]], "lineno")
    top = [{"where": str(d.traceback), "bytes_per_trial": round(d.size_diff / n, 1),
            "objects_per_trial": round(d.count_diff / n, 2)} for d in diff[:15] if abs(d.size_diff) >= n]
    return {"benchmark": "daemon_memory_attribution", "date": time.strftime("%Y-%m-%d"), "trials": trials,
            "between": list(marks), "bytes_per_trial": round(sum(d.size_diff for d in diff) / n, 1), "by_line": top}


def trial_rates(store: Path) -> dict:
    """Trials per second over the whole campaign and in its first and last tenth, from the journal's times."""
    sys.path.insert(0, str(ROOT))
    from controller.store import Store

    with Store(store) as s:
        times = sorted(r.finished_at for r in s.trials() if r.finished_at is not None)
        start = min(r.proposed_at for r in s.trials())
    tenth = max(len(times) // 10, 1)

    def rate(a: float, b: float, n: int) -> float:
        return round(n / max(b - a, 1e-9), 1)

    return {"wall_s": round(times[-1] - start, 1), "trials_per_s": rate(start, times[-1], len(times)),
            "trials_per_s_first_tenth": rate(start, times[tenth - 1], tenth),
            "trials_per_s_last_tenth": rate(times[-tenth - 1], times[-1], tenth)}


def table(r: dict) -> str:
    rows = [("trials", f"{r['completed']} completed, {r['failed']} failed ({r['state']})"),
            ("rate", f"{r['trials_per_s']} trials/s over {r['wall_s']} s (first tenth {r['trials_per_s_first_tenth']}, "
                     f"last tenth {r['trials_per_s_last_tenth']})"),
            ("memory", f"ready {r['rss_mb']['ready']} MB, at 10% {r['rss_mb']['at_10pct']} MB, end {r['rss_mb']['end']} MB "
                       f"({100 * r['rss_growth_from_10pct']:+.1f}%)"),
            ("store", f"{r['store_mb']} MB"), ("exit", str(r["exit_code"]))]
    rows += [(f"GET {path}", f"p50 {v.get('p50_ms')} ms, p99 {v.get('p99_ms')} ms, max {v.get('max_ms')} ms "
                             f"({v['n']} calls, {v['errors']} errors)") for path, v in r["api"].items()]
    rows.append(("API p99 (all)", f"{r['api_all'].get('p99_ms')} ms (target < 50 ms)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--workers", type=int, help="default 2; 1 with --epics (one stage: the daemon refuses more)")
    parser.add_argument("--epics", action="store_true", help="measure through the example IOC (examples/epics_ioc.py)")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each measurement waits (a slower instrument)")
    parser.add_argument("--attribute", action="store_true", help="in-process tracemalloc: what grows per trial")
    parser.add_argument("--out", help="write the JSON here (default benchmarks/out/daemon_soak.json)")
    args = parser.parse_args()
    if args.epics and not (ROOT / "examples" / "epics_ioc.py").exists():
        raise SystemExit("--epics needs examples/epics_ioc.py")
    workers = args.workers if args.workers is not None else 1 if args.epics else 2
    if args.attribute:
        result = attribute(args.trials, workers, args.epics, args.sleep)
    else:
        result = soak(args.trials, workers, args.epics, args.sleep)
    name = "daemon_memory_attribution.json" if args.attribute else "daemon_soak.json"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "out" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    if not args.attribute:
        print(table(result))


if __name__ == "__main__":
    main()
