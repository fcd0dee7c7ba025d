"""Exact marginal posteriors of a fitted GP at many points at once (pool scoring, reasons, fantasies).

BoTorch's `model.posterior` over an N x 1 x d batch does one solve per row against the training
covariance (~50 s for 65,536 rows at n = 1000 on two cores), and over an N x d joint batch it
builds the N x N test covariance. Marginals need neither: one Cholesky factor of the training
covariance, cached on the GP, and one triangular solve per chunk of rows.
"""
from __future__ import annotations

import gpytorch
import torch
from botorch.models import ModelListGP
from botorch.models.model import Model
from linear_operator.utils.cholesky import psd_safe_cholesky

MAX_CHOLESKY = 4096  # fits and posteriors use Cholesky up to this many points (gpytorch: CG above 800)



def marginal_posterior(fitted, X: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation of every output at each row of X (N x d): two N x m tensors.

    `fitted` is a BoTorch GP (SingleTaskGP, MixedSingleTaskGP, batched or not, or a ModelListGP of
    them) in eval mode, or anything with such a `.model`. Outcome transforms are undone.
    """
    model = getattr(fitted, "model", fitted)
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(MAX_CHOLESKY):
        parts = [gp_marginals_any(model, Xc) for Xc in X.split(chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def gp_factor(gp: Model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train inputs, Cholesky factor L of K + noise, alpha = K^-1 (y - prior mean)), cached on the GP."""
    cached = getattr(gp, "_aec_factor", None)
    if cached is not None:
        return cached
    train_X = gp.train_inputs[0]
    n = train_X.shape[-2]
    K = gp.covar_module(train_X).to_dense()
    noise = gp.likelihood.noise
    if noise.shape[-1] == n:
        K = K + torch.diag_embed(noise)
    else:
        K = K + noise.unsqueeze(-1) * torch.eye(n, dtype=K.dtype, device=K.device)
    L = psd_safe_cholesky(K)
    resid = (gp.train_targets - gp.mean_module(train_X)).unsqueeze(-1)
    alpha = torch.cholesky_solve(resid, L)
    gp._aec_factor = (train_X, L, alpha)
    return gp._aec_factor


def factorize(model: Model) -> None:
    """Cache the training-covariance factor of a GP (or of each GP of a list), outside any autograd graph."""
    with torch.no_grad():
        for gp in model.models if isinstance(model, ModelListGP) else [model]:
            gp_factor(gp)


def gp_marginals_any(model: Model, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gp_marginals of a GP or of every GP of a ModelListGP (outputs concatenated); differentiable in X."""
    gps = model.models if isinstance(model, ModelListGP) else [model]
    parts = [gp_marginals(gp, X) for gp in gps]
    return torch.cat([p[0] for p in parts], dim=-1), torch.cat([p[1] for p in parts], dim=-1)


def gp_marginals(gp: Model, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (N x m, outcome transform undone) of one GP at X (N x d); differentiable in X."""
    train_X, L, alpha = gp_factor(gp)
    Xt = gp.transform_inputs(X)
    batched = train_X.dim() == 3
    if batched:
        Xt = Xt.unsqueeze(0).expand(train_X.shape[0], *Xt.shape)
    Kxn = gp.covar_module(Xt, train_X).to_dense()  # (b) x N x n
    kxx = gp.covar_module(Xt, diag=True)  # (b) x N
    mean = gp.mean_module(Xt) + (Kxn @ alpha).squeeze(-1)
    V = torch.linalg.solve_triangular(L, Kxn.transpose(-1, -2), upper=False)
    var = (kxx - (V * V).sum(-2)).clamp_min(1e-12)
    mean = mean.transpose(-1, -2) if batched else mean.unsqueeze(-1)  # N x m
    var = var.transpose(-1, -2) if batched else var.unsqueeze(-1)
    tf = getattr(gp, "outcome_transform", None)
    if tf is not None:
        mean, var = tf.untransform(mean, var)
    return mean, var.clamp_min(0).sqrt()
