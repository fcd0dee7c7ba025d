"""Any simulator from the `simulators` package as an instrument (one batch of one per measurement)."""
from __future__ import annotations

import inspect
from typing import Any

from instruments.base import InstrumentError, Measurement
from simulators import SimulatorError, create, factory
from simulators.base import as_batch


class SimulatedInstrument:
    """Wraps `simulators.create(name, **options)`; a simulator error is a non-retryable InstrumentError."""

    def __init__(self, name: str, options: dict[str, Any] | None = None, seed: int | None = None):
        options = dict(options or {})
        try:
            factory_sig = _signature_of(name)
            if seed is not None and "seed" not in options and (factory_sig is None or "seed" in factory_sig):
                options["seed"] = seed
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
        return Measurement(metrics=metrics, sem=sem, data=data, metadata=dict(meta))

    def move_cost(self, a: dict[str, Any], b: dict[str, Any]) -> float:
        fn = getattr(self.simulator, "move_cost", None)
        return float(fn(a, b)) if callable(fn) else 0.0

    @property
    def has_move_cost(self) -> bool:
        return callable(getattr(self.simulator, "move_cost", None))


def _signature_of(name: str) -> set[str] | None:
    """Keyword names the simulator's constructor takes, or None when it takes any (**kwargs)."""
    params = inspect.signature(factory(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)
