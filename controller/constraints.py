"""Linear constraints between parameters, as campaign files write them: parsed without recursion, and
checked for an empty feasible region. Shared by config validation and the space (no import of either).
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np


class SpaceError(ValueError):
    """A space definition or a value that does not fit it."""


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
