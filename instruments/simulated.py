"""Any simulator from the `simulators` package as an instrument (one batch of one per measurement).

Placement: a simulator without a `device` option runs on the GPU its Ray worker was given (the Ray
executor's actor calls `set_worker_gpus()` with `ray.get_gpu_ids()` before it builds the instrument;
Ray sets CUDA_VISIBLE_DEVICES for a worker with `gpus_per_worker`), else on the CPU. Anywhere else
(the local executor, the Python API) a simulator stays on the CPU whatever CUDA_VISIBLE_DEVICES the
shell has: pass `device` to choose. A Ray worker given a GPU that torch cannot use measures on the
CPU, says so once in the log, and marks every measurement with a `fallback` reason, which the
campaign counts.
"""
from __future__ import annotations

import inspect
import logging
import os
from typing import Any

from instruments.base import InstrumentError, Measurement
from simulators import SimulatorError, create, factory
from simulators.base import as_batch

log = logging.getLogger(__name__)


class SimulatedInstrument:
    """Wraps `simulators.create(name, **options)`; a simulator error is a non-retryable InstrumentError."""

    def __init__(self, name: str, options: dict[str, Any] | None = None, seed: int | None = None):
        options = dict(options or {})
        try:
            factory_sig = _signature_of(name)
            if seed is not None and "seed" not in options and (factory_sig is None or "seed" in factory_sig):
                options["seed"] = seed
            self.fallback = _place_on_given_gpu(name, options, factory_sig)
            self.simulator = create(name, **options)
        except SimulatorError as exc:
            raise InstrumentError(f"instrument: simulator {name!r}: {exc}", retryable=False) from None
        except TypeError as exc:
            raise InstrumentError(f"instrument.options: simulator {name!r} does not take these options: {exc}", retryable=False) from None
        self.name = name
        self._names = [p["name"] for p in self.simulator.parameters()]
        self._device = getattr(self.simulator, "device", "cpu")

    def describe(self) -> dict[str, Any]:
        shape = getattr(self.simulator, "data_shape", lambda: None)()
        return {
            "kind": "simulator", "name": self.name, "parameters": self.simulator.parameters(),
            "metrics": self.simulator.metrics(), "data": None if shape is None else {"shape": list(shape)},
        }

    def measure(self, params: dict[str, Any]) -> Measurement:
        try:
            result = self.simulator.evaluate(as_batch(params, device=self._device))
        except SimulatorError as exc:
            raise InstrumentError(f"{self.name}: {exc}", retryable=False) from None
        metrics, sem, data, meta = result.row(0)
        meta = dict(meta)
        if self.fallback:
            meta["fallback"] = self.fallback
        return Measurement(metrics=metrics, sem=sem, data=data, metadata=meta)

    def move_cost(self, a: dict[str, Any], b: dict[str, Any]) -> float:
        fn = getattr(self.simulator, "move_cost", None)
        return float(fn(a, b)) if callable(fn) else 0.0

    @property
    def has_move_cost(self) -> bool:
        return callable(getattr(self.simulator, "move_cost", None))


_WORKER_GPUS: list[str] = []


def set_worker_gpus(ids: list[Any]) -> None:
    """Called by a Ray worker (one instrument per process) with `ray.get_gpu_ids()`: the GPUs Ray gave it."""
    _WORKER_GPUS[:] = [str(i) for i in ids]


def given_gpus() -> str:
    """The GPUs Ray gave this worker process ('0', '0,1'); '' outside a Ray worker or in one given none."""
    return ",".join(_WORKER_GPUS)


def _place_on_given_gpu(name: str, options: dict[str, Any], factory_sig: set[str] | None) -> str | None:
    """Set options['device'] to the given GPU where the user chose none; the fallback reason when torch cannot use it."""
    gpus = given_gpus()
    if not gpus or "device" in options or (factory_sig is not None and "device" not in factory_sig):
        return None
    import torch

    if torch.cuda.is_available():
        options["device"] = "cuda"
        log.info("simulator %s placed on the Ray worker's GPU %s", name, gpus)
        return None
    why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA driver or device is usable"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    reason = (f"simulator {name}: the Ray worker was given GPU {gpus} (CUDA_VISIBLE_DEVICES={visible}) but torch "
              f"cannot use it ({why}); measured on the CPU")
    options["device"] = "cpu"
    log.warning(reason)
    return reason


def _signature_of(name: str) -> set[str] | None:
    """Keyword names the simulator's constructor takes, or None when it takes any (**kwargs)."""
    params = inspect.signature(factory(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)
