"""Replay metrics: Top%, enhancement and acceleration factors (Liang et al. 2021), best so far, regret,
hypervolume, and their summaries over seeds.

Definitions, for a pool of N candidates and the top fraction t (default 0.05):
- the top set is every candidate at least as good as the ceil(t N)-th best value, so M >= ceil(t N): rows tied
  with the cut-off value all count as top (Liang et al. do not say how ties are broken; breaking them by pool
  order would reward a raster scan for the file's row order, and a constant objective would give Top% 0);
- Top%(n) = |top set among the first n picks| / M;
- random sampling without replacement finds n M / N top candidates in expectation, so
  Top%_random(n) = n / N (the paper's `P_rand`), and EF(n) = Top%(n) / (n / N);
- with n_P(a) = min{n : Top%(n) >= a}, AF(a) = n_random(a) / n_P(a) where n_random(a) = ceil(a N),
  evaluated at the levels a = k / M that Top% can take.
Curves over seeds are summarised by mean, median and interquartile range; EF and AF use the mean curve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def top_set(values: np.ndarray, top: float, maximize: bool) -> np.ndarray:
    """Pool indices (ascending) of every value at least as good as the ceil(top * N)-th best: ties at the
    cut-off are all top, so the set may hold more than ceil(top * N) rows (all of them for a constant objective)."""
    if not 0.0 < top <= 1.0:
        raise ValueError(f"top must be in (0, 1], got {top}")
    values = np.asarray(values, dtype=float)
    m = max(int(math.ceil(len(values) * top - 1e-12)), 1)
    order = np.argsort(-values if maximize else values, kind="stable")
    cut = values[order[m - 1]]
    return np.flatnonzero(values >= cut if maximize else values <= cut)


def top_fraction(picks: Sequence[int], top_indices: np.ndarray) -> np.ndarray:
    """Top%(n) for n = 1..len(picks): the share of the top set among the first n picks."""
    hit = np.isin(np.asarray(picks, dtype=int), top_indices)
    return np.cumsum(hit) / len(top_indices)


def random_top_fraction(n: np.ndarray | int, pool_size: int) -> np.ndarray:
    """Expected Top% of uniform random picks without replacement: n / N (exact, whatever the top fraction)."""
    return np.minimum(np.asarray(n, dtype=float) / pool_size, 1.0)


def enhancement_factor(curve: np.ndarray, pool_size: int) -> np.ndarray:
    """EF(n) = Top%(n) / Top%_random(n), n = 1..len(curve)."""
    n = np.arange(1, len(curve) + 1)
    return np.asarray(curve, dtype=float) / random_top_fraction(n, pool_size)


def picks_to_reach(curve: np.ndarray, level: float) -> int | None:
    """The first n (1-based) with curve[n-1] >= level, or None if the curve never gets there."""
    hit = np.flatnonzero(np.asarray(curve) >= level - 1e-12)
    return int(hit[0]) + 1 if len(hit) else None


def acceleration_factor(curve: np.ndarray, pool_size: int, top_count: int) -> dict[str, list]:
    """AF(a) = ceil(a N) / n_P(a) at the levels a = k / M, k = 1..M, that the curve reaches."""
    levels, factors, picks = [], [], []
    for k in range(1, top_count + 1):
        a = k / top_count
        n_policy = picks_to_reach(curve, a)
        if n_policy is None:
            break
        levels.append(a)
        picks.append(n_policy)
        factors.append(math.ceil(a * pool_size - 1e-9) / n_policy)
    return {"top": levels, "af": factors, "picks": picks}


def best_so_far(values: Sequence[float], maximize: bool) -> np.ndarray:
    """The running best of the values in measurement order."""
    v = np.asarray(values, dtype=float)
    return np.maximum.accumulate(v) if maximize else np.minimum.accumulate(v)


def regret(best: np.ndarray, optimum: float, maximize: bool) -> np.ndarray:
    """Distance of the running best from the pool's (or problem's) optimum, >= 0."""
    return (optimum - best) if maximize else (best - optimum)


def hypervolume_curve(Y: np.ndarray, maximize: Sequence[bool], reference: Sequence[float]) -> np.ndarray:
    """Hypervolume dominated by the first n rows of Y (measurement order), n = 1..len(Y)."""
    from policies.pareto import hypervolume, pareto_mask

    out = np.zeros(len(Y))
    front = np.empty((0, Y.shape[1]))
    for i in range(len(Y)):
        front = np.vstack([front, Y[i:i + 1]])
        front = front[pareto_mask(front, list(maximize))]
        out[i] = hypervolume(front, list(maximize), np.asarray(reference, dtype=float))
    return out


@dataclass
class Band:
    """A curve over seeds: mean, median and the interquartile range, step by step."""

    mean: list[float]
    median: list[float]
    q25: list[float]
    q75: list[float]

    @classmethod
    def of(cls, curves: Sequence[np.ndarray]) -> "Band":
        """Curves of unequal length (a run that stopped early) are padded with their last value."""
        length = max(len(c) for c in curves)
        M = np.array([np.pad(np.asarray(c, dtype=float), (0, length - len(c)), mode="edge") for c in curves])
        q25, med, q75 = np.percentile(M, [25, 50, 75], axis=0)
        return cls(M.mean(axis=0).tolist(), med.tolist(), q25.tolist(), q75.tolist())
