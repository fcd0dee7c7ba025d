"""Vectorised, seeded simulators (torch; CPU or GPU). `create(name, **options)` builds one by name."""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

from simulators.base import SimResult, Simulator, SimulatorError

_REGISTRY: dict[str, str] = {
    "telescope": "simulators.telescope:TelescopeSimulator",
    "microscope": "simulators.microscope:MicroscopeSimulator",
    "detector": "simulators.detector:DetectorSimulator",
}


def _function_names() -> list[str]:
    from simulators.functions import TEST_FUNCTIONS

    return sorted(TEST_FUNCTIONS)


def available() -> list[str]:
    """Names `create` accepts."""
    return sorted(list(_REGISTRY) + _function_names())


def factory(name: str) -> Callable[..., Simulator]:
    """The constructor behind `name` (keyword options only); SimulatorError if there is none."""
    key = name.lower()
    if key in _REGISTRY:
        module, cls = _REGISTRY[key].split(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as exc:
            raise SimulatorError(f"simulator {name!r} is not available: {exc}") from exc
    from simulators.functions import TEST_FUNCTIONS, TestFunctionSimulator

    if key in TEST_FUNCTIONS:
        return functools.partial(TestFunctionSimulator, key)
    raise SimulatorError(f"unknown simulator {name!r}; expected one of {', '.join(available())}")


def create(name: str, **options: Any) -> Simulator:
    """Build the simulator called `name` with its options; SimulatorError names what is wrong."""
    return factory(name)(**options)


__all__ = ["SimResult", "Simulator", "SimulatorError", "available", "create", "factory"]
