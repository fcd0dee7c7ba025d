"""Conformal calibration: the scores of held-out known data turn any score into a p-value that means the same on every data set.

calibration: a sorted 1-D array of scores of known data the model never trained on.
"""
from __future__ import annotations

import math

import numpy as np


def tail_units(values: np.ndarray) -> tuple[float, float]:
    """Median and (95th percentile - median) of a score component on known data: its zero and unit."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return 0.0, 1.0
    med = float(np.median(v))
    spread = float(np.quantile(v, 0.95)) - med
    return med, (spread if spread > 1e-12 else max(abs(med), 1.0))


def conformal_pvalues(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #{calib >= s}) / (n_calib + 1) for each score (n,): uniform (or larger) on known data."""
    s = np.asarray(scores, dtype=float)
    n = len(calibration)
    at_least = n - np.searchsorted(calibration, s, side="left")
    return (1.0 + at_least) / (n + 1.0)


def conformal_threshold(calibration: np.ndarray, level: float) -> float:
    """The score above which a sample's p-value is below `level` (inf when none can be)."""
    n = len(calibration)
    m = math.ceil(level * (n + 1) - 1) - 1  # the most calibration scores >= s that still give p < level
    if m < 0:
        return math.inf
    return float(calibration[n - 1 - m]) if m < n else -math.inf


def extend_calibration(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The calibration set with the finite `scores` added, still sorted (online conformal)."""
    s = np.sort(np.asarray(scores, dtype=float).ravel())
    s = s[np.isfinite(s)]
    return np.insert(calibration, np.searchsorted(calibration, s), s)
