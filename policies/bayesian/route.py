"""Moving the instrument: travel time between settings, and ordering a batch as a short route.

`Problem.move_cost(a, b)` gives seconds from unit-cube point a to b (stage travel, telescope
slew). `TravelCost` evaluates it from one point to many (vectorised when the callable accepts
arrays, else row by row) and adds the dwell time of a measurement. `order_route` visits a batch
in a short open path from the current position: nearest neighbour, then 2-opt moves while they
shorten it (asymmetric costs are fine: every move is re-measured as a whole path).
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)


class TravelCost:
    """Seconds to go from a point to each of many points (travel + dwell)."""

    def __init__(self, move_cost: Callable[[np.ndarray, np.ndarray], float], dwell: float = 1.0):
        self.move_cost = move_cost
        self.dwell = float(dwell)
        self._vectorised: bool | None = None

    def travel(self, a: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Travel seconds from a (d,) to every row of X (N x d): N, never negative."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        a = np.asarray(a, dtype=float)
        if self._vectorised is not False and len(X) > 1:
            try:
                out = np.asarray(self.move_cost(np.broadcast_to(a, X.shape), X), dtype=float)
                if out.shape == (len(X),):
                    self._vectorised = True
                    return np.maximum(out, 0.0)
            except Exception:  # noqa: BLE001 - a scalar-only callable: fall back to one call per row
                pass
            self._vectorised = False
            logger.debug("move_cost does not take arrays; calling it once per candidate")
        return np.maximum(np.array([float(self.move_cost(a, x)) for x in X]), 0.0)

    def seconds(self, a: np.ndarray | None, X: np.ndarray) -> np.ndarray:
        """Travel + dwell from a to every row of X; just the dwell when there is no current position."""
        X = np.atleast_2d(X)
        if a is None:
            return np.full(len(X), max(self.dwell, 1e-9))
        return self.travel(a, X) + self.dwell


def route_length(cost: TravelCost, start: np.ndarray | None, X: np.ndarray, order: np.ndarray) -> float:
    """Total travel seconds visiting X[order] from `start` (open path)."""
    path = [start] if start is not None else []
    path += [X[i] for i in order]
    return float(sum(cost.travel(path[k], path[k + 1][None, :])[0] for k in range(len(path) - 1)))


def order_route(cost: TravelCost, start: np.ndarray | None, X: np.ndarray, max_rounds: int = 20) -> np.ndarray:
    """A permutation of the rows of X (q x d) giving a short open route from `start` (or from X[0])."""
    q = len(X)
    if q <= 1:
        return np.arange(q)
    D = np.stack([cost.travel(X[i], X) for i in range(q)])  # q x q, D[i, j] = i -> j
    from_start = cost.travel(start, X) if start is not None else np.zeros(q)
    # nearest neighbour
    left = set(range(q))
    current = int(np.argmin(from_start)) if start is not None else 0
    order = [current]
    left.remove(current)
    while left:
        nxt = min(left, key=lambda j: (D[current, j], j))
        order.append(nxt)
        left.remove(nxt)
        current = nxt

    def length(o: list[int]) -> float:
        return float(from_start[o[0]] + sum(D[o[k], o[k + 1]] for k in range(len(o) - 1)))

    best = length(order)
    for _ in range(max_rounds):
        improved = False
        for i in range(q - 1):
            for j in range(i + 1, q):
                cand = order[:i] + order[i : j + 1][::-1] + order[j + 1 :]
                c = length(cand)
                if c < best - 1e-12:
                    order, best, improved = cand, c, True
        if not improved:
            break
    return np.asarray(order)
