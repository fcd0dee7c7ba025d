"""Validation of the detector simulator's options: each bad value named, with what was expected."""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from simulators.base import SimulatorError


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    whole = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and value == int(value)
    if not whole or value < minimum:
        raise SimulatorError(f"option {name!r} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise SimulatorError(f"option {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise SimulatorError(f"option {name!r} must be a finite number > 0, got {value!r}")
    return float(value)


def positive_floats(name: str, values: Any, length: int | None = None, allow_zero: bool = False) -> list[float]:
    """A list of finite positive numbers (non-negative with allow_zero), optionally of a given length."""
    shape = f"a list of {length} numbers" if length else "a list of numbers"
    listed = isinstance(values, Sequence) and not isinstance(values, (str, bytes)) and len(values) > 0
    if not listed or (length is not None and len(values) != length):
        raise SimulatorError(f"option {name!r} must be {shape}, got {values!r}")
    out = []
    for v in values:
        ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
        if not ok:
            raise SimulatorError(f"option {name!r} must hold finite numbers {'>= 0' if allow_zero else '> 0'}, got {values!r}")
        out.append(float(v))
    return out
