"""Fast maximum-a-posteriori fit of BoTorch's default SingleTaskGP: the same objective, fewer layers.

`fit_gpytorch_mll` evaluates the marginal likelihood through gpytorch's module and
linear-operator layers, whose per-call cost dominates below a few hundred points: a cold fit
at n = 25-50 takes 0.10-0.16 s here, against 0.028-0.035 s with this module (same optimum;
0.06 s when its gradient came from autograd rather than negative_mll_and_grad). For the
model BoTorch builds by default (RBF kernel with ARD lengthscales, constant mean, Gaussian or
fixed noise, LogNormal priors, optionally pooled (priors.py), bounds from `GreaterThan` constraints without transforms), this
module writes the same objective, -(log N(y; c, K + noise) + log priors) / n, as a few batched
tensor operations, and hands it to BoTorch's batched L-BFGS-B, which optimises every output on
its own as `fit_gpytorch_mll` does. Any other model (Matern, Mixed, custom priors, transformed
constraints) returns False from `fit_exact_gp` and goes to `fit_gpytorch_mll`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from botorch.models import SingleTaskGP
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import RBFKernel
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from gpytorch.means import ConstantMean
from gpytorch.priors import LogNormalPrior
from linear_operator.utils.cholesky import psd_safe_cholesky

from policies.bayesian import fast_paths
from policies.bayesian.priors import PooledLogNormalPrior, pooling_log_prob

__all__ = ["ExactGPParts", "exact_gp_parts", "fit_exact_gp", "negative_mll", "negative_mll_and_grad"]

@dataclass
class ExactGPParts:
    """What the objective needs from a SingleTaskGP with b outputs (b = 1 when not batched)."""

    X: torch.Tensor  # n x d, transformed inputs
    y: torch.Tensor  # b x n, transformed targets
    fixed_noise: torch.Tensor | None  # b x n, or None when the noise is inferred
    ls_prior: tuple[float, float]  # LogNormal (loc, scale) of the lengthscales
    ls_pool_sd: float | None  # PooledLogNormalPrior's sd of log lengthscales about their mean, None: not pooled
    noise_prior: tuple[float, float] | None
    ls_lower: float
    noise_lower: float

    @property
    def b(self) -> int:
        return self.y.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[-1]


def _lower(constraint) -> float | None:
    """Lower bound of a GreaterThan constraint without a transform (BoTorch's defaults), else None."""
    if type(constraint) is not GreaterThan or constraint.enforced:  # enforced: raw values pass through a transform
        return None
    return float(constraint.lower_bound.reshape(-1)[0])


def _lognormal(prior) -> tuple[float, float] | None:
    if type(prior) not in (LogNormalPrior, PooledLogNormalPrior):
        return None
    loc, scale = prior.loc.reshape(-1), prior.scale.reshape(-1)
    if (loc != loc[0]).any() or (scale != scale[0]).any():
        return None
    return float(loc[0]), float(scale[0])


def exact_gp_parts(model) -> ExactGPParts | None:
    """The pieces of a default-structured SingleTaskGP, or None when it is not one this module handles."""
    if type(model) is not SingleTaskGP:
        return None
    kernel, mean, lik = model.covar_module, model.mean_module, model.likelihood
    if type(kernel) is not RBFKernel or kernel.active_dims is not None or type(mean) is not ConstantMean:
        return None
    if kernel.ard_num_dims != model.train_inputs[0].shape[-1]:
        return None
    allowed = {"covar_module.lengthscale_prior", "likelihood.noise_covar.noise_prior"}
    if any(name not in allowed for name, *_ in model.named_priors()):
        return None
    allowed = {"covar_module.raw_lengthscale_constraint", "likelihood.noise_covar.raw_noise_constraint"}
    if any(name not in allowed for name, _ in model.named_constraints()):
        return None
    ls_prior = _lognormal(getattr(kernel, "lengthscale_prior", None))
    ls_pool_sd = getattr(kernel.lengthscale_prior, "pool_sd", None) if ls_prior is not None else None
    ls_lower = _lower(kernel.raw_lengthscale_constraint)
    if ls_prior is None or ls_lower is None:
        return None
    if type(lik) is GaussianLikelihood:
        noise_prior = _lognormal(getattr(lik.noise_covar, "noise_prior", None))
        noise_lower = _lower(lik.noise_covar.raw_noise_constraint)
        if noise_prior is None or noise_lower is None:
            return None
        fixed = None
    elif type(lik) is FixedNoiseGaussianLikelihood and not lik.second_noise_covar:
        noise_prior, noise_lower = None, 0.0
        fixed = lik.noise.detach()
    else:
        return None
    if any(p.requires_grad for n, p in model.named_parameters() if not n.endswith(("raw_lengthscale", "raw_noise", "raw_constant"))):
        return None
    with torch.no_grad():
        X = model.train_inputs[0]
        X = X[0] if X.dim() == 3 else X
        if getattr(model, "input_transform", None) is not None:
            X = model.input_transform.preprocess_transform(X)
        y = model.train_targets
        y = y if y.dim() == 2 else y.unsqueeze(0)
        if fixed is not None:
            fixed = fixed.reshape(y.shape)
    return ExactGPParts(X=X, y=y, fixed_noise=fixed, ls_prior=ls_prior, ls_pool_sd=ls_pool_sd, noise_prior=noise_prior,
                        ls_lower=ls_lower, noise_lower=noise_lower)


def _lognormal_logpdf(x: torch.Tensor, loc: float, scale: float) -> torch.Tensor:
    return -x.log() - math.log(scale) - 0.5 * math.log(2 * math.pi) - (x.log() - loc) ** 2 / (2 * scale**2)


def _factor(parts: ExactGPParts, theta: torch.Tensor, sqdist: torch.Tensor):
    """The noise-free kernel K_f (b x n x n), the Cholesky factor L of K_f + noise, z = L^-1 (y - c),
    and the objective -(log marginal likelihood + log priors) / n (b)."""
    d, n = parts.d, parts.X.shape[0]
    ls = theta[:, :d]
    Kf = torch.exp(-0.5 * torch.einsum("kij,bk->bij", sqdist, ls.pow(-2)))
    noise = theta[:, d : d + 1].expand(-1, n) if parts.fixed_noise is None else parts.fixed_noise
    L = psd_safe_cholesky(Kf + torch.diag_embed(noise))  # adds jitter on failure, as gpytorch's own fits do
    z = torch.linalg.solve_triangular(L, (parts.y - theta[:, -1:]).unsqueeze(-1), upper=False)  # b x n x 1
    log_lik = -0.5 * (z * z).sum((-1, -2)) - torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1) - 0.5 * n * math.log(2 * math.pi)
    log_prior = _lognormal_logpdf(ls, *parts.ls_prior).sum(-1)
    if parts.ls_pool_sd is not None:
        log_prior = log_prior + pooling_log_prob(ls, parts.ls_pool_sd).sum(-1)
    if parts.noise_prior is not None:
        log_prior = log_prior + _lognormal_logpdf(theta[:, d], *parts.noise_prior)
    return Kf, L, z, -(log_lik + log_prior) / n


def negative_mll(parts: ExactGPParts, theta: torch.Tensor, sqdist: torch.Tensor) -> torch.Tensor:
    """-(log marginal likelihood + log priors) / n per output, as ExactMarginalLogLikelihood: b.

    theta: b x p, each row [lengthscales (d), noise (when inferred), constant]; sqdist: d x n x n.
    """
    return _factor(parts, theta, sqdist)[-1]


def _lognormal_nlogpdf_grad(x: torch.Tensor, loc: float, scale: float) -> torch.Tensor:
    """d/dx of -log LogNormal(x; loc, scale)."""
    return (1.0 + (x.log() - loc) / scale**2) / x


def negative_mll_and_grad(parts: ExactGPParts, theta: torch.Tensor, sqdist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """negative_mll (b) and its gradient in theta (b x p) in closed form, without autograd.

    With W = K^-1 - a a^T (a = K^-1 (y - c)): d/dnoise = tr(W) / 2, d/dl_k = sum(W * K_f * D_k) / (2 l_k^3)
    (K_f the noise-free kernel, D_k the squared distances along k), d/dc = -sum(a); priors added,
    all over n. Autograd's backward through the Cholesky cost as much as the objective itself.
    """
    d, n = parts.d, parts.X.shape[0]
    ls = theta[:, :d]
    Kf, L, z, value = _factor(parts, theta, sqdist)
    a = torch.linalg.solve_triangular(L.transpose(-1, -2), z, upper=True)  # b x n x 1
    W = torch.cholesky_inverse(L) - a @ a.transpose(-1, -2)
    ls_grad = 0.5 * torch.einsum("bij,kij->bk", W * Kf, sqdist) / ls.pow(3) + _lognormal_nlogpdf_grad(ls, *parts.ls_prior)
    if parts.ls_pool_sd is not None:  # d/dl_k of sum_j dev_j^2 / (2 sd^2): the mean's own derivative sums to zero
        u = ls.log()
        ls_grad = ls_grad + (u - u.mean(-1, keepdim=True)) / (parts.ls_pool_sd**2 * ls)
    grads = [ls_grad]
    if parts.fixed_noise is None:
        noise_grad = 0.5 * torch.diagonal(W, dim1=-2, dim2=-1).sum(-1) + _lognormal_nlogpdf_grad(theta[:, d], *parts.noise_prior)
        grads.append(noise_grad.unsqueeze(-1))
    grads.append(-a.sum((-1, -2)).unsqueeze(-1))
    return value, torch.cat(grads, dim=-1) / n


def _read_theta(model, parts: ExactGPParts) -> np.ndarray:
    with torch.no_grad():
        ls = model.covar_module.lengthscale.reshape(parts.b, parts.d)
        cols = [ls]
        if parts.fixed_noise is None:
            cols.append(model.likelihood.noise.reshape(parts.b, 1))
        cols.append(model.mean_module.constant.reshape(parts.b, 1))
        return torch.cat(cols, dim=-1).cpu().numpy().astype(np.float64)


def _write_theta(model, parts: ExactGPParts, theta: np.ndarray) -> None:
    t = torch.as_tensor(theta, dtype=parts.X.dtype, device=parts.X.device)
    d = parts.d
    with torch.no_grad():
        kernel = model.covar_module
        kernel.raw_lengthscale.copy_(t[:, :d].reshape(kernel.raw_lengthscale.shape))
        if parts.fixed_noise is None:
            raw = model.likelihood.noise_covar.raw_noise
            raw.copy_(t[:, d].reshape(raw.shape))
        mean = model.mean_module.raw_constant
        mean.copy_(t[:, -1].reshape(mean.shape))


def fit_exact_gp(model, maxiter: int = 200, ftol: float | None = None, parts: ExactGPParts | None = None) -> bool:
    """Fit `model` in place from its current hyperparameters (its prior modes, or a warm start).

    Returns False, leaving the model untouched, when the model is not of the handled structure
    (`parts`: exact_gp_parts(model), when the caller has it) or BoTorch lacks its batched L-BFGS-B. Raises on numerical failure (the
    caller's fallback chain refits with jitter). Leaves the model in eval mode, as fit_gpytorch_mll does.
    """
    parts = parts or exact_gp_parts(model)
    if parts is None or fast_paths.fmin_l_bfgs_b_batched is None:
        return False
    model.train()  # drops any prediction cache built with the old hyperparameters
    X = parts.X
    sqdist = (X.unsqueeze(-2) - X.unsqueeze(-3)).pow(2).permute(2, 0, 1).contiguous()  # d x n x n
    theta0 = _read_theta(model, parts)
    lower = [parts.ls_lower] * parts.d + ([parts.noise_lower] if parts.fixed_noise is None else []) + [-np.inf]
    bounds = [(lo, np.inf) for lo in lower]
    theta0 = np.maximum(theta0, np.array(lower))

    def objective(theta: np.ndarray, batch_indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        fixed = None if parts.fixed_noise is None else parts.fixed_noise[batch_indices]
        sub = replace(parts, y=parts.y[batch_indices], fixed_noise=fixed)
        t = torch.as_tensor(theta, dtype=X.dtype, device=X.device)
        loss, grad = negative_mll_and_grad(sub, t, sqdist)
        return loss.cpu().numpy().astype(np.float64), grad.cpu().numpy().astype(np.float64)

    options: dict = {"maxiter": maxiter}
    if ftol is not None:
        options.update(ftol=ftol, factr=None)
    xs, _, _ = fast_paths.fmin_l_bfgs_b_batched(objective, theta0, bounds=bounds, pass_batch_indices=True, **options)
    if not np.isfinite(xs).all():
        raise torch.linalg.LinAlgError("the fitted hyperparameters are not finite")
    _write_theta(model, parts, xs)
    model.eval()
    return True
