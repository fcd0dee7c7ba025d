"""The Policy seam: the problem as policies see it (unit cube or pool), the history, proposals.

Policies never do I/O and keep no state that matters for persistence: everything they need is
in `History`, which the store rebuilds, so a restarted campaign proposes from the same inputs.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
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


@dataclass(slots=True)
class Observation:
    """One trial as the history holds it. status is 'completed' or 'failed'."""

    trial_id: int
    x: np.ndarray
    metrics: dict[str, float]
    status: str = "completed"
    pool_index: int | None = None
    sem: dict[str, float] = field(default_factory=dict)
    novelty: float | None = None


COUNTS_ONLY_KINDS = frozenset({"random", "sobol", "grid", "raster"})
"""Policy kinds that read nothing of the history but len() and used_pool_indices(): a campaign running one
keeps a counts-only History, no row per trial (a daemon's memory stays flat over millions of trials)."""


class _Column:
    """A growable column of floats (rows x width) with a presence mask; capacity doubles when full."""

    __slots__ = ("values", "present")

    def __init__(self, capacity: int, width: int | None = None):
        shape = (capacity,) if width is None else (capacity, width)
        self.values = np.full(shape, np.nan)
        self.present = np.zeros(capacity, dtype=bool)

    def grown(self, capacity: int) -> "_Column":
        out = _Column.__new__(_Column)
        out.values = np.full((capacity, *self.values.shape[1:]), np.nan)
        out.values[: len(self.values)] = self.values
        out.present = np.zeros(capacity, dtype=bool)
        out.present[: len(self.present)] = self.present
        return out


class History:
    """The completed and failed trials of a campaign, in completion order, held as columns (numpy arrays).

    `observations` and `completed()` build Observation objects on demand; X(), Y(), Yvar() read the columns.
    Append-only, so `snapshot()` is free: it shares the arrays and sees the first len() rows only. With
    `counts_only` (COUNTS_ONLY_KINDS) no row is kept: only len(), the pool rows used and the last observation.
    """

    def __init__(self, observations: Iterable[Observation] = (), *, counts_only: bool = False):
        self.counts_only = counts_only
        self._n = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._completed = np.zeros(0, dtype=bool)
        self._pool = np.zeros(0, dtype=np.int64)  # -1: no pool row
        self._x: _Column | None = None
        self._novelty = _Column(0)
        self._metrics: dict[str, _Column] = {}
        self._sem: dict[str, _Column] = {}
        self._pool_used: set[int] = set()  # counts_only: the pool rows used (bounded by the pool)
        self._last: Observation | None = None
        self._shared = False  # a snapshot: its arrays are another history's, copied before its first append
        for obs in observations:
            self.append(obs)

    def __len__(self) -> int:
        return self._n

    def append(self, obs: Observation) -> None:
        self._last = obs
        if self.counts_only:
            if obs.pool_index is not None:
                self._pool_used.add(int(obs.pool_index))
            self._n += 1
            return
        i = self._n
        x = np.asarray(obs.x, dtype=float).reshape(-1)
        if self._x is None:
            self._x = _Column(len(self._ids), x.shape[0])
        elif x.shape[0] != self._x.values.shape[1]:
            raise ValueError(f"observation {obs.trial_id}: x has {x.shape[0]} values, the history {self._x.values.shape[1]}")
        if self._shared or i == len(self._ids):
            self._grow(max(16, 2 * i, len(self._ids)))
        self._ids[i] = obs.trial_id
        self._completed[i] = obs.status == "completed"
        self._pool[i] = -1 if obs.pool_index is None else int(obs.pool_index)
        self._x.values[i], self._x.present[i] = x, True
        if obs.novelty is not None:
            self._novelty.values[i], self._novelty.present[i] = obs.novelty, True
        for columns, values in ((self._metrics, obs.metrics), (self._sem, obs.sem)):
            for name, v in (values or {}).items():
                col = columns.get(name)
                if col is None:
                    col = columns[name] = _Column(len(self._ids))
                col.values[i], col.present[i] = v, True
        self._n = i + 1

    def _grow(self, capacity: int) -> None:
        """New arrays of `capacity` rows holding the old ones (a snapshot keeps the old arrays)."""
        def longer(a: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full(capacity, fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        self._ids, self._completed, self._pool = longer(self._ids, 0), longer(self._completed, False), longer(self._pool, -1)
        self._x = self._x.grown(capacity) if self._x is not None else None
        self._novelty = self._novelty.grown(capacity)
        self._metrics = {k: c.grown(capacity) for k, c in self._metrics.items()}
        self._sem = {k: c.grown(capacity) for k, c in self._sem.items()}
        self._shared = False

    def snapshot(self) -> "History":
        """This history as it is now, unchanged by later appends to either (arrays shared until one writes)."""
        out = copy.copy(self)
        out._metrics, out._sem, out._pool_used = dict(self._metrics), dict(self._sem), set(self._pool_used)
        out._shared = True  # its rows past len() belong to this history: it copies before its first append
        return out

    def _rows_kept(self, what: str) -> None:
        if self.counts_only:
            raise RuntimeError(f"{what}: this history keeps counts only (policy kinds {', '.join(sorted(COUNTS_ONLY_KINDS))})")

    def _rows(self, rows: Sequence[int] | np.ndarray) -> list[Observation]:
        """Observations of these rows, each column read once (a few microseconds a row)."""
        idx = np.asarray(rows, dtype=np.int64)
        if not len(idx):
            return []

        def column(c: _Column) -> tuple[list, list]:
            return c.values[idx].tolist(), c.present[idx].tolist()

        metrics = [(k, *column(c)) for k, c in self._metrics.items()]
        sems = [(k, *column(c)) for k, c in self._sem.items()]
        ids, done, pool = self._ids[idx].tolist(), self._completed[idx].tolist(), self._pool[idx].tolist()
        xs, (novelty, has_novelty) = self._x.values[idx], column(self._novelty)
        return [Observation(trial_id=ids[j], x=xs[j], metrics={k: v[j] for k, v, has in metrics if has[j]},
                            status="completed" if done[j] else "failed", pool_index=None if pool[j] < 0 else pool[j],
                            sem={k: v[j] for k, v, has in sems if has[j]},
                            novelty=novelty[j] if has_novelty[j] else None) for j in range(len(idx))]

    @property
    def observations(self) -> "_Observations":
        """Every trial in completion order, as a sequence of Observations built when read."""
        self._rows_kept("History.observations")
        return _Observations(self)

    def last(self) -> Observation | None:
        """The trial appended last (kept in counts-only histories too: stop conditions read it)."""
        return self._last

    def completed(self) -> list[Observation]:
        self._rows_kept("History.completed()")
        return self._rows(np.flatnonzero(self._completed[: self._n]))

    def X(self, dim: int | None = None) -> np.ndarray:
        """Unit-cube inputs of completed trials, shape n x dim."""
        self._rows_kept("History.X()")
        done = self._completed[: self._n]
        if not done.any():
            return np.zeros((0, dim or 0))
        return self._x.values[: self._n][done]

    def Y(self, metrics: list[str]) -> np.ndarray:
        """Values of `metrics` for completed trials, shape n x len(metrics); NaN where a metric is missing."""
        self._rows_kept("History.Y()")
        done = self._completed[: self._n]
        out = np.full((int(done.sum()), len(metrics)), np.nan)
        for j, m in enumerate(metrics):
            col = self._metrics.get(m)
            if col is not None:
                out[:, j] = col.values[: self._n][done]  # NaN where absent
        return out

    def Yvar(self, metrics: list[str]) -> np.ndarray | None:
        """Squared standard errors for `metrics` when every completed trial reports them, else None."""
        self._rows_kept("History.Yvar()")
        done = self._completed[: self._n]
        if not done.any() or not all(m in self._sem and self._sem[m].present[: self._n][done].all() for m in metrics):
            return None
        out = np.empty((int(done.sum()), len(metrics)))
        for j, m in enumerate(metrics):
            out[:, j] = self._sem[m].values[: self._n][done] ** 2
        return out

    def used_pool_indices(self) -> set[int]:
        if self.counts_only:
            return set(self._pool_used)
        pool = self._pool[: self._n]
        return set(pool[pool >= 0].tolist())


class _Observations(Sequence):
    """A History's rows as Observations, built when indexed (a slice gives a list)."""

    def __init__(self, history: History):
        self._history, self._n = history, len(history)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self._history._rows(range(*i.indices(self._n)))
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("history index out of range")
        return self._history._rows([i])[0]

    def __iter__(self):
        return iter(self._history._rows(range(self._n)))


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
