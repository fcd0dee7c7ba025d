"""Length-scale priors of the GP surrogates beyond BoTorch's defaults.

`PooledLogNormalPrior` is BoTorch's dimension-scaled LogNormal prior on each ARD length scale, times a
Gaussian on each log length scale's deviation from their mean (hierarchical shrinkage). With few
points the deviations cost more than the data can pay for, so the kernel stays nearly isotropic;
once the data shows that the dimensions differ, it becomes ARD. On the materials pools this was the
only kernel ahead of both the isotropic and the ARD GP baselines on four of five sets
(benchmarks/README.md, "Kernel experiments for AutoAM").
"""
from __future__ import annotations

import math

import torch
from gpytorch.priors import LogNormalPrior

__all__ = ["LENGTHSCALE_POOLING", "PooledLogNormalPrior", "pool_lengthscales", "pooling_log_prob"]

# The botorch policy's sd with one modelled metric: of 0.3, 0.5 and 1.0 on the five materials pools (20 seeds), 0.5
# was the one ahead of both GP baselines on four (benchmarks/README.md)
LENGTHSCALE_POOLING = 0.5


class PooledLogNormalPrior(LogNormalPrior):
    """LogNormal(loc, scale) on each length scale, and Normal(0, pool_sd) on log(l_k) - mean_j log(l_j).

    log_prob is element-wise (one term per length scale), as gpytorch sums it; the pooling term of
    each dimension is its own deviation's log density. Batched kernels pool within each batch member.
    """

    def __init__(self, loc, scale, pool_sd: float, validate_args=None, transform=None):
        if not pool_sd > 0:
            raise ValueError(f"pool_sd must be positive, got {pool_sd!r}")
        super().__init__(loc, scale, validate_args=validate_args, transform=transform)
        self.pool_sd = float(pool_sd)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return super().log_prob(x) + pooling_log_prob(x, self.pool_sd)

    def expand(self, batch_shape):
        batch_shape = torch.Size(batch_shape)
        return PooledLogNormalPrior(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.pool_sd)


def pooling_log_prob(lengthscale: torch.Tensor, pool_sd: float) -> torch.Tensor:
    """log Normal(log l_k - mean_j log l_j; 0, pool_sd), element-wise over the last dimension."""
    u = lengthscale.log()
    dev = u - u.mean(-1, keepdim=True)
    return -0.5 * (dev / pool_sd) ** 2 - math.log(pool_sd) - 0.5 * math.log(2 * math.pi)


def pool_lengthscales(kernel, pool_sd: float) -> None:
    """Replace an ARD kernel's LogNormal length-scale prior with its pooled version (same loc and scale)."""
    prior = kernel.lengthscale_prior
    if type(prior) is not LogNormalPrior:
        raise TypeError(f"pooling needs a LogNormal length-scale prior, the kernel has {type(prior).__name__}")
    pooled = PooledLogNormalPrior(prior.loc.clone(), prior.scale.clone(), pool_sd)
    kernel.register_prior("lengthscale_prior", pooled, kernel._lengthscale_param, kernel._lengthscale_closure)
