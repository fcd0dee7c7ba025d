"""The simulator seam: a vectorised, seeded model of an instrument that evaluates a batch per call.

A simulator describes its own parameters (in the campaign file's shape), so a campaign can take
its space from the simulator. `evaluate` takes a batch of settings as tensors of shape (b,) and
returns metrics as tensors of shape (b,), optional standard errors, and an optional data product
of shape (b, ...). Stateful simulators (a telescope's clock, a microscope's drift) advance their
state in `evaluate`. Simulators import nothing from controller, instruments or policies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


class SimulatorError(ValueError):
    """Bad options or a setting the simulated instrument cannot take (e.g. a target below the horizon)."""


@dataclass
class SimResult:
    """A batch of b simulated measurements."""

    metrics: dict[str, torch.Tensor]
    sem: dict[str, torch.Tensor] = field(default_factory=dict)
    data: torch.Tensor | None = None
    metadata: list[dict[str, Any]] | None = None

    def row(self, i: int) -> tuple[dict[str, float], dict[str, float], Any, dict[str, Any]]:
        """The i-th measurement as plain Python: (metrics, sem, data as numpy or None, metadata)."""
        metrics = {k: float(v[i]) for k, v in self.metrics.items()}
        sem = {k: float(v[i]) for k, v in self.sem.items()}
        data = None if self.data is None else self.data[i].detach().cpu().numpy()
        meta = self.metadata[i] if self.metadata else {}
        return metrics, sem, data, meta


@runtime_checkable
class Simulator(Protocol):
    name: str

    def parameters(self) -> list[dict[str, Any]]:
        """Parameter specs as in the campaign file: [{'name':..., 'type': 'real', 'low':..., 'high':...}, ...]."""
        ...

    def metrics(self) -> list[str]:
        ...

    def evaluate(self, params: dict[str, torch.Tensor]) -> SimResult:
        """Evaluate a batch: each params[name] has shape (b,)."""
        ...


def as_batch(params: dict[str, Any], device: torch.device | str = "cpu", dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Turn one setting {'x': 0.3, 'material': 'si'} into a batch of one; strings stay as lists."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, str):
            out[k] = [v]
        else:
            out[k] = torch.as_tensor([v], dtype=dtype, device=device)
    return out


# Optional members a simulator may have, which adapters and policies use when present:
#   move_cost(a: dict, b: dict) -> float        seconds to go from setting a to setting b
#   candidates() -> dict[str, numpy.ndarray]    a finite pool of settings (e.g. a target catalogue)
#   constraints() -> list[str]                  linear parameter constraints, campaign-file syntax
#   objectives() -> list[dict]                  suggested objectives [{'metric':..., 'goal':...}]
#   data_shape() -> tuple[int, ...] | None      shape of one data product
#   optimal_value: float                        known optimum, so regret is one subtraction
#   reset(seed: int) -> None                    restart the simulated world
