"""A real `aec daemon` in a subprocess on a free loopback port, and instruments with injected faults."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

TOKEN = "test-token-0123456789"

INSTRUMENTS = textwrap.dedent('''
    import math, os, random, threading, time
    from pathlib import Path

    HERE = Path(__file__).parent

    def bowl(p):
        time.sleep(float(os.environ.get("AEC_TEST_SLEEP", "0.01")))
        return {"y": (p["x0"] - 0.3) ** 2 + (p["x1"] - 0.6) ** 2, "cost": p["x0"] + p["x1"]}

    def spectrum(p):
        import numpy as np
        return {**bowl(p), "data": np.linspace(p["x0"], p["x1"], 16).astype(np.float32)}

    _rng = random.Random(int(os.environ.get("AEC_TEST_FAULT_SEED", "0")))
    _lock = threading.Lock()

    def faulty(p):
        """About 10% of calls fail: an exception, a hang past the watchdog, or a NaN reading.
        While a file BROKEN exists beside this module, every call raises (a dead instrument)."""
        if (HERE / "BROKEN").exists():
            raise RuntimeError("stage controller not responding")
        with _lock:
            u = _rng.random()
        if u < 0.05:
            raise RuntimeError("detector readout error")
        if u < 0.07:
            time.sleep(30)
        if u < 0.10:
            return {"y": float("nan")}
        return bowl(p)
''')


def write_campaign(folder: Path, name: str = "d", *, target: str = "dfns:bowl", **extra: Any) -> Path:
    """A campaign file (and its instrument module) in `folder`; its store is NAME.db beside it."""
    (folder / "dfns.py").write_text(INSTRUMENTS)
    data: dict[str, Any] = {
        "name": name, "seed": 5,
        "space": {"parameters": [{"name": "x0", "type": "real", "low": 0.0, "high": 1.0},
                                 {"name": "x1", "type": "real", "low": 0.0, "high": 1.0}],
                  "constraints": ["x0 + x1 <= 1.8"]},
        "objectives": [{"metric": "y", "goal": "minimize"}],
        "instrument": {"kind": "function", "target": target},
        "policy": {"kind": "random"},
        "budget": {"trials": 20},
        "store": str(folder / f"{name}.db"),
        "daemon": {"port": 0, "backoff": 0.05, "backoff_max": 0.2},
    }
    data.update(extra)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Daemon:
    """`aec daemon ARGS` with its JSON log in a file; `url` once the API answers /health."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None, wait: bool = True):
        self.log_path = cwd / f"daemon-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "daemon", *args], cwd=cwd, stdout=subprocess.PIPE,
            stderr=self.log, text=True,
            env={**os.environ, "AEC_DAEMON_TOKEN": TOKEN, "PYTHONPATH": str(cwd), **(env or {})})
        self.url = ""
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.url:
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}: {self.log_path.read_text()}"
            assert time.monotonic() < deadline, f"daemon not listening: {self.log_path.read_text()}"
            for line in self.lines():
                if line.get("event") == "listening":
                    self.url = line["reason"]
            time.sleep(0.05)
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API never answered /health"
            time.sleep(0.05)

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for text in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(text))
            except json.JSONDecodeError:
                out.append({"raw": text})
        return out

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, self.url + path, json=body, headers=headers, timeout=10)

    def status(self) -> dict[str, Any]:
        return self.get("/status").json()

    def wait_state(self, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st["state"] in states:
                return st
            assert time.monotonic() < deadline, f"state {st['state']}, waited for {states}: {st}"
            time.sleep(0.1)

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()
