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
from gpytorch.kernels import RBFKernel
from linear_operator.utils.cholesky import psd_safe_cholesky

MAX_CHOLESKY = 4096  # fits and posteriors use Cholesky up to this many points (gpytorch: CG above 800)
SCREEN_EXACT_BELOW = 1e-3  # screened rows whose variance is under this fraction of the prior's are redone in float64



def marginal_posterior(
    fitted, X: torch.Tensor, chunk: int = 4096, screen: bool = False, bound: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation of every output at each row of X (N x d): two N x m tensors.

    `fitted` is a BoTorch GP (SingleTaskGP, MixedSingleTaskGP, batched or not, or a ModelListGP of
    them) in eval mode, or anything with such a `.model`. Outcome transforms are undone.
    screen: the variance's n x N product in float32 (see gp_marginals), for ranking a large pool.
    bound: instead of the std, an upper bound on it that costs no solve (see gp_marginals).
    """
    model = getattr(fitted, "model", fitted)
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(MAX_CHOLESKY):
        parts = [gp_marginals_any(model, Xc, screen, bound) for Xc in X.split(chunk)]
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


def is_plain_rbf(kernel) -> bool:
    """BoTorch's default kernel: an RBF over every input, no output scale."""
    return type(kernel) is RBFKernel and kernel.active_dims is None


def rbf(A: torch.Tensor, B: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """K(A, B) of an RBF kernel, (b) x N x M, written out: gpytorch's lazy kernel tensors cost ~0.3 ms
    a call at small sizes, and 35 ms against this one's 27 ms for 65,536 x 200 (in place)."""
    return rbf_of_scaled(A / lengthscale, B / lengthscale)


def rbf_of_scaled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """exp(-|a_i - b_j|^2 / 2) for inputs already divided by the lengthscales; in place unless a
    gradient is needed (out of place it took 68 ms for 65,536 x 200)."""
    sq = (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return torch.exp(-0.5 * (sq - 2.0 * a @ b.transpose(-1, -2)).clamp_min(0.0))
    return sq.add_(a @ b.transpose(-1, -2), alpha=-2.0).clamp_min_(0.0).mul_(-0.5).exp_()


def cross_kernel(kernel, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """K(A, B) as a dense tensor: `rbf` for BoTorch's default kernel, gpytorch for any other."""
    return rbf(A, B, kernel.lengthscale) if is_plain_rbf(kernel) else kernel(A, B).to_dense()


def prior_variance(kernel, X: torch.Tensor) -> torch.Tensor:
    """k(x, x) at each row of X: 1 for BoTorch's default kernel (no output scale)."""
    return torch.ones(X.shape[:-1], dtype=X.dtype, device=X.device) if is_plain_rbf(kernel) else kernel(X, diag=True)


def inverse_factor32(gp: Model) -> torch.Tensor:
    """L^-1 of gp_factor in float32, formed in the factor's own precision once per GP and cached."""
    cached = getattr(gp, "_aec_inverse32", None)
    if cached is None:
        _, L, _ = gp_factor(gp)
        eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
        cached = torch.linalg.solve_triangular(L, eye, upper=False).to(torch.float32)
        gp._aec_inverse32 = cached
    return cached


def gp_marginals_any(model: Model, X: torch.Tensor, screen: bool = False, bound: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """gp_marginals of a GP or of every GP of a ModelListGP (outputs concatenated); differentiable in X."""
    gps = model.models if isinstance(model, ModelListGP) else [model]
    parts = [gp_marginals(gp, X, screen, bound) for gp in gps]
    return torch.cat([p[0] for p in parts], dim=-1), torch.cat([p[1] for p in parts], dim=-1)


def gp_marginals(gp: Model, X: torch.Tensor, screen: bool = False, bound: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (N x m, outcome transform undone) of one GP at X (N x d); differentiable in X.

    screen: the n x N product behind the variance (most of the cost at large N: 2.6 GFLOP for
    65,536 rows at n = 200) runs in float32 against a cached float32 L^-1: 126-132 ms against
    152 ms for all 65,536 rows here, the kernel included.
    Kernel and mean stay in float64. float32 leaves an absolute error of ~1e-6 of the prior
    variance, so rows whose variance is below SCREEN_EXACT_BELOW of it (next to the data) are
    recomputed in float64: every std is then within ~1e-3 of its exact value, relatively.
    bound: the std given only the most correlated training point, k(x,x) - max_i k(x,x_i)^2 / K_ii
    (K_ii of the factored matrix, noise and jitter included). Conditioning on more data never
    raises a GP's variance, so this bounds the exact std from above at the cost of the mean alone.
    """
    train_X, L, alpha = gp_factor(gp)
    Xt = gp.transform_inputs(X)
    batched = train_X.dim() == 3
    if batched:
        Xt = Xt.unsqueeze(0).expand(train_X.shape[0], *Xt.shape)
    kernel = gp.covar_module
    Kxn, kxx = cross_kernel(kernel, Xt, train_X), prior_variance(kernel, Xt)  # (b) x N x n, (b) x N
    mean = gp.mean_module(Xt) + (Kxn @ alpha).squeeze(-1)
    if bound:
        scale = (L * L).sum(-1).rsqrt().unsqueeze(-2)  # (b) x 1 x n: 1 / sqrt of the diagonal of L L^T
        if (torch.is_grad_enabled() and Kxn.requires_grad) or not is_plain_rbf(kernel):
            var = (kxx - (Kxn * scale).amax(-1) ** 2).clamp_min(1e-12)
        else:  # in place on rbf's own output: a fresh 4096 x 200 temporary cost more than the product
            var = (kxx - Kxn.mul_(scale).amax(-1) ** 2).clamp_min(1e-12)
    elif screen and L.dtype == torch.float64:
        V = Kxn.to(torch.float32) @ inverse_factor32(gp).transpose(-1, -2)  # (b) x N x n
        var = kxx - (V * V).sum(-1).to(kxx.dtype)
        close = (var < SCREEN_EXACT_BELOW * kxx).reshape(-1, var.shape[-1]).any(0)  # float32 cancels here
        if bool(close.any()):
            Vc = torch.linalg.solve_triangular(L, Kxn[..., close, :].transpose(-1, -2), upper=False)
            var[..., close] = kxx[..., close] - (Vc * Vc).sum(-2)
        var = var.clamp_min(1e-12)
    else:
        V = torch.linalg.solve_triangular(L, Kxn.transpose(-1, -2), upper=False)
        var = (kxx - (V * V).sum(-2)).clamp_min(1e-12)
    mean = mean.transpose(-1, -2) if batched else mean.unsqueeze(-1)  # N x m
    var = var.transpose(-1, -2) if batched else var.unsqueeze(-1)
    tf = getattr(gp, "outcome_transform", None)
    if tf is not None:
        mean, var = tf.untransform(mean, var)
    return mean, var.clamp_min(0).sqrt()
