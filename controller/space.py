"""Parameters, linear constraints and candidate pools; encode to and decode from the unit cube.

Policies see only `EncodedSpace` (unit cube or pool rows). This module is the one place that
knows about log scales, integer steps, choice values and pool tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.config import ParameterConfig, PoolConfig, SpaceConfig
from controller.constraints import SpaceError, infeasible_constraints, parse_linear_constraint
from controller.errors import UserError
from instruments.recorded import read_columns
from policies.base import EncodedSpace, LinearConstraint


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # real | integer | choice
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    values: tuple[Any, ...] = ()

    @classmethod
    def from_config(cls, p: ParameterConfig) -> "Parameter":
        return cls(
            name=p.name, type=p.type, low=float(p.low or 0.0), high=float(p.high or 0.0),
            log=p.log, values=tuple(p.values or ()),
        )

    @property
    def levels(self) -> int | None:
        if self.type == "choice":
            return len(self.values)
        if self.type == "integer" and not self.log:
            return int(self.high - self.low) + 1
        return None

    def encode(self, value: Any) -> float:
        if self.type == "choice":
            matches = [i for i, v in enumerate(self.values) if v == value or str(v) == str(value)]
            if not matches:
                raise SpaceError(f"{self.name}={value!r} is not one of {list(self.values)}")
            return matches[0] / (len(self.values) - 1)
        v = float(value)
        if not (self.low - 1e-9 * abs(self.low) - 1e-12 <= v <= self.high + 1e-9 * abs(self.high) + 1e-12):
            raise SpaceError(f"{self.name}={v:g} is outside [{self.low:g}, {self.high:g}]")
        if self.log:
            return (math.log(v) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (v - self.low) / (self.high - self.low)

    def decode(self, u: float) -> Any:
        u = min(max(float(u), 0.0), 1.0)
        if self.type == "choice":
            return self.values[int(round(u * (len(self.values) - 1)))]
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        if self.type == "integer":
            return int(min(max(round(v), self.low), self.high))
        return min(max(v, self.low), self.high)


class Space:
    """A campaign's search space: parameters, linear constraints, and optionally a pool table."""

    def __init__(
        self,
        parameters: list[Parameter],
        constraints: list[str] | None = None,
        pool: np.ndarray | None = None,
        pool_extra: dict[str, np.ndarray] | None = None,
    ):
        self.parameters = parameters
        self.names = [p.name for p in parameters]
        self.by_name = {p.name: p for p in parameters}
        self.constraint_texts = list(constraints or [])
        self.linear: list[tuple[dict[str, float], str, float]] = [
            parse_linear_constraint(t, self.by_name) for t in self.constraint_texts
        ]
        self.pool = pool
        self.pool_extra = pool_extra or {}
        self._encoded_pool = None if pool is None else self._encode_columns(pool)

    # construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: SpaceConfig | None, base_dir: Path, simulator: Any = None) -> "Space":
        """Build from the campaign's `space:` section; a simulator fills in what the section leaves out."""
        if cfg is None or (cfg.parameters is None and cfg.pool is None):
            if simulator is None:
                raise UserError("space: required unless the instrument is a simulator")
            params = [Parameter.from_config(ParameterConfig(**p)) for p in simulator.parameters()]
            constraints = list(getattr(simulator, "constraints", lambda: [])())
            constraints += list(cfg.constraints if cfg else [])
            return cls(params, constraints)
        if cfg.parameters is not None:
            return cls([Parameter.from_config(p) for p in cfg.parameters], cfg.constraints)
        columns = cls._pool_columns(cfg.pool, base_dir, simulator)
        return cls.from_columns(columns, cfg.constraints, wanted=cfg.pool.columns)

    @staticmethod
    def _pool_columns(pool: PoolConfig, base_dir: Path, simulator: Any) -> dict[str, np.ndarray]:
        if pool.grid is not None:
            axes = {n: np.linspace(a.low, a.high, a.count) for n, a in pool.grid.items()}
            mesh = np.meshgrid(*axes.values(), indexing="ij")
            return {n: m.reshape(-1) for n, m in zip(axes, mesh)}
        if pool.simulator:
            if simulator is None or not hasattr(simulator, "candidates"):
                raise UserError("space.pool.simulator: the instrument is not a simulator with a candidate table")
            return {k: np.asarray(v) for k, v in simulator.candidates().items()}
        return read_table(base_dir / pool.file if not Path(pool.file).is_absolute() else Path(pool.file), "space.pool.file")

    @classmethod
    def from_columns(
        cls, columns: dict[str, np.ndarray], constraints: list[str] | None = None, wanted: list[str] | None = None
    ) -> "Space":
        """A pool space from a table: numeric columns are parameters, others ride along as labels."""
        if wanted:
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise UserError(f"space.pool.columns: {missing} not in the table (it has {sorted(columns)})")
        numeric = {
            k: v.astype(float) for k, v in columns.items()
            if np.issubdtype(np.asarray(v).dtype, np.number) and (wanted is None or k in wanted)
        }
        extra = {k: np.asarray(v) for k, v in columns.items() if k not in numeric}
        if not numeric:
            raise UserError("space.pool: the table has no numeric column to use as a parameter")
        n = {len(v) for v in columns.values()}
        if len(n) != 1 or 0 in n:
            raise UserError("space.pool: the table is empty or its columns differ in length")
        params = []
        for name, col in numeric.items():
            if not np.all(np.isfinite(col)):
                raise UserError(f"space.pool: column {name!r} has missing or non-finite values")
            lo, hi = float(col.min()), float(col.max())
            params.append(Parameter(name=name, type="real", low=lo, high=hi if hi > lo else lo + 1.0))
        table = np.stack([numeric[p.name] for p in params], axis=1)
        return cls(params, constraints, pool=table, pool_extra=extra)

    # encoding ---------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return len(self.parameters)

    def _encode_columns(self, table: np.ndarray) -> np.ndarray:
        out = np.empty_like(table, dtype=float)
        for j, p in enumerate(self.parameters):
            out[:, j] = (table[:, j] - p.low) / (p.high - p.low)
        return out

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        missing = [n for n in self.names if n not in params]
        if missing:
            raise SpaceError(f"missing parameters: {', '.join(missing)}")
        return np.array([p.encode(params[p.name]) for p in self.parameters], dtype=float)

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        return {p.name: p.decode(u) for p, u in zip(self.parameters, np.asarray(x, dtype=float))}

    def pool_params(self, index: int) -> dict[str, Any]:
        """The pool row `index` as parameters, with any label columns."""
        assert self.pool is not None
        row = {n: float(v) for n, v in zip(self.names, self.pool[index])}
        for k, col in self.pool_extra.items():
            v = col[index]
            row[k] = v.item() if hasattr(v, "item") else v
        return row

    def encoded(self) -> EncodedSpace:
        constraints = []
        for coeffs, op, rhs in self.linear:
            # sum a_i v_i (op) rhs with v_i = low_i + span_i * x_i  ->  BoTorch's  sum c_i x_i >= r
            idx = tuple(self.names.index(n) for n in coeffs)
            a = np.array([coeffs[n] for n in coeffs])
            lows = np.array([self.by_name[n].low for n in coeffs])
            spans = np.array([self.by_name[n].high - self.by_name[n].low for n in coeffs])
            c, r = a * spans, rhs - float(a @ lows)
            if op == "<=":
                c, r = -c, -r
            constraints.append(LinearConstraint(indices=idx, coefficients=tuple(float(v) for v in c), rhs=float(r)))
        levels = [None if self.pool is not None else p.levels for p in self.parameters]
        return EncodedSpace(
            names=list(self.names),
            levels=levels,
            categorical=[p.type == "choice" for p in self.parameters],
            linear_constraints=constraints,
            pool=self._encoded_pool,
        )

    def satisfies(self, params: dict[str, Any]) -> bool:
        for coeffs, op, rhs in self.linear:
            lhs = sum(a * float(params[n]) for n, a in coeffs.items())
            if (op == "<=" and lhs > rhs + 1e-9 * max(1.0, abs(rhs))) or (op == ">=" and lhs < rhs - 1e-9 * max(1.0, abs(rhs))):
                return False
        return True

    def describe(self) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in dict(name=p.name, type=p.type, low=p.low, high=p.high, log=p.log, values=list(p.values)).items()
             if v not in ((), [], False) or k in ("low", "high")}
            for p in self.parameters
        ]


def read_table(path: Path, field: str) -> dict[str, np.ndarray]:
    """Columns of a CSV, Parquet or .npz table; UserError names the field and file when it cannot."""
    try:
        return read_columns(path)
    except ValueError as exc:
        raise UserError(f"{field}: {exc}") from None
