"""Per-feature robust scaling and the per-image stretch: the inputs an autoencoder learns from.

Inputs are standardised per feature by the median and interquartile range of the known data, so a
few extreme known measurements do not set the scale; images are first put in units of their own noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RobustScaler:
    """Per-feature (x - median) / scale, scale = IQR / 1.349 (the std of a normal distribution).

    Features whose IQR is zero (constant borders of an image, a channel that is rarely lit) fall
    back to the standard deviation, and every scale is floored at `floor` times the median of the
    positive scales, so such features neither blow up in training nor vanish from the score.
    center, scale: arrays of one sample's shape.
    """

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, floor: float = 1.0) -> RobustScaler:
        """X: (n, *shape) known measurements, n >= 1."""
        X = np.asarray(X, dtype=np.float64)
        q25, center, q75 = np.percentile(X, [25.0, 50.0, 75.0], axis=0)
        scale = (q75 - q25) / 1.349
        flat = scale <= 1e-12
        if flat.any():
            scale = np.where(flat, X.std(axis=0), scale)
        positive = scale[scale > 1e-12]
        reference = float(np.median(positive)) if positive.size else 1.0
        scale = np.maximum(scale, floor * reference)
        return cls(center.astype(np.float32), scale.astype(np.float32))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.center) / self.scale).astype(np.float32, copy=False)


def image_stretch(X: np.ndarray, soften: float = 3.0) -> np.ndarray:
    """Each image (n, ...) to units of its own noise, bright parts compressed: soften * asinh(x / soften).

    x = (image - its median) / (1.4826 * its median absolute deviation). Cutouts taken in
    different conditions (sky brightness, seeing) then share one scale, and bright stars no
    longer dominate the reconstruction error: near the noise the map is linear, above it logarithmic.
    """
    F_ = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    med = np.median(F_, axis=1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(F_ - med), axis=1, keepdims=True)
    spread = np.where(mad > 0, mad, np.maximum(F_.std(axis=1, keepdims=True), 1e-12))
    return (soften * np.arcsinh((F_ - med) / (soften * spread))).reshape(np.shape(X)).astype(np.float32)
