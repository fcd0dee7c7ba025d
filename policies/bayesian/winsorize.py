"""Clip each metric's far tail on its bad side before the GP sees it (automatic winsorization, as in Ax).

A few very poor measurements (Branin's corners, VehicleSafety's first Sobol points) stretch the
standardised scale and flatten the model where the optimum lies. Only the bad side is clipped, and
never nearer than an objective threshold or a constraint bound, so the incumbent, the Pareto set
inside the reference point and every feasible point keep their values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.bayesian.acquisition import Outcomes

FENCE = 1.5  # Tukey's fence, in interquartile ranges


def _quartiles(y: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(y, 25, method="lower")), float(np.percentile(y, 75, method="higher"))


def _upper_cut(y: np.ndarray, bound: float | None) -> float:
    """Cut-off above which values of a metric that should be small (or <= bound) are clipped."""
    q1, q3 = _quartiles(y)
    top = q3 if bound is None else max(q3, bound)
    return top + FENCE * (top - q1) if top > q1 else np.inf


def _lower_cut(y: np.ndarray, bound: float | None) -> float:
    """Cut-off below which values of a metric that should be large (or >= bound) are clipped."""
    q1, q3 = _quartiles(y)
    bottom = q1 if bound is None else min(q1, bound)
    return bottom - FENCE * (q3 - bottom) if q3 > bottom else -np.inf


def cutoffs(Y: np.ndarray, outcomes: Outcomes, thresholds: Sequence[float | None]) -> list[tuple[float, float]]:
    """(lower, upper) clip limits per model output of Y (n x m, NaN = missing).

    Objectives are clipped on their bad side at Tukey's fence, measured from their threshold when
    they have one; metrics that only appear in constraints, on the infeasible side of each bound.
    """
    cuts = [(-np.inf, np.inf)] * Y.shape[1]
    for j in range(Y.shape[1]):
        y = Y[:, j][np.isfinite(Y[:, j])]
        if len(y) < 4:
            continue
        lo, hi = -np.inf, np.inf
        if j in outcomes.objective_index:
            k = outcomes.objective_index.index(j)
            if outcomes.signs[k] < 0:
                hi = _upper_cut(y, thresholds[k])
            else:
                lo = _lower_cut(y, thresholds[k])
        else:
            for jj, op, bound in outcomes.constraints:
                if jj != j:
                    continue
                if op == "<=":
                    hi = min(hi, _upper_cut(y, bound))
                else:
                    lo = max(lo, _lower_cut(y, bound))
        cuts[j] = (lo, hi)
    return cuts


def winsorize(Y: np.ndarray, outcomes: Outcomes, thresholds: Sequence[float | None]) -> tuple[np.ndarray, int]:
    """Y with each column clipped to its cut-offs (NaN stays NaN), and how many values were clipped."""
    out = Y.copy()
    clipped = 0
    for j, (lo, hi) in enumerate(cutoffs(Y, outcomes, thresholds)):
        col = out[:, j]
        finite = np.isfinite(col)
        outside = finite & ((col < lo) | (col > hi))
        clipped += int(outside.sum())
        out[:, j] = np.where(finite, np.clip(col, lo, hi), col)
    return out, clipped
