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
FLOAT32_MATMUL_UNIT = {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}  # unit roundoff: IEEE, TF32, bfloat16


def marginal_posterior(fitted, X: torch.Tensor, chunk: int = 4096, bound: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation of every output at each row of X (N x d): two N x m tensors.

    `fitted` is a BoTorch GP (SingleTaskGP, MixedSingleTaskGP, batched or not, or a ModelListGP of
    them) in eval mode, or anything with such a `.model`. Outcome transforms are undone.
    bound: instead of the std, an upper bound on it that costs no solve (see gp_marginals).
    """
    model = getattr(fitted, "model", fitted)
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(MAX_CHOLESKY):
        parts = [gp_marginals_any(model, Xc, bound) for Xc in X.split(chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def screen_posterior(fitted, X: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """marginal_posterior with the variance's product in float32 (gp_screen), for ranking a large pool:
    mean, std and rel (N x m each), the exact variance lying within std^2 * (1 +- rel)."""
    model = getattr(fitted, "model", fitted)
    gps = model.models if isinstance(model, ModelListGP) else [model]
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(MAX_CHOLESKY):
        parts = [[gp_screen(gp, Xc) for gp in gps] for Xc in X.split(chunk)]

    def joined(i: int) -> torch.Tensor:
        return torch.cat([torch.cat([g[i] for g in p], dim=-1) for p in parts])

    return joined(0), joined(1), joined(2)


def _state(gp: Model) -> tuple[tuple, torch.Tensor]:
    """What the factor depends on: the training data's identity (tensor, storage, in-place version)
    and a copy of every hyperparameter and likelihood buffer (fixed noise). Values, not versions,
    for the hyperparameters: gpytorch's setters write through `.data`, which bumps no version."""
    data = tuple((t, t.data_ptr(), t._version) for t in (gp.train_inputs[0], gp.train_targets))
    values = [p.detach().reshape(-1) for p in gp.parameters()] + [b.reshape(-1) for b in gp.likelihood.buffers()]
    return data, torch.cat(values) if values else torch.zeros(0)


def _same_state(a: tuple[tuple, torch.Tensor], b: tuple[tuple, torch.Tensor]) -> bool:
    return (all(x[0] is y[0] and x[1:] == y[1:] for x, y in zip(a[0], b[0]))
            and a[1].shape == b[1].shape and bool(torch.equal(a[1], b[1])))


def gp_factor(gp: Model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train inputs, Cholesky factor L of K + noise, alpha = K^-1 (y - prior mean)), cached on the GP
    and recomputed whenever its training data or hyperparameters change (in place included)."""
    state = _state(gp)
    cached = getattr(gp, "_aec_factor", None)
    if cached is not None and _same_state(cached[0], state):
        return cached[1]
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
    gp._aec_factor = (state, (train_X, L, alpha))
    return gp._aec_factor[1]


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


def inverse_factor32(gp: Model) -> tuple[torch.Tensor, torch.Tensor]:
    """L^-1 of gp_factor in float32, and the 2-norms of its columns (sqrt of the diagonal of K^-1),
    formed in the factor's own precision once per factor and cached (a new factor, a new inverse)."""
    _, L, _ = gp_factor(gp)
    cached = getattr(gp, "_aec_inverse32", None)
    if cached is None or cached[0] is not L:
        eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
        Linv = torch.linalg.solve_triangular(L, eye, upper=False)
        cached = gp._aec_inverse32 = (L, (Linv.to(torch.float32), torch.linalg.vector_norm(Linv, dim=-2)))
    return cached[1]


def gp_marginals_any(model: Model, X: torch.Tensor, bound: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """gp_marginals of a GP or of every GP of a ModelListGP (outputs concatenated); differentiable in X."""
    gps = model.models if isinstance(model, ModelListGP) else [model]
    parts = [gp_marginals(gp, X, bound) for gp in gps]
    return torch.cat([p[0] for p in parts], dim=-1), torch.cat([p[1] for p in parts], dim=-1)


def cross_terms(gp: Model, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, K(X, train) (b) x N x n, k(x, x) (b) x N, mean before the outcome transform (b) x N) of one GP."""
    train_X, L, alpha = gp_factor(gp)
    Xt = gp.transform_inputs(X)
    if train_X.dim() == 3:  # batched over outputs
        Xt = Xt.unsqueeze(0).expand(train_X.shape[0], *Xt.shape)
    kernel = gp.covar_module
    Kxn, kxx = cross_kernel(kernel, Xt, train_X), prior_variance(kernel, Xt)
    return L, Kxn, kxx, gp.mean_module(Xt) + (Kxn @ alpha).squeeze(-1)


def columns(t: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """A (b) x N tensor as N x m: b outputs when the factor L is batched, else one."""
    return t.transpose(-1, -2) if L.dim() == 3 else t.unsqueeze(-1)


def untransform(gp: Model, L: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b) x N mean and variance as N x m (see columns), the outcome transform undone."""
    mean, var = columns(mean, L), columns(var, L)
    tf = getattr(gp, "outcome_transform", None)
    return tf.untransform(mean, var) if tf is not None else (mean, var)


def gp_marginals(gp: Model, X: torch.Tensor, bound: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (N x m, outcome transform undone) of one GP at X (N x d); differentiable in X.

    bound: the std given only the most correlated training point, k(x,x) - max_i k(x,x_i)^2 / K_ii
    (K_ii of the factored matrix, noise and jitter included). Conditioning on more data never
    raises a GP's variance, so this bounds the exact std from above at the cost of the mean alone.
    """
    L, Kxn, kxx, mean = cross_terms(gp, X)
    if bound:
        scale = (L * L).sum(-1).rsqrt().unsqueeze(-2)  # (b) x 1 x n: 1 / sqrt of the diagonal of L L^T
        if (torch.is_grad_enabled() and Kxn.requires_grad) or not is_plain_rbf(gp.covar_module):
            var = (kxx - (Kxn * scale).amax(-1) ** 2).clamp_min(1e-12)
        else:  # in place on rbf's own output: a fresh 4096 x 200 temporary cost more than the product
            var = (kxx - Kxn.mul_(scale).amax(-1) ** 2).clamp_min(1e-12)
    else:
        V = torch.linalg.solve_triangular(L, Kxn.transpose(-1, -2), upper=False)
        var = (kxx - (V * V).sum(-2)).clamp_min(1e-12)
    mean, var = untransform(gp, L, mean, var)
    return mean, var.clamp_min(0).sqrt()


def gp_screen(gp: Model, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, std and a bound rel on the variance's relative error (N x m each) of one GP at X, the
    n x N product behind the variance (most of the cost at large N) in float32 against a cached L^-1.

    With v = L^-1 k (k = K(train, x) in float64) and V = fl32(fl32(L^-1) fl32(k)): each rounding
    errs by at most u = 2^-24 relatively, and a dot product of n terms, in any summation order, by
    g_n = n u / (1 - n u) of |L^-1| |k| (Higham, Accuracy and Stability, 3.1); so |V - v| <=
    g_{n+2} |L^-1| |k| elementwise, and over the columns of L^-1, ||V - v||_2 <= d :=
    g_{n+3} sum_j |k_j| ||L^-1 e_j||_2 (the extra unit covers float64's own rounding, 2^29 times
    smaller; the elementwise bound's norm is 2-3x tighter but costs a second n x N product). With
    s = ||V||^2 summed in float64, |s - ||v||^2| <= d (2 ||V|| + d) =: E, and rel = E / (k(x,x) - s).
    Kernel, mean and s stay in float64; float32 underflow (below 1e-38) is ignored; TF32 or
    bfloat16 products (torch's float32_matmul_precision) raise u. Being worst-case, E is 1e3-1e5
    times the errors seen, so callers redo in float64 only the rows whose bound could change what
    they decide (pool_search._screen_every_row), not every row with a large rel.
    """
    L = gp_factor(gp)[1]
    nu = (L.shape[-1] + 3) * FLOAT32_MATMUL_UNIT[torch.get_float32_matmul_precision()]
    if L.dtype != torch.float64 or nu >= 1.0:  # a float32 model, or products too coarse to bound: exact
        mean, std = gp_marginals(gp, X)
        return mean, std, torch.zeros_like(std)
    L, Kxn, kxx, mean = cross_terms(gp, X)
    Linv32, colnorm = inverse_factor32(gp)
    V = Kxn.to(torch.float32) @ Linv32.transpose(-1, -2)  # (b) x N x n
    s = torch.linalg.vector_norm(V, dim=-1, dtype=torch.float64) ** 2
    var = (kxx - s).clamp_min(1e-12)
    K = Kxn if is_plain_rbf(gp.covar_module) else Kxn.abs()  # the RBF kernel is positive
    d = nu / (1.0 - nu) * (K @ colnorm.unsqueeze(-1)).squeeze(-1)
    rel = d * (2.0 * s.sqrt() + d) / var
    mean, var = untransform(gp, L, mean, var)
    return mean, var.sqrt(), columns(rel, L)  # rel: invariant under Standardize's scaling
