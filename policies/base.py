"""The Policy seam: the problem as policies see it (unit cube or pool), the history, proposals.

Policies never do I/O and keep no state that matters for persistence: everything they need is
in `History`, which the store rebuilds, so a restarted campaign proposes from the same inputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

STRICT_ENV = "AEC_STRICT"  # AEC_STRICT=1: every policy fallback raises (the test suite runs so)


def strict_mode(explicit: bool | None = None) -> bool:
    """Whether a fallback must raise: the campaign's `policy: {strict: ...}` when set, else $AEC_STRICT."""
    if explicit is not None:
        return bool(explicit)
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class PolicyFallbackError(RuntimeError):
    """A policy would have fallen back (to Sobol points, a jittered model, the CPU) in strict mode."""

    def __init__(self, policy: str, reason: str):
        super().__init__(f"policy {policy} would have fallen back (strict mode): {reason}")
        self.policy, self.reason = policy, reason


@dataclass(frozen=True)
class Objective:
    metric: str
    maximize: bool = False
    threshold: float | None = None

    def sign(self) -> float:
        """+1 when larger is better; multiply a metric by it to get a value to maximise."""
        return 1.0 if self.maximize else -1.0


@dataclass(frozen=True)
class OutcomeConstraint:
    """metric op bound, with op one of '<=' or '>='."""

    metric: str
    op: str
    bound: float

    def satisfied(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound


@dataclass(frozen=True)
class LinearConstraint:
    """sum(coefficients[i] * x[indices[i]]) >= rhs, in unit-cube coordinates (BoTorch's convention)."""

    indices: tuple[int, ...]
    coefficients: tuple[float, ...]
    rhs: float


@dataclass
class EncodedSpace:
    """The search space in the unit cube [0, 1]^dim, as policies see it.

    levels[i] is None for a continuous dimension, else the number of allowed values K, which sit at
    k / (K - 1); categorical[i] marks unordered choices. `pool` (N x dim), when set, is the finite
    table of allowed candidates and proposals must name a row of it.
    """

    names: list[str]
    levels: list[int | None]
    categorical: list[bool]
    linear_constraints: list[LinearConstraint] = field(default_factory=list)
    pool: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return len(self.names)

    def snap(self, X: np.ndarray) -> np.ndarray:
        """Round the discrete dimensions of X (... x dim) to their allowed values and clip to [0, 1]."""
        X = np.clip(np.asarray(X, dtype=float), 0.0, 1.0).copy()
        for i, k in enumerate(self.levels):
            if k is not None:
                X[..., i] = np.round(X[..., i] * (k - 1)) / max(k - 1, 1)
        return X

    def feasible(self, X: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """Boolean mask (n,) of rows of X (n x dim) that satisfy every linear constraint."""
        X = np.atleast_2d(X)
        ok = np.ones(len(X), dtype=bool)
        for c in self.linear_constraints:
            lhs = X[:, list(c.indices)] @ np.asarray(c.coefficients)
            ok &= lhs >= c.rhs - tol
        return ok


@dataclass
class Problem:
    """Everything a policy is told once, at construction."""

    space: EncodedSpace
    objectives: list[Objective]
    constraints: list[OutcomeConstraint] = field(default_factory=list)
    move_cost: Callable[[np.ndarray, np.ndarray], float] | None = None
    seed: int = 0

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]


@dataclass
class Proposal:
    """A point to measure (unit cube; plus its pool row for pools) and why it was chosen.

    `reason["fallback"]` (a string) marks a proposal made by a fallback rather than the policy asked
    for; the campaign counts these in the progress line, the summary and `aec show`.
    """

    x: np.ndarray
    pool_index: int | None = None
    reason: dict[str, Any] = field(default_factory=dict)


@dataclass
class Observation:
    """One trial as the history holds it. status is 'completed' or 'failed'."""

    trial_id: int
    x: np.ndarray
    metrics: dict[str, float]
    status: str = "completed"
    pool_index: int | None = None
    sem: dict[str, float] = field(default_factory=dict)
    novelty: float | None = None


@dataclass
class History:
    """The completed and failed trials of a campaign, in completion order."""

    observations: list[Observation] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.observations)

    def append(self, obs: Observation) -> None:
        self.observations.append(obs)

    def completed(self) -> list[Observation]:
        return [o for o in self.observations if o.status == "completed"]

    def X(self, dim: int | None = None) -> np.ndarray:
        """Unit-cube inputs of completed trials, shape n x dim."""
        rows = [o.x for o in self.completed()]
        if not rows:
            return np.zeros((0, dim or 0))
        return np.vstack(rows)

    def Y(self, metrics: list[str]) -> np.ndarray:
        """Values of `metrics` for completed trials, shape n x len(metrics); NaN where a metric is missing."""
        return np.array(
            [[o.metrics.get(m, np.nan) for m in metrics] for o in self.completed()], dtype=float
        ).reshape(-1, len(metrics))

    def Yvar(self, metrics: list[str]) -> np.ndarray | None:
        """Squared standard errors for `metrics` when every completed trial reports them, else None."""
        done = self.completed()
        if not done or not all(all(m in o.sem for m in metrics) for o in done):
            return None
        return np.array([[o.sem[m] ** 2 for m in metrics] for o in done], dtype=float)

    def used_pool_indices(self) -> set[int]:
        return {o.pool_index for o in self.observations if o.pool_index is not None}


@runtime_checkable
class Policy(Protocol):
    """Decides what to measure next."""

    def propose(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        """Return n proposals (fewer only when a pool is exhausted), avoiding `pending` ones."""
        ...


@dataclass
class Decision:
    """What a data selector decided about one measurement's data product."""

    novelty: float | None
    keep: bool
    pvalue: float | None = None
    reason: str = ""


@runtime_checkable
class DataSelector(Protocol):
    """Decides, online, which data products to keep (policies/selection/ implements the real one)."""

    def decide(self, trial_id: int, data: np.ndarray | None, metrics: dict[str, float]) -> Decision:
        ...


class KeepAll:
    """The default selector: keep every data product, score nothing."""

    def decide(self, trial_id: int, data: np.ndarray | None, metrics: dict[str, float]) -> Decision:
        return Decision(novelty=None, keep=data is not None, reason="selection off: keep all")
