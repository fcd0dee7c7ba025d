"""Ground truth of a specimen and the scores replay computes from it.

Evaluation code (replay, benchmarks) uses these; policies never do. Maps are the noiseless,
unblurred values at every pixel; regions of interest are the connected areas where the target
phase dominates.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
from skimage import measure

from simulators.base import SimulatorError
from simulators.microscope.sample import Sample


def truth_maps(sample: Sample, flux: float, background: float, dwell: float) -> dict[str, np.ndarray]:
    """Noiseless metric maps (H, W) at the given dwell: peak_ratio, roi_score, total_counts."""
    n = sample.abundances.shape[0]
    h, w = sample.shape
    fractions = sample.abundances.reshape(n, -1).T
    net = dwell * (flux * fractions @ (sample.spectra @ sample.windows) + background * sample.windows.sum(0))
    total = dwell * (flux * fractions @ sample.spectra.sum(1) + background * sample.spectra.shape[1])
    return {
        "peak_ratio": (net[:, 0] / np.maximum(net[:, 1], 1e-12)).reshape(h, w),
        "roi_score": sample.abundances[sample.target].copy(),
        "total_counts": total.reshape(h, w),
    }


def roi_labels(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    """Connected regions (8-connectivity) of the mask with at least min_area pixels, numbered 1..k."""
    labels = measure.label(mask, connectivity=2)
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = True
    labels[small[labels]] = 0
    kept = np.unique(labels[labels > 0])
    relabel = np.zeros(labels.max() + 1, dtype=np.int64)
    relabel[kept] = np.arange(1, kept.size + 1)
    return relabel[labels], int(kept.size)


def as_xy(visited: Any) -> np.ndarray:
    """Visited positions as an (m, 2) float array of (x, y) pixels.

    Accepts an (m, 2) array, a dict of columns {'x': ..., 'y': ...}, or a list of settings dicts.
    """
    if isinstance(visited, Mapping):
        xy = np.stack([np.asarray(visited["x"], float).ravel(), np.asarray(visited["y"], float).ravel()], 1)
    elif isinstance(visited, Iterable) and not isinstance(visited, np.ndarray):
        rows = list(visited)
        if rows and isinstance(rows[0], Mapping):
            xy = np.array([[float(r["x"]), float(r["y"])] for r in rows], float)
        else:
            xy = np.asarray(rows, float).reshape(-1, 2)
    else:
        xy = np.asarray(visited, float).reshape(-1, 2)
    return xy


def _visited_pixels(shape: tuple[int, int], visited: Any, radius: float) -> np.ndarray:
    """Boolean (H, W) map of pixels within radius of a visited position (its nearest pixel at 0)."""
    h, w = shape
    xy = as_xy(visited)
    hit = np.zeros(shape, bool)
    if xy.size == 0:
        return hit
    r = int(np.ceil(max(radius, 0.0)))
    offsets = [(dx, dy) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dx * dx + dy * dy <= radius * radius]
    cx, cy = np.rint(xy[:, 0]).astype(int), np.rint(xy[:, 1]).astype(int)
    for dx, dy in offsets or [(0, 0)]:
        px, py = cx + dx, cy + dy
        ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        hit[py[ok], px[ok]] = True
    return hit


def roi_recall(labels: np.ndarray, count: int, visited: Any, radius: float = 0.0) -> float:
    """Fraction of regions of interest with at least one visited pixel (1.0 when there are none)."""
    if count == 0:
        return 1.0
    found = np.unique(labels[_visited_pixels(labels.shape, visited, radius)])
    return float((found > 0).sum()) / count


def coverage(shape: tuple[int, int], visited: Any) -> float:
    """Fraction of the sample's pixels that were visited (nearest pixel of each position)."""
    return float(_visited_pixels(shape, visited, 0.0).mean())


def reconstruction_error(truth: np.ndarray, predicted: Any) -> float:
    """Root-mean-square error of a predicted map, divided by the true map's standard deviation."""
    pred = np.asarray(predicted.detach().cpu() if hasattr(predicted, "detach") else predicted, float)
    if pred.shape != truth.shape:
        raise SimulatorError(f"predicted map has shape {pred.shape}; expected {truth.shape} (H, W)")
    rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
    return rmse / max(float(truth.std()), 1e-12)
