"""Per-sample novelty scores from an autoencoder's outputs: the error reductions and how the two components combine."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from policies.selection.errors import SelectionError

ScoreKind = Literal["reconstruction", "latent", "combined"]


def as_rows(X: np.ndarray, what: str) -> np.ndarray:
    """X as (n, features...) rows of numbers; a 1-D array is n rows of one feature."""
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise SelectionError(f"{what}: expected numbers, got an array of dtype {X.dtype}")
    if X.ndim == 0:
        raise SelectionError(f"{what}: expected an array with one row per measurement, got a scalar")
    return X[:, None] if X.ndim == 1 else X


def region_max(err: torch.Tensor, cell: int = 4) -> torch.Tensor:
    """Largest mean squared error over cell x cell regions of each image's error map (b, [C,] H, W) -> (b,).

    Unusual things in a cutout are local (a streak, a cosmic-ray hit); averaged over the whole
    image their error drowns in the noise of the rest.
    """
    maps = err if err.dim() == 4 else err.unsqueeze(1)
    maps = maps.mean(1, keepdim=True)
    k = min(cell, maps.shape[-2], maps.shape[-1])
    return torch.nn.functional.avg_pool2d(maps, k, stride=k, ceil_mode=True).flatten(1).amax(1)


def float32_rows(X: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable float32 view or copy (torch wants writable arrays; memory maps are not)."""
    A = np.ascontiguousarray(X, dtype=np.float32)
    return A if A.flags.writeable else A.copy()



def combine_scores(kind: ScoreKind, recon: np.ndarray, maha: np.ndarray, norms: tuple[float, float, float, float]) -> np.ndarray:
    """Scores (n,) from the reconstruction error and the latent distance (n,); NaN scores inf (the most novel).

    `combined` takes the larger of the two, each in units of its upper tail on the training data
    (`norms`: zero and unit of each): novel data often stand out in only one of them (another digit
    in the reconstruction, a dim phase in the latent space), and a sum would dilute that one.
    """
    if kind == "reconstruction":
        s = recon
    elif kind == "latent":
        s = maha
    else:
        r0, r1, m0, m1 = norms
        s = np.maximum((recon - r0) / r1, (maha - m0) / m1)
    return np.where(np.isnan(s), np.inf, s)
