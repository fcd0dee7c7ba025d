"""Strata of the known domain: k-means clusters of latent codes, so a stratified sample still covers what is known."""
from __future__ import annotations

import numpy as np


def kmeans_centres(z: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
    """Centres (k, latent) of k-means (k-means++ seeding) on latent codes z (n, latent), at most 5000 of them."""
    if len(z) > 5000:
        z = z[rng.choice(len(z), 5000, replace=False)]
    centres = z[[int(rng.integers(len(z)))]]
    for _ in range(1, k):
        d = ((z[:, None] - centres[None]) ** 2).sum(-1).min(1)
        centres = np.vstack([centres, z[rng.choice(len(z), p=d / d.sum()) if d.sum() > 0 else 0]])
    for _ in range(iterations):
        labels = ((z[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.array([z[labels == c].mean(0) if (labels == c).any() else centres[c] for c in range(k)])
    return centres


def nearest_centre(latent: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of each latent code (n, latent) -> (n,)."""
    d = ((np.asarray(latent)[:, None, :] - centres[None]) ** 2).sum(-1)
    return d.argmin(1)
