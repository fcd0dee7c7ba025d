"""The fast GP fit computes BoTorch's own objective and reaches BoTorch's own optimum."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import MixedSingleTaskGP, SingleTaskGP
from botorch.models.transforms import Normalize, Standardize
from botorch.test_functions import Hartmann
from botorch.test_functions.multi_objective import VehicleSafety
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import MaternKernel
from gpytorch.means import ConstantMean
from gpytorch.priors import NormalPrior
from gpytorch.mlls import ExactMarginalLogLikelihood

from policies.bayesian.mll_fit import exact_gp_parts, fit_exact_gp, negative_mll, negative_mll_and_grad
from policies.bayesian.models import HyperparameterCache, ModelSettings, TrainingData, _optimise, fit_model
from policies.bayesian.priors import pool_lengthscales


def _data(problem, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.quasirandom.SobolEngine(problem.dim, scramble=True, seed=seed).draw(n, dtype=torch.float64)
    Y = problem(problem.bounds[0] + X * (problem.bounds[1] - problem.bounds[0]))
    return X, Y.unsqueeze(-1) if Y.dim() == 1 else Y


def _gp(X: torch.Tensor, Y: torch.Tensor, fixed: bool, pool: float | None = None) -> SingleTaskGP:
    d = X.shape[-1]
    unit = torch.stack([torch.zeros(d), torch.ones(d)]).to(X)
    Yvar = 1e-2 * Y.var(0).expand_as(Y) if fixed else None
    model = SingleTaskGP(X, Y, train_Yvar=Yvar, input_transform=Normalize(d, bounds=unit), outcome_transform=Standardize(Y.shape[-1]))
    if pool is not None:
        pool_lengthscales(model.covar_module, pool)
    return model


def _mll(model) -> np.ndarray:
    """gpytorch's ExactMarginalLogLikelihood (with priors, divided by n), one value per output."""
    model.train()
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with torch.no_grad():
        value = mll(model(*model.train_inputs), model.train_targets)
    model.eval()
    return value.reshape(-1).numpy()


@pytest.mark.parametrize("pool", [None, 0.5])
@pytest.mark.parametrize("fixed", [False, True])
def test_objective_equals_gpytorchs_marginal_likelihood_at_any_hyperparameters(fixed, pool):
    X, Y = _data(VehicleSafety(), 30, 1)
    model = _gp(X, Y, fixed, pool)
    with torch.no_grad():
        model.covar_module.lengthscale = torch.tensor([[[0.3, 1.2, 0.7, 2.0, 0.1]], [[1.0] * 5], [[0.05, 3.0, 0.4, 0.4, 0.9]]]).double()
        if not fixed:
            model.likelihood.noise = torch.tensor([[0.01], [0.2], [1e-3]]).double()
        model.mean_module.constant.copy_(torch.tensor([0.3, -0.2, 0.0]).double())
    parts = exact_gp_parts(model)
    assert parts.ls_pool_sd == pool
    d = parts.d
    theta = [model.covar_module.lengthscale.reshape(3, d)]
    if not fixed:
        theta.append(model.likelihood.noise.reshape(3, 1))
    theta.append(model.mean_module.constant.reshape(3, 1))
    sqdist = (parts.X.unsqueeze(-2) - parts.X.unsqueeze(-3)).pow(2).permute(2, 0, 1)
    ours = -negative_mll(parts, torch.cat(theta, -1).detach(), sqdist).numpy()
    np.testing.assert_allclose(ours, _mll(model), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("pool", [None, 0.5])
@pytest.mark.parametrize("fixed", [False, True])
def test_closed_form_gradient_equals_autograds(fixed, pool):
    X, Y = _data(VehicleSafety(), 30, 1)
    parts = exact_gp_parts(_gp(X, Y, fixed, pool))
    g = torch.Generator().manual_seed(0)
    cols = [0.05 + 2 * torch.rand(3, parts.d, generator=g, dtype=torch.float64)]
    if not fixed:
        cols.append(1e-3 + 0.2 * torch.rand(3, 1, generator=g, dtype=torch.float64))
    cols.append(torch.randn(3, 1, generator=g, dtype=torch.float64))
    theta = torch.cat(cols, -1).requires_grad_(True)
    sqdist = (parts.X.unsqueeze(-2) - parts.X.unsqueeze(-3)).pow(2).permute(2, 0, 1)
    value = negative_mll(parts, theta, sqdist)
    (expected,) = torch.autograd.grad(value.sum(), theta)
    closed_value, closed = negative_mll_and_grad(parts, theta.detach(), sqdist)
    np.testing.assert_allclose(closed_value.numpy(), value.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(closed.numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)
    assert closed.abs().max() > 0.1  # a point away from the optimum, so the comparison means something


@pytest.mark.parametrize("fixed,pool", [(False, None), (True, None), (False, 0.5)])
@pytest.mark.parametrize("problem,n", [(Hartmann(6), 25), (Hartmann(6), 80), (VehicleSafety(), 40)])
def test_fit_reaches_botorchs_optimum(problem, n, fixed, pool):
    X, Y = _data(problem, n, seed=n)
    reference, fast = _gp(X, Y, fixed, pool), _gp(X, Y, fixed, pool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_gpytorch_mll(ExactMarginalLogLikelihood(reference.likelihood, reference), optimizer_kwargs={"options": {"maxiter": 200}})
    assert fit_exact_gp(fast, maxiter=200)
    # The same local optimum from the same start: equal to the optimiser's tolerance, never worse by more.
    np.testing.assert_allclose(_mll(fast), _mll(reference), atol=5e-3)
    assert (_mll(fast) >= _mll(reference) - 5e-3).all()
    assert not fast.training


def test_models_it_does_not_handle_go_to_botorchs_fit():
    X, Y = _data(Hartmann(6), 20, 3)
    matern = SingleTaskGP(X, Y, covar_module=MaternKernel(ard_num_dims=6))
    softplus_noise = _gp(X, Y, fixed=False)
    softplus_noise.likelihood.noise_covar.register_constraint("raw_noise", GreaterThan(1e-3))
    Xc = torch.cat([X[:, :5], torch.randint(0, 3, (20, 1)).double()], -1)
    mixed = MixedSingleTaskGP(Xc, Y, cat_dims=[5])
    mean_prior = SingleTaskGP(X, Y, mean_module=ConstantMean(constant_prior=NormalPrior(0.0, 1.0)))
    for model in (matern, softplus_noise, mixed, mean_prior):
        assert exact_gp_parts(model) is None
        before = _mll(model)
        _optimise(model, ModelSettings().fit_maxiter)  # falls back to fit_gpytorch_mll and still fits
        assert (_mll(model) > before).all()


def test_warm_started_fit_in_a_loop_uses_the_fast_path_without_a_fallback():
    X, Y = _data(Hartmann(6), 45, 5)
    settings = ModelSettings()
    cache = HyperparameterCache()
    data = TrainingData(X=X[:40].numpy(), Y=Y[:40].numpy(), Yvar=None, metrics=["y"])
    fit_model(data, np.array([0]), settings, cache)
    grown = TrainingData(X=X.numpy(), Y=Y.numpy(), Yvar=None, metrics=["y"])
    fitted = fit_model(grown, np.array([0]), settings, cache)
    assert fitted.warm_started and fitted.jitter is None and fitted.fit_error is None
    cold = _gp(X, Y, fixed=False, pool=settings.lengthscale_pooling)
    assert fit_exact_gp(cold)
    assert _mll(fitted.model)[0] >= _mll(cold)[0] - 5e-3


@pytest.mark.parametrize("metrics", [1, 2])
def test_pooling_pulls_the_fitted_length_scales_together(metrics):
    """y depends on x0 alone: BoTorch's ARD prior lets the other length scales grow; a tight pooling sd holds every
    length scale of each output within a few percent of their geometric mean, through fit_model's fast path."""
    X = torch.quasirandom.SobolEngine(4, scramble=True, seed=7).draw(20, dtype=torch.float64).numpy()
    Y = np.column_stack([np.sin(6 * X[:, 0]), np.cos(5 * X[:, 0])])[:, :metrics]
    spread = {}
    for pool in (None, 0.01):
        fitted = fit_model(TrainingData(X, Y, None, ["a", "b"][:metrics]), np.array([0]), ModelSettings(lengthscale_pooling=pool))
        if pool is not None:
            parts = exact_gp_parts(fitted.model)
            assert parts is not None and parts.ls_pool_sd == pool  # the fast fit, not fit_gpytorch_mll
        log_ls = fitted.model.covar_module.lengthscale.detach().log().reshape(metrics, 4)
        spread[pool] = (log_ls - log_ls.mean(-1, keepdim=True)).abs().max().item()
    assert spread[None] > 0.5
    assert spread[0.01] < 0.05
