"""qLogNEI at one new point, sampled through the cached factor of the training covariance.

BoTorch's qLogNoisyExpectedImprovement draws joint posterior samples of the observed (baseline)
points and the candidate, takes the best baseline sample as the incumbent of each draw, and
averages the smoothed log improvement. It builds gpytorch's posterior over the baseline plus
the candidate at every evaluation (1.9 ms for a forward and backward pass over 12 points on a
quiet machine, 8-10 ms with the other core busy), which made the acquisition search the larger
half of a proposal. This module computes the same quantity for q = 1 from
the factor cached on the GP (posterior.py): the baseline draws are fixed once, and a candidate's
draw is its exact Gaussian conditional given them, so an evaluation is a few small matrix
products (0.52 ms forward and backward, the backward in closed form for the RBF kernel; values
equal BoTorch's to Monte-Carlo error; tests/test_cached_nei.py). The smooth
log-improvement and the mean over draws are BoTorch's own (TAU_RELU, logmeanexp); its smooth max over
the q points (fatmax) is the identity at q = 1.
"""
from __future__ import annotations

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.models import ModelListGP
from botorch.models.model import Model
from botorch.utils.safe_math import logmeanexp
from botorch.utils.sampling import draw_sobol_normal_samples
from botorch.utils.transforms import t_batch_mode_transform
from gpytorch.means import ConstantMean
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from policies.bayesian import fast_paths
from policies.bayesian.posterior import cross_kernel, gp_factor, is_plain_rbf, prior_variance, rbf_of_scaled

__all__ = ["CachedLogNEI", "supports_cached_nei"]


def supports_cached_nei(model: Model) -> bool:
    """One exact GP with one output (SingleTaskGP or MixedSingleTaskGP, not a list or a batch), and
    BoTorch's log-improvement available (fast_paths.MISSING)."""
    if "cached_nei" in fast_paths.MISSING:
        return False
    if isinstance(model, ModelListGP) or getattr(model, "num_outputs", 0) != 1:
        return False
    train_X = getattr(model, "train_inputs", (None,))[0]
    return train_X is not None and train_X.dim() == 2 and hasattr(model, "covar_module") and hasattr(model, "likelihood")


class CachedLogNEI(AcquisitionFunction):
    """log E[max(sign * f(x) - max_b sign * f(x_b), 0)] (smoothed as BoTorch's qLogNEI) at q = 1.

    model: a GP for which supports_cached_nei holds; X_baseline: k x d observed points; sign: +1
    to maximise the output, -1 to minimise it; mc_samples quasi-MC draws seeded by `seed`.
    """

    def __init__(self, model: Model, X_baseline: Tensor, sign: float, mc_samples: int, seed: int):
        super().__init__(model=model)
        self.sign = float(sign)
        kernel = model.covar_module
        self._closed_form = is_plain_rbf(kernel) and type(model.mean_module) is ConstantMean
        with torch.no_grad():
            self._train_X, self._L, self._alpha = gp_factor(model)
            B = model.transform_inputs(X_baseline)
            mu_B, V_B = self._latent(B)
            cov_BB = cross_kernel(kernel, B, B) - V_B.transpose(-1, -2) @ V_B
            L_B = psd_safe_cholesky(cov_BB)
            base = draw_sobol_normal_samples(d=len(B) + 1, n=mc_samples, seed=seed).to(B)  # S x (k + 1)
            f_B = mu_B + base[:, :-1] @ L_B.transpose(-1, -2)  # S x k latent draws, standardised units
            obj_B = self._objective(f_B)
            self.register_buffer("best_f", obj_B.amax(dim=-1))  # S
            keep = torch.unique(obj_B.argmax(dim=-1))  # points that are the best in some draw (BoTorch prunes so too)
            self._B = B[keep]
            self._mu_B, self._V_B = mu_B[keep], V_B[:, keep]
            self._L_B = psd_safe_cholesky(cov_BB[keep][:, keep])
            # The kept draws, whitened: a candidate's draw is mu_x + c^T w + s z given them.
            self._W = torch.linalg.solve_triangular(self._L_B, (f_B[:, keep] - self._mu_B).T, upper=False).T  # S x k'
            self._z = base[:, -1]  # S
            if self._closed_form:
                ls = kernel.lengthscale.reshape(-1)
                self._ls, self._scaled_train, self._scaled_B = ls, self._train_X / ls, self._B / ls
                self._constant = model.mean_module.constant.reshape(())

    def _latent(self, Xt: Tensor) -> tuple[Tensor, Tensor]:
        """Latent mean (N) and V = L^-1 K(train, Xt) (n x N) in standardised units at transformed inputs Xt."""
        K = cross_kernel(self.model.covar_module, self._train_X, Xt)
        mean = self.model.mean_module(Xt) + (K.transpose(-1, -2) @ self._alpha).squeeze(-1)
        return mean, torch.linalg.solve_triangular(self._L, K, upper=False)

    def _objective(self, f: Tensor) -> Tensor:
        """Standardised latent values -> the objective in the metric's units (larger is better)."""
        tf = getattr(self.model, "outcome_transform", None)
        if tf is not None:
            f = tf.means.squeeze() + tf.stdvs.squeeze() * f
        return self.sign * f

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: Tensor) -> Tensor:
        """X: b x 1 x d (or 1 x d) -> b."""
        Xt = self.model.transform_inputs(X.squeeze(-2))  # b x d
        f = _CandidateDraws.apply(Xt, self) if self._closed_form else self._draws(Xt)
        log_imp = fast_paths.log_improvement(
            self._objective(f).unsqueeze(-1), self.best_f.unsqueeze(-1), tau=fast_paths.TAU_RELU, fat=True
        )
        return logmeanexp(log_imp.squeeze(-1), dim=0)  # b; BoTorch's smooth max over q is the identity at q = 1

    def _draws(self, Xt: Tensor) -> Tensor:
        """The candidates' latent draws (S x b) given the fixed baseline draws, through autograd."""
        mu, V = self._latent(Xt)
        var = prior_variance(self.model.covar_module, Xt) - (V * V).sum(0)  # b
        cross = cross_kernel(self.model.covar_module, self._B, Xt) - self._V_B.transpose(-1, -2) @ V  # k' x b
        c = torch.linalg.solve_triangular(self._L_B, cross, upper=False)  # k' x b
        resid = (var - (c * c).sum(0)).clamp_min(1e-12).sqrt()  # b
        return mu + self._W @ c + self._z.unsqueeze(-1) * resid  # S x b


class _CandidateDraws(torch.autograd.Function):
    """CachedLogNEI._draws for the plain RBF kernel and a constant mean, with the backward pass in
    closed form: autograd's graph over these ~15 small operations cost as much as evaluating them."""

    @staticmethod
    def forward(ctx, Xt: Tensor, acq: CachedLogNEI) -> Tensor:
        a = Xt / acq._ls
        K_t, K_B = rbf_of_scaled(acq._scaled_train, a), rbf_of_scaled(acq._scaled_B, a)  # n x b, k' x b
        mu = acq._constant + (K_t.T @ acq._alpha).squeeze(-1)
        V = torch.linalg.solve_triangular(acq._L, K_t, upper=False)
        c = torch.linalg.solve_triangular(acq._L_B, K_B - acq._V_B.T @ V, upper=False)
        r2 = 1.0 - (V * V).sum(0) - (c * c).sum(0)
        resid = r2.clamp_min(1e-12).sqrt()
        ctx.acq = acq
        ctx.save_for_backward(a, K_t, K_B, V, c, resid, r2 > 1e-12)
        return mu + acq._W @ c + acq._z.unsqueeze(-1) * resid

    @staticmethod
    def backward(ctx, g_f: Tensor):
        acq = ctx.acq
        a, K_t, K_B, V, c, resid, inside = ctx.saved_tensors
        g_r2 = torch.where(inside, (acq._z @ g_f) / (2.0 * resid), 0.0)  # b
        g_c = acq._W.T @ g_f - 2.0 * c * g_r2
        g_KB = torch.linalg.solve_triangular(acq._L_B.T, g_c, upper=True)  # d/d(K_B - V_B^T V)
        g_V = -(acq._V_B @ g_KB) - 2.0 * V * g_r2
        g_Kt = torch.linalg.solve_triangular(acq._L.T, g_V, upper=True) + acq._alpha * g_f.sum(0)
        G_t, G_B = g_Kt * K_t, g_KB * K_B
        g_a = G_t.T @ acq._scaled_train + G_B.T @ acq._scaled_B - (G_t.sum(0) + G_B.sum(0)).unsqueeze(-1) * a
        return g_a / acq._ls, None
