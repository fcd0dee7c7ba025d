"""Parameters, linear constraints and candidate pools; encode to and decode from the unit cube.

Policies see only `EncodedSpace` (unit cube or pool rows). This module is the one place that
knows about log scales, integer steps, choice values and pool tables.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.config import ParameterConfig, PoolConfig, SpaceConfig
from controller.errors import UserError
from instruments.recorded import read_columns
from policies.base import EncodedSpace, LinearConstraint


class SpaceError(ValueError):
    """A space definition or a value that does not fit it."""


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


_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|([A-Za-z_]\w*)|(<=|>=|==|[<>=*/()+-])|(\S))")
MAX_NESTING = 100
"""Parentheses and unary signs nest at most this deep (the rest of the parser is iterative)."""

Linear = tuple[dict[str, float], float]


def parse_linear_constraint(text: str, params: dict[str, Any]) -> tuple[dict[str, float], str, float]:
    """'x1 + 2*x2 <= 10' -> ({'x1': 1, 'x2': 2}, '<=', 10); SpaceError if not linear in known parameters.

    A small parser of its own, iterative over sums and products, so a constraint of thousands of terms
    parses in linear time (Python's `ast` overflows its recursion limit near 1,000 terms).
    """
    example = "expected a linear inequality such as 'x1 + 2*x2 <= 10'"
    tokens: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(text):
        number, name, op, other = m.groups()
        if other is not None:
            raise SpaceError(f"cannot parse {text!r} at {other!r}; {example}")
        if number is not None:
            tokens.append(("num", number))
        elif name is not None:
            tokens.append(("name", name))
        elif op is not None:
            tokens.append(("op", op))
    comparisons = [i for i, (k, v) in enumerate(tokens) if k == "op" and v in ("<=", ">=", "==", "<", ">", "=")]
    if len(comparisons) != 1 or tokens[comparisons[0]][1] not in ("<=", ">="):
        raise SpaceError(f"{text!r} must be one inequality with <= or >=")
    split = comparisons[0]
    pos = 0

    def peek(stream: list[tuple[str, str]]) -> str | None:
        return stream[pos][1] if pos < len(stream) and stream[pos][0] == "op" else None

    def factor(stream: list[tuple[str, str]], depth: int) -> Linear:
        nonlocal pos
        if depth > MAX_NESTING:
            raise SpaceError(f"{text!r} nests parentheses or signs more than {MAX_NESTING} deep")
        if pos >= len(stream):
            raise SpaceError(f"cannot parse {text!r}: it ends too early; {example}")
        kind, value = stream[pos]
        pos += 1
        if kind == "num":
            number = float(value)
            if not math.isfinite(number):
                raise SpaceError(f"{text!r}: {value} is not a finite number")
            return {}, number
        if kind == "name":
            if value not in params:
                raise SpaceError(f"{text!r} names {value!r}, which is not a parameter")
            p = params[value]
            if getattr(p, "type", "real") == "choice":
                raise SpaceError(f"{text!r}: choice parameter {value!r} cannot appear in a linear constraint")
            if getattr(p, "log", False):
                raise SpaceError(f"{text!r}: log-scale parameter {value!r} cannot appear in a linear constraint")
            return {value: 1.0}, 0.0
        if value in ("+", "-"):
            terms, c = factor(stream, depth + 1)
            s = -1.0 if value == "-" else 1.0
            return {k: s * v for k, v in terms.items()}, s * c
        if value == "(":
            out = expression(stream, depth + 1)
            if peek(stream) != ")":
                raise SpaceError(f"cannot parse {text!r}: a '(' is not closed; {example}")
            pos += 1
            return out
        raise SpaceError(f"cannot parse {text!r} at {value!r}; {example}")

    def term(stream: list[tuple[str, str]], depth: int) -> Linear:
        nonlocal pos
        ta, ca = factor(stream, depth)
        while peek(stream) in ("*", "/"):
            op = peek(stream)
            pos += 1
            tb, cb = factor(stream, depth)
            if op == "/":
                if tb or cb == 0:
                    raise SpaceError(f"{text!r}: divide only by a non-zero number")
                ta, ca = {k: v / cb for k, v in ta.items()}, ca / cb
                continue
            if ta and tb:
                raise SpaceError(f"{text!r} is not linear (a product of parameters)")
            if tb:
                ta, ca, tb, cb = tb, cb, ta, ca
            ta, ca = {k: v * cb for k, v in ta.items()}, ca * cb
        return ta, ca

    def expression(stream: list[tuple[str, str]], depth: int) -> Linear:
        nonlocal pos
        out, const = term(stream, depth)
        while peek(stream) in ("+", "-"):
            s = 1.0 if peek(stream) == "+" else -1.0
            pos += 1
            tb, cb = term(stream, depth)
            for k, v in tb.items():
                out[k] = out.get(k, 0.0) + s * v
            const += s * cb
        return out, const

    def side(stream: list[tuple[str, str]]) -> Linear:
        nonlocal pos
        pos = 0
        if not stream:
            raise SpaceError(f"cannot parse {text!r}: a side of the inequality is empty; {example}")
        out = expression(stream, 0)
        if pos != len(stream):
            raise SpaceError(f"cannot parse {text!r} at {stream[pos][1]!r}; {example}")
        return out

    (tl, cl), (tr, cr) = side(tokens[:split]), side(tokens[split + 1:])
    coeffs = dict(tl)
    for k, v in tr.items():
        coeffs[k] = coeffs.get(k, 0.0) - v
    coeffs = {k: v for k, v in coeffs.items() if v != 0.0}
    if not coeffs:
        raise SpaceError(f"{text!r} names no parameter")
    rhs = cr - cl
    if not (math.isfinite(rhs) and all(math.isfinite(v) for v in coeffs.values())):
        raise SpaceError(f"{text!r}: its coefficients or bound overflow to infinity")
    return coeffs, tokens[split][1], rhs


def infeasible_constraints(params: dict[str, Any], linear: list[tuple[dict[str, float], str, float]]) -> str | None:
    """Why no point of the parameters' box meets every linear constraint, or None when one does (a small LP).

    Integer parameters are relaxed to their range; the policies' optimisers would fail with a
    traceback on an empty region, so the campaign file is refused up front instead.
    """
    if not linear:
        return None
    from scipy.optimize import linprog

    names = sorted({n for coeffs, _, _ in linear for n in coeffs})
    col = {n: j for j, n in enumerate(names)}
    a_ub = np.zeros((len(linear), len(names)))
    b_ub = np.zeros(len(linear))
    for i, (coeffs, op, rhs) in enumerate(linear):
        sign = 1.0 if op == "<=" else -1.0
        for n, v in coeffs.items():
            a_ub[i, col[n]] = sign * v
        b_ub[i] = sign * rhs
    bounds = [(float(params[n].low), float(params[n].high)) for n in names]
    result = linprog(np.zeros(len(names)), A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if result.status == 2:
        return (f"no setting of {', '.join(names)} within their low/high meets all of these constraints "
                "(the feasible region is empty)")
    return None


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
