"""Pareto sets, hypervolumes and reference points for multi-objective campaigns.

Plain numpy in, numpy / float out, so the controller can call these after every trial. Metrics
stay in their raw units and directions (`maximize[j]` says which way is better); internally
everything is flipped to "larger is better", BoTorch's convention, and handed to
`botorch.utils.multi_objective` (is_non_dominated, DominatedPartitioning, infer_reference_point).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning
from botorch.utils.multi_objective.hypervolume import infer_reference_point
from botorch.utils.multi_objective.pareto import is_non_dominated

from policies.base import Objective

__all__ = ["pareto_mask", "hypervolume", "reference_point", "to_maximization"]


def to_maximization(Y: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Flip the columns of Y (n x m) that are minimised, so that larger is better everywhere."""
    Y = np.asarray(Y, dtype=float)
    Y = Y.reshape(-1, len(maximize)) if Y.ndim != 2 else Y
    return Y * np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)


def pareto_mask(Y: np.ndarray, maximize: Sequence[bool], feasible: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask (n,) of the rows of Y (n x m) that no other row dominates.

    Rows with a missing (NaN / inf) value, or marked False in `feasible`, are never Pareto-optimal
    and dominate nothing. Rows with identical values are all kept (they are equally good trials).
    """
    Z = to_maximization(Y, maximize)
    ok = np.isfinite(Z).all(axis=1)
    if feasible is not None:
        ok &= np.asarray(feasible, dtype=bool)
    mask = np.zeros(len(Z), dtype=bool)
    if ok.any():
        mask[ok] = is_non_dominated(torch.as_tensor(Z[ok]), deduplicate=False).numpy()
    return mask


def hypervolume(Y: np.ndarray, maximize: Sequence[bool], ref_point: Sequence[float]) -> float:
    """Hypervolume (in the metrics' own units) dominated by the rows of Y (n x m) and bounded by ref_point.

    Rows that are missing a value, or that do not beat the reference point in every metric,
    add nothing. With one metric this is the improvement of the best row over the reference.
    """
    Z = to_maximization(Y, maximize)
    r = to_maximization(np.asarray(ref_point, dtype=float)[None, :], maximize)[0]
    if not np.isfinite(r).all():
        raise ValueError(f"reference point must be finite, got {list(ref_point)}")
    Z = Z[np.isfinite(Z).all(axis=1)]
    Z = Z[(Z > r).all(axis=1)]
    if len(Z) == 0:
        return 0.0
    if Z.shape[1] == 1:
        return float(Z.max() - r[0])
    part = DominatedPartitioning(ref_point=torch.as_tensor(r), Y=torch.as_tensor(Z))
    return float(part.compute_hypervolume())


def reference_point(Y: np.ndarray, objectives: Sequence[Objective], scale: float = 0.1) -> tuple[np.ndarray, bool]:
    """The hypervolume reference point (m,) in raw metric units, and whether any of it was inferred.

    Objectives' thresholds are used as given. Missing ones are inferred from the observed Pareto
    front with BoTorch's `infer_reference_point`: the front's nadir, pushed back by `scale` times
    the front's range. With no finite observation to infer from, missing entries are NaN.
    """
    thresholds = np.array([np.nan if o.threshold is None else float(o.threshold) for o in objectives])
    missing = np.isnan(thresholds)
    if not missing.any():
        return thresholds, False
    maximize = [o.maximize for o in objectives]
    Z = to_maximization(np.asarray(Y, dtype=float).reshape(-1, len(objectives)), maximize)
    Z = Z[np.isfinite(Z).all(axis=1)]
    if len(Z) == 0:
        return thresholds, True
    front = Z[pareto_mask(Z, [True] * len(objectives))]
    given = to_maximization(thresholds[None, :], maximize)[0]
    max_ref = None if missing.all() else torch.as_tensor(given)
    ref = infer_reference_point(torch.as_tensor(front), max_ref_point=max_ref, scale=scale).numpy()
    out = to_maximization(ref[None, :], maximize)[0]
    out[~missing] = thresholds[~missing]
    return out, True
