"""CachedLogNEI is BoTorch's qLogNEI at q = 1, computed from the cached training factor."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.objective import GenericMCObjective
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler

from policies.base import EncodedSpace, Objective, OutcomeConstraint, Problem
from policies.bayesian.acquisition import AcquisitionBuilder, Outcomes
from policies.bayesian.cached_nei import CachedLogNEI
from policies.bayesian.models import ModelSettings, TrainingData, fit_model
from simulators.functions import TestFunctionSimulator


def _fitted(name: str, n: int, constraint: bool = False):
    sim = TestFunctionSimulator(name, seed=0, **({"dim": 6} if name == "ackley" else {}))
    d = sim.dim
    X = torch.quasirandom.SobolEngine(d, scramble=True, seed=1).draw(n, dtype=torch.float64)
    b = sim.problem.bounds.double()
    y = sim.evaluate_tensor(b[0] + X * (b[1] - b[0])).reshape(n, -1)[:, :1].numpy()
    metrics = ["y"]
    if constraint:
        y = np.hstack([y, X[:, :1].numpy()])
        metrics = ["y", "c"]
    data = TrainingData(X=X.numpy(), Y=y, Yvar=None, metrics=metrics)
    fitted = fit_model(data, np.array([int(np.argmin(y[:, 0]))]), ModelSettings())
    space = EncodedSpace(names=[f"x{i}" for i in range(d)], levels=[None] * d, categorical=[False] * d)
    problem = Problem(
        space=space, objectives=[Objective("y", maximize=False)],
        constraints=[OutcomeConstraint("c", "<=", 0.5)] if constraint else [], seed=0,
    )
    return fitted, Outcomes.from_problem(problem), d


def _botorch_nei(fitted, X_baseline, samples: int, seed: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qLogNoisyExpectedImprovement(
            fitted.model, X_baseline=X_baseline, sampler=SobolQMCNormalSampler(torch.Size([samples]), seed=seed),
            objective=GenericMCObjective(lambda Z, X=None: -Z[..., 0]), prune_baseline=True,
        )


@pytest.mark.parametrize("name,n", [("hartmann6", 20), ("branin", 15), ("ackley", 30)])
def test_values_equal_botorchs_where_the_acquisition_is_high(name, n):
    fitted, _, d = _fitted(name, n)
    X_baseline = fitted.train_X
    reference = _botorch_nei(fitted, X_baseline, 8192, 3)
    ours = CachedLogNEI(fitted.model, X_baseline, -1.0, 8192, 5)
    T = torch.rand(1000, 1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = reference(T)
        top = torch.topk(ref, 30).indices
        diff = (ours(T[top]) - ref[top]).abs()
    assert float(diff.median()) < 0.02 and float(diff.max()) < 0.1


@pytest.mark.parametrize("name,n", [("hartmann6", 20), ("branin", 15), ("ackley", 30)])
def test_values_equal_botorchs_posterior_draws_from_the_same_base_samples(name, n):
    """Sample for sample: the candidate's draw given the kept baseline draws is the last row of BoTorch's
    joint posterior draw over (kept baseline, candidate) from the same normal base samples, so the
    values agree to rounding, not only to Monte-Carlo error as with independent QMC seeds above."""
    from botorch.acquisition.logei import TAU_RELU, _log_improvement

    fitted, _, d = _fitted(name, n)
    ours = CachedLogNEI(fitted.model, fitted.train_X, -1.0, 256, 5)
    T = torch.rand(200, 1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        top = torch.topk(ours(T), 10).indices  # where the acquisition matters
        base = torch.cat([ours._W, ours._z.unsqueeze(-1)], dim=-1).unsqueeze(-1)  # S x (k' + 1) x 1, whitened
        for x in T[top]:
            # the unit-cube Normalize is the identity, so ours._B (transformed) are model inputs too
            latent = fitted.model(torch.cat([ours._B, x]))  # gpytorch's joint posterior, standardised units
            f = latent.rsample(torch.Size([len(base)]), base_samples=base.squeeze(-1))  # S x (k' + 1)
            tf = fitted.model.outcome_transform
            draws = -(tf.means.squeeze() + tf.stdvs.squeeze() * f)  # in the metric's units, larger is better
            best = draws[:, :-1].amax(-1)
            torch.testing.assert_close(best, ours.best_f, rtol=1e-6, atol=1e-6)
            log_imp = _log_improvement(draws[:, -1:], best, tau=TAU_RELU, fat=True).squeeze(-1)  # S
            reference = torch.logsumexp(log_imp, dim=0) - math.log(len(log_imp))
            torch.testing.assert_close(ours(x.unsqueeze(0)), reference.reshape(1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,n", [("hartmann6", 20), ("branin", 15)])
def test_its_maximiser_is_as_good_as_the_maximiser_of_botorchs(name, n):
    fitted, _, d = _fitted(name, n)
    X_baseline = fitted.train_X
    judge = _botorch_nei(fitted, X_baseline, 8192, 11)
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).double()
    best = {}
    for label, acqf in (("botorch", _botorch_nei(fitted, X_baseline, 128, 3)), ("cached", CachedLogNEI(fitted.model, X_baseline, -1.0, 128, 5))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            X, _ = optimize_acqf(acqf, bounds, q=1, num_restarts=12, raw_samples=512, retry_on_optimization_warning=False)
        with torch.no_grad():
            best[label] = float(judge(X.unsqueeze(0)))
    assert best["cached"] >= best["botorch"] - 0.05


def test_pending_points_count_as_baseline_as_in_botorchs_incremental_nei():
    fitted, _, d = _fitted("hartmann6", 20)
    T = torch.rand(1000, 1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    without = CachedLogNEI(fitted.model, fitted.train_X, -1.0, 8192, 5)
    with torch.no_grad():
        best = T[int(torch.argmax(without(T)))]  # 1 x d
    pending = torch.cat([best, torch.rand(2, d, dtype=torch.float64, generator=torch.Generator().manual_seed(4))])
    reference = _botorch_nei(fitted, fitted.train_X, 8192, 3)
    reference.set_X_pending(pending)
    ours = CachedLogNEI(fitted.model, torch.cat([fitted.train_X, pending]), -1.0, 8192, 5)
    with torch.no_grad():
        ref = reference(T)
        top = torch.topk(ref, 30).indices
        assert float((ours(T[top]) - ref[top]).abs().median()) < 0.02
        # at a pending point there is nothing left to gain
        assert float(ours(best.unsqueeze(0))) < float(without(best.unsqueeze(0))) - 3.0


def test_the_builder_uses_it_unless_there_are_outcome_constraints():
    fitted, outcomes, d = _fitted("branin", 12)
    builder = AcquisitionBuilder("qlognei", fitted, outcomes, mc_samples=64, seed=0, beta=2.0)
    assert isinstance(builder.build(None), CachedLogNEI)
    assert isinstance(builder.build(fitted.tensor(np.full((1, d), 0.5))), CachedLogNEI)
    fitted_c, outcomes_c, _ = _fitted("branin", 12, constraint=True)
    constrained = AcquisitionBuilder("qlognei", fitted_c, outcomes_c, mc_samples=64, seed=0, beta=2.0)
    assert isinstance(constrained.build(None), qLogNoisyExpectedImprovement)


def test_it_takes_a_q_by_d_tensor_as_botorchs_acquisitions_do():
    fitted, _, d = _fitted("branin", 12)
    acqf = CachedLogNEI(fitted.model, fitted.train_X, -1.0, 64, 0)
    X = torch.full((1, d), 0.3, dtype=torch.float64, requires_grad=True)
    value = acqf(X)
    (grad,) = torch.autograd.grad(value.sum(), X)
    assert value.shape == (1,) and torch.isfinite(value).all() and torch.isfinite(grad).all()
    with torch.no_grad():
        assert torch.allclose(acqf(X.detach().unsqueeze(0)), value.detach())


@pytest.mark.parametrize("name,n", [("hartmann6", 20), ("branin", 15)])
def test_closed_form_gradient_equals_autograds(name, n):
    fitted, _, d = _fitted(name, n)
    acq = CachedLogNEI(fitted.model, fitted.train_X, -1.0, 256, 5)
    assert acq._closed_form
    T = torch.rand(12, 1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    values, grads = [], []
    for closed in (True, False):
        acq._closed_form = closed
        X = T.clone().requires_grad_(True)
        value = acq(X)
        (grad,) = torch.autograd.grad(value.sum(), X)
        values.append(value.detach())
        grads.append(grad)
    torch.testing.assert_close(values[0], values[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)
    assert grads[1].abs().max() > 1.0
