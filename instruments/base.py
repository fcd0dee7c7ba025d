"""The Instrument protocol: what an instrument accepts, what one measurement returns, how it fails."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class InstrumentError(Exception):
    """A measurement failed; `retryable` says whether trying the same settings again may succeed."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class InstrumentTimeout(InstrumentError):
    """The instrument did not answer within the trial's timeout."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


@dataclass
class Measurement:
    """One measurement: scalar metrics, their standard errors where known, an optional data product."""

    metrics: dict[str, float]
    data: np.ndarray | None = None
    sem: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_value(cls, value: Any, default_metric: str = "y") -> "Measurement":
        """Accept what user code returns: a Measurement, a float, or a dict of metrics (`sem`/`data` keys allowed)."""
        if isinstance(value, Measurement):
            return value
        if isinstance(value, (bool, np.bool_)):
            raise InstrumentError(f"the instrument returned {value!r}; expected a number or a dict of metrics", retryable=False)
        if isinstance(value, (int, float, np.floating, np.integer)):
            return cls(metrics={default_metric: float(value)})
        if isinstance(value, dict):
            value = dict(value)
            data = value.pop("data", None)
            sem = value.pop("sem", {}) or {}
            metadata = value.pop("metadata", {}) or {}
            metrics = {}
            for key, v in value.items():
                try:
                    if isinstance(v, (bool, np.bool_)):
                        raise TypeError("a boolean is not a reading")
                    metrics[str(key)] = float(v)
                except (TypeError, ValueError):
                    raise InstrumentError(
                        f"metric {key!r} is {v!r}; expected a number", retryable=False
                    ) from None
            return cls(
                metrics=metrics,
                data=None if data is None else np.asarray(data),
                sem=_sem(sem),
                metadata=dict(metadata),
            )
        raise InstrumentError(
            f"the instrument returned {type(value).__name__}; expected a number or a dict of metrics",
            retryable=False,
        )


def _sem(sem: Any) -> dict[str, float]:
    """Standard errors as floats; anything else (a bool, a string, a non-dict) is the instrument's error."""
    if not isinstance(sem, dict):
        raise InstrumentError(f"'sem' is {sem!r}; expected a dict of standard errors", retryable=False)
    out = {}
    for k, v in sem.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise InstrumentError(f"sem of {k!r} is {v!r}; expected a number", retryable=False)
        out[str(k)] = float(v)
    return out


@runtime_checkable
class Instrument(Protocol):
    """An instrument or simulator that measures one setting at a time (blocking)."""

    def describe(self) -> dict[str, Any]:
        """What it accepts and returns: {'parameters': [...], 'metrics': [...], 'data': {'shape': ..., 'dtype': ...}}."""
        ...

    def measure(self, params: dict[str, Any]) -> Measurement:
        """Measure at `params`; may raise InstrumentError."""
        ...


def move_cost_of(instrument: Any):
    """The instrument's `move_cost(a, b) -> seconds` if it has one, else None."""
    fn = getattr(instrument, "move_cost", None)
    return fn if callable(fn) else None
