"""The body of one Ray worker: it builds its instrument once, keeps it warm, and measures on request.

Runs in the Ray worker process; the actor has two threads so that `abort()` reaches a busy `measure()`.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from controller.executors.base import run_measurement
from instruments.base import InstrumentError, Measurement

log = logging.getLogger(__name__)


class InstrumentActor:
    """One instrument instance in its own worker process (and on the GPU Ray gave it, where the instrument can)."""

    def __init__(self, spec: dict[str, Any], base_dir: str, seed: int, parameter_names: list[str] | None):
        import ray

        from instruments.registry import build_instrument
        from instruments.simulated import set_worker_gpus

        set_worker_gpus(ray.get_gpu_ids())  # a simulator goes on the GPU Ray gave this worker, and only here
        self.error: str | None = None
        try:
            self.instrument = build_instrument(spec, base_dir, seed=seed, parameter_names=parameter_names)
        except InstrumentError as exc:
            self.instrument, self.error = None, str(exc)

    def ready(self) -> dict[str, Any]:
        """Whether the instrument was built (or why not), and where this worker runs."""
        return {"error": self.error, "pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES") or ""}

    def measure(self, params: dict[str, Any], context: dict[str, Any] | None = None) -> tuple[Measurement | None, str | None, bool, float, float]:
        """(measurement, error, retryable, started, finished); the times are this worker's own clock."""
        started = time.time()
        if self.instrument is None:
            return None, self.error, False, started, time.time()
        m, err, retry = run_measurement(self.instrument, params, context)
        return m, err, retry, started, time.time()

    def abort(self) -> bool:
        """The instrument's abort(), beside a running `measure`; False when it has none or it failed."""
        abort = getattr(self.instrument, "abort", None)
        if not callable(abort):
            return False
        try:
            abort()
        except Exception:  # noqa: BLE001 - a failing abort is logged; the executor kills the worker after its grace
            log.exception("abort() of the instrument failed")
            return False
        return True

    def close(self) -> bool:
        """The instrument's close() (threads, sockets, server connections), once; False when it has none or it failed."""
        instrument, self.instrument = self.instrument, None
        self.error = self.error or "the worker's instrument was closed"
        close = getattr(instrument, "close", None)
        if not callable(close):
            return False
        try:
            close()
        except Exception:  # noqa: BLE001 - logged; the executor kills the actor next anyway
            log.exception("close() of the instrument failed")
            return False
        return True
