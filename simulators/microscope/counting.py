"""Counting statistics keyed by measurement number, so a batch draws exactly what single calls draw.

Every channel of every measurement gets one uniform number from a counter-based hash of
(seed, measurement index, channel). The Poisson count is that uniform pushed through the
inverse Poisson CDF: summed exactly for small means, and by a Cornish-Fisher expansion of
the Poisson quantile (skewness and kurtosis terms) for large ones. The draws therefore do
not depend on how measurements are split into batches, nor on the device.
"""
from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_MULT = 0x45D9F3B  # < 2**27, so a 32-bit value times it stays inside int64
_GOLDEN = 0x9E3779B9
_SMALL_MEAN = 12.0
_SMALL_TERMS = 48


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply) on int64 tensors holding values < 2**32."""
    x = (((x >> 16) ^ x) * _MULT) & _M32
    x = (((x >> 16) ^ x) * _MULT) & _M32
    return (x >> 16) ^ x


def counter_uniform(seed: int, rows: torch.Tensor, columns: int) -> torch.Tensor:
    """Uniforms in (0, 1), float64 (b, columns), a fixed function of (seed, rows[i], column j)."""
    seed = int(seed)
    key = _mix32(torch.tensor((seed ^ (seed >> 32)) & _M32, device=rows.device, dtype=torch.int64))
    r = _mix32((rows & _M32) ^ key)
    r = _mix32(r ^ ((rows >> 32) & _M32) ^ _GOLDEN)
    cols = _mix32((torch.arange(columns, device=rows.device, dtype=torch.int64) * 2 + 1) ^ key)
    h = _mix32((r[:, None] + cols[None, :]) & _M32)
    h = _mix32(h ^ (cols[None, :] >> 7))
    return (h.to(torch.float64) + 0.5) / 4294967296.0


def poisson_from_uniform(mean: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Poisson counts (float64, shape of mean) with the given means, by inverting the CDF at u."""
    mean = mean.to(torch.float64).clamp_min(0.0)
    small = mean < _SMALL_MEAN
    any_small = bool(small.any())
    all_small = any_small and bool(small.all())
    count = torch.zeros(mean.shape, dtype=torch.uint8, device=mean.device)
    if any_small:
        lam = torch.where(small, mean, 0.0)
        p = torch.exp(-lam)
        cdf = p.clone()
        for i in range(1, _SMALL_TERMS + 1):
            above = u > cdf
            if i % 8 == 0 and not bool(above.any()):
                break
            count += above
            cdf.add_(p.mul_(lam).div_(i))
        if all_small:
            return count.to(torch.float64)
    lam = mean.clamp_min(_SMALL_MEAN)
    z = torch.special.ndtri(u)
    root = lam.sqrt()
    z2 = z * z
    x = lam + root * z + (z2 - 1) / 6 + z * (z2 - 3) / (24 * root) - z * (2 * z2 - 5) / (36 * root)
    large = torch.floor(x + 0.5).clamp_min(0.0)
    return torch.where(small, count.to(torch.float64), large) if any_small else large


def poisson_counts(mean: torch.Tensor, seed: int, first_index: int) -> torch.Tensor:
    """Counts for a batch (b, C) of expected spectra, measurement i being number first_index + i."""
    rows = first_index + torch.arange(mean.shape[0], device=mean.device, dtype=torch.int64)
    return poisson_from_uniform(mean, counter_uniform(seed, rows, mean.shape[1]))


__all__ = ["counter_uniform", "poisson_from_uniform", "poisson_counts"]
