"""BotorchPolicy: what it proposes, under which guarantees, and how it fails safe.

Models stay small (n <= ~30) and optimisers cheap (FAST) so the file runs in well under a
minute on two busy cores; the Branin comparison uses batches to keep model fits few.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood

from policies import PolicyConfigError, PolicyFallbackError, make_policy, validate_options
from policies.base import (
    EncodedSpace,
    History,
    LinearConstraint,
    Objective,
    Observation,
    OutcomeConstraint,
    Problem,
    Proposal,
)
from policies.bayesian import BotorchPolicy
from policies.bayesian.acquisition import AcquisitionBuilder
from policies.bayesian import models as models_module
from policies.bayesian.models import (
    ModelSettings,
    TrainingData,
    fit_model,
    marginal_posterior,
    select_subset,
)
from policies.bayesian.route import TravelCost, order_route, route_length
from policies.baselines import RandomPolicy
from tests.bayes_helpers import ACQUISITIONS, BRANIN, FAST, branin, cube, history, policy, quadratic

@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small GPs run fastest on one thread, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# options and registry


def test_options_accept_the_campaign_file_keys_and_reject_unknown_ones():
    opts = validate_options("botorch", {"acquisition": "qlognei", "batch": 4, "initial": 10})
    assert opts.kind == "botorch" and opts.batch == 4 and opts.initial == 10
    with pytest.raises(PolicyConfigError, match="acqusition"):
        validate_options("botorch", {"acqusition": "ucb"})
    with pytest.raises(PolicyConfigError, match="device"):
        validate_options("botorch", {"device": "tpu"})
    with pytest.raises(PolicyConfigError, match="lengthscale_pooling"):
        validate_options("botorch", {"lengthscale_pooling": 0})


@pytest.mark.parametrize("metrics,pooling,prior", [
    (1, {}, "PooledLogNormalPrior"), (1, {"lengthscale_pooling": None}, "LogNormalPrior"),
    (2, {}, "LogNormalPrior"), (2, {"lengthscale_pooling": 0.5}, "PooledLogNormalPrior"),
])
def test_length_scales_are_pooled_with_one_metric_by_default_and_the_option_decides(metrics, pooling, prior):
    objectives = [Objective("y"), Objective("z")][:metrics]
    pol = policy(cube(3), objectives=objectives, **pooling)
    H = history(np.random.default_rng(0).random((12, 3)), lambda x: {"y": float(x.sum()), "z": float(x[0] - x[1])})
    fitted = fit_model(pol._training_data(H), np.array([0]), pol.model_settings)
    assert type(fitted.model.covar_module.lengthscale_prior).__name__ == prior
    if prior == "PooledLogNormalPrior":
        assert fitted.model.covar_module.lengthscale_prior.pool_sd == 0.5


def test_fits_of_several_metrics_stay_cold_until_the_fit_subset_is_full():
    one = policy(cube(2))
    two = policy(cube(2), objectives=[Objective("f0"), Objective("f1")])
    constrained = policy(cube(2), constraints=[OutcomeConstraint("g", "<=", 1.0)])
    assert one.model_settings.warm_start_after == 30
    assert two.model_settings.warm_start_after == constrained.model_settings.warm_start_after == 256
    assert policy(cube(2), objectives=[Objective("f0"), Objective("f1")], warm_start_after=12).model_settings.warm_start_after == 12


def test_registry_builds_a_botorch_policy():
    problem = Problem(space=cube(2), objectives=[Objective("y")])
    assert isinstance(make_policy("botorch", {"acquisition": "ucb"}, problem), BotorchPolicy)


def test_acquisitions_that_need_one_objective_refuse_two():
    problem = Problem(space=cube(2), objectives=[Objective("a"), Objective("b")])
    for name in ("ucb", "logei"):
        with pytest.raises(ValueError, match="qlognehvi"):
            BotorchPolicy(problem, BotorchPolicy.Options(acquisition=name))
    assert BotorchPolicy(problem).acquisition == "qlognehvi"


# ------------------------------------------------------------------------------------------------
# initial design, determinism


def test_sobol_points_until_the_initial_design_is_issued_then_the_model():
    pol = policy(cube(2), initial=5, center=False)
    first = pol.propose(History(), 5, [])
    assert all(p.reason["initial_design"] and p.reason["acquisition"] == "sobol" for p in first)
    # 3 completed + 1 pending = 4 issued: one more Sobol point, continuing the sequence
    H = history(np.array([p.x for p in first[:3]]), quadratic)
    (fifth,) = pol.propose(H, 1, [Proposal(x=first[3].x)])
    assert fifth.reason["initial_design"] is True
    np.testing.assert_allclose(fifth.x, first[4].x)
    # 3 completed + 2 pending = 5 issued: the model takes over
    (model,) = pol.propose(H, 1, [Proposal(x=first[3].x), Proposal(x=first[4].x)])
    assert model.reason["initial_design"] is False and model.reason["acquisition"] == "qlognei"


def test_the_centre_opens_the_initial_design_by_default():
    pol = policy(cube(3), initial=4)
    first = pol.propose(History(), 3, [])
    np.testing.assert_allclose(first[0].x, 0.5)
    assert first[0].reason["acquisition"] == "center" and first[0].reason["initial_design"]
    assert [p.reason["acquisition"] for p in first[1:]] == ["sobol", "sobol"]
    # the same design one point at a time, the first one completed: the same points
    H = history(np.array([first[0].x]), quadratic)
    np.testing.assert_allclose(pol.propose(H, 1, [])[0].x, first[1].x)
    assert not any(np.allclose(p.x, 0.5) for p in policy(cube(3), initial=4, center=False).propose(History(), 3, []))
    # a centre that breaks a linear constraint (x0 >= 0.6) is left out; a pool gives its row nearest the centre
    constrained = policy(cube(2, linear_constraints=[LinearConstraint((0,), (1.0,), 0.6)]), center=True)
    assert all(p.reason["acquisition"] == "sobol" for p in constrained.propose(History(), 2, []))
    pool = np.array([[0.0, 0.0], [0.45, 0.55], [1.0, 1.0]])
    (row,) = policy(cube(2, pool=pool), center=True).propose(History(), 1, [])
    assert row.pool_index == 1


def test_on_pools_the_first_pick_depends_on_the_seed_unless_the_centre_is_asked_for():
    pool = np.random.default_rng(5).random((500, 2))
    firsts = {policy(cube(2, pool=pool), seed=s).propose(History(), 1, [])[0].pool_index for s in range(6)}
    assert len(firsts) > 1  # the centre would give one row for every seed
    assert {policy(cube(2, pool=pool), seed=s, center=True).propose(History(), 1, [])[0].pool_index for s in range(3)} == {
        int(np.argmin(((pool - 0.5) ** 2).sum(1)))}


def test_the_same_history_gives_the_same_proposal():
    H = history(np.random.default_rng(1).random((10, 2)), quadratic)
    a = policy(cube(2)).propose(H, 2, [])
    b = policy(cube(2)).propose(H, 2, [])
    np.testing.assert_array_equal(np.vstack([p.x for p in a]), np.vstack([p.x for p in b]))


# ------------------------------------------------------------------------------------------------
# every acquisition: bounds, pending, reasons


@pytest.mark.parametrize("acquisition", ACQUISITIONS)
def test_each_acquisition_proposes_new_points_inside_the_cube_with_a_reason(acquisition):
    rng = np.random.default_rng(2)
    H = history(rng.random((12, 3)), quadratic)
    pending = [Proposal(x=rng.random(3))]
    props = policy(cube(3), acquisition=acquisition).propose(H, 3, pending)
    X = np.vstack([p.x for p in props])
    assert X.shape == (3, 3) and (X >= 0).all() and (X <= 1).all()
    assert len({tuple(np.round(x, 9)) for x in X} | {tuple(np.round(pending[0].x, 9))}) == 4
    for p in props:
        r = p.reason
        assert r["policy"] == "botorch" and r["acquisition"] == acquisition and r["initial_design"] is False
        assert np.isfinite(r["acquisition_value"])
        assert set(r["predicted"]["y"]) == {"mean", "std"} and r["predicted"]["y"]["std"] >= 0
        assert "fallback" not in r


@pytest.mark.parametrize("acquisition", ACQUISITIONS)
def test_linear_constraints_hold_for_every_acquisition(acquisition):
    # x0 + x1 <= 0.8, written as -x0 - x1 >= -0.8
    space = cube(2, linear_constraints=[LinearConstraint(indices=(0, 1), coefficients=(-1.0, -1.0), rhs=-0.8)])
    rng = np.random.default_rng(3)
    X = rng.random((40, 2))
    X = X[space.feasible(X)][:10]
    props = policy(space, acquisition=acquisition).propose(history(X, quadratic), 2, [])
    assert len(props) == 2 and space.feasible(np.vstack([p.x for p in props])).all()


@pytest.mark.parametrize("acquisition", ["qlognei", "ucb", "ts"])
def test_outcome_constraints_keep_proposals_in_the_feasible_region(acquisition):
    # maximise y = x0 + x1 subject to c = x0 <= 0.5: the optimum sits on x0 = 0.5, x1 = 1
    def metrics(x):
        return {"y": float(x[0] + x[1]), "c": float(x[0])}

    X = np.random.default_rng(4).random((16, 2))
    pol = policy(
        cube(2), objectives=[Objective("y", maximize=True)],
        constraints=[OutcomeConstraint("c", "<=", 0.5)], acquisition=acquisition,
    )
    props = pol.propose(history(X, metrics), 3, [])
    c = np.array([p.x[0] for p in props])
    assert (c <= 0.55).all(), c
    assert set(props[0].reason["predicted"]) == {"y", "c"}


def test_discrete_and_categorical_dimensions_are_snapped_and_use_a_mixed_model():
    space = EncodedSpace(names=["x", "n", "material"], levels=[None, 5, 3], categorical=[False, False, True])
    rng = np.random.default_rng(5)
    X = space.snap(rng.random((12, 3)))
    H = history(X, lambda x: {"y": float((x[0] - 0.2) ** 2 + (x[1] - 0.5) ** 2 + (x[2] != 0.5))})
    props = policy(space, fit_maxiter=60).propose(H, 2, [])
    for p in props:
        np.testing.assert_allclose(p.x, space.snap(p.x))
    assert props[0].reason["model"]["kind"] == "MixedSingleTaskGP"
    assert props[0].reason["model"]["lengthscale_pooling"] is None  # auto: MixedSingleTaskGP keeps its kernel
    assert props[0].reason["search"] == "mixed"
    with pytest.raises(ValueError, match="lengthscale_pooling applies to continuous spaces"):
        policy(space, lengthscale_pooling=0.5)


def test_a_fully_discrete_space_never_repeats_a_measured_or_pending_point():
    space = EncodedSpace(names=["a", "b"], levels=[3, 3], categorical=[False, False])
    grid = np.array([[i / 2, j / 2] for i in range(3) for j in range(3)])
    H = history(grid[:6], quadratic)
    props = policy(space, initial=2).propose(H, 2, [Proposal(x=grid[6])])
    seen = {tuple(x) for x in grid[:7]}
    assert len(props) == 2 and all(tuple(p.x) not in seen for p in props)


def test_joint_batch_mode_optimises_the_batch_in_one_call(monkeypatch):
    from policies.bayesian import search

    calls = []
    real = search._optimise_once

    def spy(acqf, ctx, q=1, seed=0):
        calls.append(q)
        return real(acqf, ctx, q=q, seed=seed)

    monkeypatch.setattr(search, "_optimise_once", spy)
    H = history(np.random.default_rng(6).random((10, 2)), quadratic)
    props = policy(cube(2), batch_mode="joint").propose(H, 3, [])
    assert calls == [3]  # one joint q = 3 optimisation, not three greedy q = 1 ones
    assert len(props) == 3 and len({tuple(p.x) for p in props}) == 3
    assert len({p.reason["acquisition_value"] for p in props}) == 1  # the batch's joint value
    calls.clear()
    policy(cube(2)).propose(H, 3, [])
    assert calls == [1, 1, 1]


# ------------------------------------------------------------------------------------------------
# pools


@pytest.mark.parametrize("acquisition", ACQUISITIONS)
def test_pools_never_repropose_a_completed_or_pending_row(acquisition):
    rng = np.random.default_rng(7)
    pool = rng.random((300, 2))
    used = rng.choice(300, 15, replace=False)
    H = history(pool[used], quadratic, pool_index=used)
    pending = [Proposal(x=pool[i], pool_index=int(i)) for i in (used[0] + 1, used[1] + 1) if i not in used]
    props = policy(cube(2, pool=pool), acquisition=acquisition).propose(H, 4, pending)
    picked = [p.pool_index for p in props]
    assert len(picked) == 4 and len(set(picked)) == 4
    assert not set(picked) & (set(used.tolist()) | {p.pool_index for p in pending})
    for p in props:
        np.testing.assert_array_equal(p.x, pool[p.pool_index])
        assert p.reason["search"] == "pool"


def test_an_almost_exhausted_pool_returns_what_is_left():
    pool = np.random.default_rng(8).random((12, 2))
    H = history(pool[:10], quadratic, pool_index=np.arange(10))
    props = policy(cube(2, pool=pool), initial=3).propose(H, 5, [])
    assert sorted(p.pool_index for p in props) == [10, 11]
    H = history(pool, quadratic, pool_index=np.arange(12))
    assert policy(cube(2, pool=pool), initial=3).propose(H, 2, []) == []


def test_a_pool_of_65536_candidates_is_scored_exactly_only_where_it_can_matter(monkeypatch):
    """The pruned screen (fast path) scores exactly only the rows whose bound reaches the shortlist."""
    from policies.bayesian import pool_search

    rng = np.random.default_rng(9)
    pool = rng.random((65536, 3))
    used = rng.choice(len(pool), 25, replace=False)
    H = history(pool[used], quadratic, pool_index=used)
    pol = policy(cube(3, pool=pool))
    exact_rows = []
    real = pool_search.marginal_posterior

    def counted(model, X, chunk=4096, bound=False):
        if not bound:
            exact_rows.append(len(X))
        return real(model, X, chunk=chunk, bound=bound)

    monkeypatch.setattr(pool_search, "marginal_posterior", counted)
    props = pol.propose(H, 2, [])
    assert 0 < sum(exact_rows) < 0.25 * len(pool)
    assert len(props) == 2 and not {p.pool_index for p in props} & set(used.tolist())
    # the best pool rows are near (0.3, 0.3, 0.3); the proposals should be among the better rows
    assert max(quadratic(p.x)["y"] for p in props) < np.quantile([quadratic(x)["y"] for x in pool[:2000]], 0.1)


# ------------------------------------------------------------------------------------------------
# multi-objective


def two_objectives(x: np.ndarray) -> dict[str, float]:
    return {"f0": float(x[0] ** 2 + x[1] ** 2), "f1": float((x[0] - 1) ** 2 + x[1] ** 2)}


def test_search_effort_defaults_depend_on_the_number_of_objectives():
    single = BotorchPolicy(Problem(space=cube(2), objectives=[Objective("y")], seed=0), BotorchPolicy.Options())
    multi = BotorchPolicy(Problem(space=cube(2), objectives=[Objective("f0"), Objective("f1")], seed=0), BotorchPolicy.Options())
    mine = BotorchPolicy(Problem(space=cube(2), objectives=[Objective("f0"), Objective("f1")], seed=0), BotorchPolicy.Options(num_restarts=3))
    effort = lambda p: (p.search_settings.num_restarts, p.search_settings.raw_samples, p.search_settings.maxiter, p.search_settings.ftol)
    assert effort(single) == (12, 512, 100, 1e-6)
    assert effort(multi) == (20, 1024, 200, None)  # Ax's: scipy's own tolerance
    assert effort(mine) == (3, 1024, 200, None)

def test_multi_objective_reports_an_inferred_reference_point():
    H = history(np.random.default_rng(10).random((10, 2)), two_objectives)
    pol = policy(cube(2), objectives=[Objective("f0"), Objective("f1")])
    props = pol.propose(H, 2, [])
    r = props[0].reason
    assert r["acquisition"] == "qlognehvi" and r["ref_point_inferred"] is True
    Y = H.Y(["f0", "f1"])
    assert r["ref_point"]["f0"] > Y[:, 0].min() and r["ref_point"]["f1"] > Y[:, 1].min()
    assert all(0 <= v <= 1 for p in props for v in p.x)


def test_multi_objective_uses_given_thresholds_and_outcome_constraints():
    def metrics(x):
        return {**two_objectives(x), "g": float(x[1])}

    H = history(np.random.default_rng(11).random((10, 2)), metrics)
    pol = policy(
        cube(2), objectives=[Objective("f0", threshold=2.0), Objective("f1", threshold=2.0)],
        constraints=[OutcomeConstraint("g", "<=", 0.3)],
    )
    props = pol.propose(H, 2, [])
    assert props[0].reason["ref_point"] == {"f0": 2.0, "f1": 2.0} and props[0].reason["ref_point_inferred"] is False
    assert all(p.x[1] <= 0.4 for p in props)


def test_standardised_hypervolume_scales_each_objective_by_its_spread():
    H = history(np.random.default_rng(12).random((10, 2)), lambda x: {"f0": 1000.0 * float(x[0]), "f1": float((x[1] - 0.5) ** 2)})
    objectives = [Objective("f0", threshold=1200.0), Objective("f1", threshold=1.0)]
    plain = policy(cube(2), objectives=objectives, standardize_objectives=False)
    scaled = policy(cube(2), objectives=objectives)  # the default
    data = plain._training_data(H)
    fitted = models_module.fit_model(data, plain._anchors(data), plain.model_settings)
    ref = fitted.tensor(np.array([-1200.0, -1.0]))
    builders = [AcquisitionBuilder("qlognehvi", fitted, p.outcomes, mc_samples=32, seed=0, beta=2.0, ref_point=ref,
                                   standardize_objectives=p.options.standardize_objectives) for p in (plain, scaled)]
    a, b = (builder.build(None) for builder in builders)
    spread = torch.as_tensor(np.nanstd(data.Y, axis=0)).to(ref)
    assert torch.allclose(b.objective.weights, a.objective.weights / spread)
    assert torch.allclose(b.ref_point, a.ref_point / spread)
    props = scaled.propose(H, 2, [])
    assert len(props) == 2 and props[0].reason["ref_point"] == {"f0": 1200.0, "f1": 1.0}


def test_multi_objective_on_a_pool_and_variance_for_mapping():
    pool = np.random.default_rng(12).random((500, 2))
    H = history(pool[:10], two_objectives, pool_index=np.arange(10))
    objectives = [Objective("f0"), Objective("f1")]
    for acquisition in ("qlognehvi", "variance"):
        props = policy(cube(2, pool=pool), objectives=objectives, acquisition=acquisition).propose(H, 3, [])
        assert len({p.pool_index for p in props}) == 3 and all(p.pool_index >= 10 for p in props)


# ------------------------------------------------------------------------------------------------
# data quirks and fallbacks


@pytest.mark.parametrize("acquisition", ["qlognei", "ucb"])
def test_failed_trials_stay_out_of_the_model_and_are_not_proposed_again(acquisition):
    """The instrument faults at the optimum (x = 0.3): without avoid_failed the policy goes right
    there; with it (the default) the failed point counts as pending and the proposal moves away."""
    X = np.array([0.0, 0.1, 0.2, 0.24, 0.36, 0.4, 0.5, 0.7, 0.9, 1.0])[:, None]
    H = history(X, quadratic)
    bad = np.array([0.3])
    H.append(Observation(trial_id=99, x=bad, metrics={}, status="failed"))
    (avoiding,) = policy(cube(1), acquisition=acquisition).propose(H, 1, [])
    (ignoring,) = policy(cube(1), acquisition=acquisition, avoid_failed=False).propose(H, 1, [])
    assert avoiding.reason["model"]["n_train"] == 10  # the failed trial is not training data
    near = float(np.abs(ignoring.x - bad).max())
    assert near < 0.01  # the test is meaningful: the model alone would re-propose the failed point
    assert float(np.abs(avoiding.x - bad).max()) > 2 * near + 0.005


def test_reported_standard_errors_become_fixed_noise():
    rng = np.random.default_rng(14)
    H = History()
    for i, x in enumerate(rng.random((8, 2))):
        H.append(Observation(trial_id=i, x=x, metrics=quadratic(x), sem={"y": 0.01}))
    data = TrainingData(X=H.X(2), Y=H.Y(["y"]), Yvar=H.Yvar(["y"]), metrics=["y"])
    fitted = fit_model(data, np.array([0]), ModelSettings())
    assert isinstance(fitted.model.likelihood, FixedNoiseGaussianLikelihood)


def test_a_failing_fit_is_retried_with_jitter_and_the_reason_says_so(monkeypatch):
    real = models_module._optimise
    calls = []

    def flaky(model, maxiter, warm=False, fast=True):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("cholesky_cpu: the factorization could not be completed (not PSD)")
        return real(model, maxiter, warm, fast)

    monkeypatch.setattr(models_module, "_optimise", flaky)
    H = history(np.random.default_rng(15).random((8, 2)), quadratic)
    (p,) = policy(cube(2), strict=False).propose(H, 1, [])
    assert "jitter" in p.reason["fallback"] and "not PSD" in p.reason["fallback"]
    assert p.reason["acquisition"] == "qlognei"
    calls.clear()
    with pytest.raises(PolicyFallbackError, match="jitter"):
        policy(cube(2), strict=True).propose(H, 1, [])


def test_a_fit_that_keeps_failing_falls_back_to_sobol_points(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("NaN in the marginal likelihood")

    monkeypatch.setattr(models_module, "_optimise", broken)
    H = history(np.random.default_rng(16).random((8, 2)), quadratic)
    props = policy(cube(2), strict=False).propose(H, 2, [])
    assert len(props) == 2
    assert all(p.reason["acquisition"] == "sobol" and "NaN" in p.reason["fallback"] for p in props)
    with pytest.raises(PolicyFallbackError, match="NaN in the marginal likelihood"):
        policy(cube(2), strict=True).propose(H, 2, [])
    monkeypatch.setenv("AEC_STRICT", "1")  # strict=None reads the environment
    with pytest.raises(PolicyFallbackError):
        policy(cube(2)).propose(H, 2, [])
    monkeypatch.setenv("AEC_STRICT", "0")
    assert policy(cube(2)).propose(H, 1, [])[0].reason["acquisition"] == "sobol"


@pytest.mark.parametrize(
    "metrics",
    [
        lambda x: {"y": 1.0},  # constant
        lambda x: {"y": float("nan")} if x[0] < 0.5 else {"y": float(x[0])},  # half missing
        lambda x: {"y": float("inf")} if x[0] < 0.2 else {"y": float(x[1])},
    ],
)
def test_degenerate_data_never_crashes(metrics):
    X = np.vstack([np.random.default_rng(17).random((8, 2)), np.full((4, 2), 0.5)])  # with duplicates
    props = policy(cube(2)).propose(history(X, metrics), 2, [])
    assert len(props) == 2 and all(np.isfinite(p.x).all() for p in props)


def test_a_metric_with_too_few_values_gives_sobol_points_with_a_reason():
    H = history(np.random.default_rng(18).random((8, 2)), quadratic)  # no 'c' at all
    pol = policy(cube(2), constraints=[OutcomeConstraint("c", "<=", 1.0)], strict=False)
    (p,) = pol.propose(H, 1, [])
    assert p.reason["acquisition"] == "sobol" and "c" in p.reason["fallback"]
    with pytest.raises(PolicyFallbackError, match="too few completed observations"):
        policy(cube(2), constraints=[OutcomeConstraint("c", "<=", 1.0)], strict=True).propose(H, 1, [])


def test_a_gpu_asked_for_and_missing_is_a_fallback_or_in_strict_mode_an_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    H = history(np.random.default_rng(18).random((8, 2)), quadratic)
    (p,) = policy(cube(2), device="cuda", strict=False).propose(H, 1, [])
    assert p.reason["acquisition"] == "qlognei" and "cuda" in p.reason["fallback"]
    with pytest.raises(PolicyFallbackError, match="cuda"):
        policy(cube(2), device="cuda", strict=True)


# ------------------------------------------------------------------------------------------------
# cost-aware


def stage_seconds(a: np.ndarray, b: np.ndarray) -> float:
    return float(100.0 * np.abs(np.asarray(a) - np.asarray(b)).max())


def test_dividing_by_travel_time_prefers_nearby_candidates():
    grid = np.array([[i / 19, j / 19] for i in range(20) for j in range(20)])
    rng = np.random.default_rng(19)
    used = rng.choice(len(grid), 12, replace=False)
    H = history(grid[used], lambda x: {"y": float(np.sin(6 * x[0]) + np.cos(5 * x[1]))}, pool_index=used)
    here = grid[used[-1]]
    plain = policy(cube(2, pool=grid), move_cost=stage_seconds, acquisition="variance").propose(H, 1, [])[0]
    costly = policy(cube(2, pool=grid), move_cost=stage_seconds, acquisition="variance", cost_aware="divide").propose(H, 1, [])[0]
    assert stage_seconds(here, costly.x) < stage_seconds(here, plain.x)
    assert costly.reason["seconds"] == pytest.approx(stage_seconds(here, costly.x) + 1.0)


def test_route_orders_a_batch_as_a_short_path():
    cost = TravelCost(lambda a, b: float(np.abs(a - b).sum()), dwell=0.0)
    X = np.array([[0.9], [0.1], [0.5], [0.3], [0.7]])
    order = order_route(cost, np.array([0.0]), X)
    np.testing.assert_array_equal(X[order].ravel(), [0.1, 0.3, 0.5, 0.7, 0.9])
    assert route_length(cost, np.array([0.0]), X, order) == pytest.approx(0.9)


def test_cost_aware_route_batches_come_back_in_route_order():
    H = history(np.random.default_rng(20).random((10, 2)), quadratic)
    pol = policy(cube(2), move_cost=stage_seconds, cost_aware="route", acquisition="ucb")
    props = pol.propose(H, 4, [])
    X = np.vstack([p.x for p in props])
    cost = TravelCost(stage_seconds)
    start = H.observations[-1].x
    assert route_length(cost, start, X, np.arange(4)) <= route_length(cost, start, X, order_route(cost, start, X)) + 1e-9


# ------------------------------------------------------------------------------------------------
# model internals


def test_marginal_posterior_matches_botorch_posterior():
    rng = np.random.default_rng(21)
    X = rng.random((20, 3))
    Y = np.stack([np.sin(3 * X).sum(1), X.sum(1)], axis=1)
    Y[::4, 1] = np.nan  # forces a ModelListGP
    fitted = fit_model(TrainingData(X, Y, None, ["a", "b"]), np.array([0]), ModelSettings())
    P = torch.rand(30, 3, dtype=torch.float64)
    mean, std = marginal_posterior(fitted, P)
    post = fitted.model.posterior(P.unsqueeze(-2))
    torch.testing.assert_close(mean, post.mean.squeeze(-2).detach(), atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(std, post.variance.squeeze(-2).detach().sqrt(), atol=1e-8, rtol=1e-6)


def assert_screen_bound_holds(model, P: torch.Tensor) -> torch.Tensor:
    """screen_posterior's guarantee: every exact variance within std32^2 * (1 +- rel); returns rel."""
    from policies.bayesian.posterior import screen_posterior

    mean, std = marginal_posterior(model, P)
    mean32, std32, rel = screen_posterior(model, P)
    assert mean32.dtype == std32.dtype == rel.dtype == torch.float64 and rel.shape == std.shape
    torch.testing.assert_close(mean32, mean, atol=1e-12, rtol=1e-12)  # float64 in both, by the same code
    # (1e-15: the squares of two rounded square roots; rel's own slack is (n + 3) / (n + 2) - 1)
    assert bool(((std32**2 - std**2).abs() <= rel * std32**2 + 1e-15 * std**2).all())
    return rel


def test_float32_pool_screen_bounds_its_error_and_keeps_the_pick():
    rng = np.random.default_rng(22)
    X = rng.random((200, 4))
    Y = np.stack([np.sin(5 * X).sum(1), X.sum(1)], axis=1)
    P = torch.rand(20000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for batched in (False, True):  # one output, and a batched two-output GP
        fitted = fit_model(TrainingData(X, Y[:, : 1 + batched], None, ["a", "b"][: 1 + batched]), np.array([0]), ModelSettings())
        assert_screen_bound_holds(fitted, P)
    # an ill-conditioned GP (near-duplicate points, gpytorch's smallest fixed noise): float32 can lose every
    # digit of most variances here (errors of 100% seen), and the bound says so
    from botorch.models import SingleTaskGP

    base = rng.random((60, 2))
    Xd = torch.as_tensor(np.concatenate([base, base + 1e-4 * rng.standard_normal(base.shape)]))
    Yd = torch.sin(3 * Xd).sum(-1, keepdim=True)
    gp = SingleTaskGP(Xd, Yd, train_Yvar=torch.full_like(Yd, 1e-6))
    gp.covar_module.lengthscale = 0.3
    gp.eval()
    assert float(assert_screen_bound_holds(gp, P[:, :2]).median()) > 1.0
    # with an outcome constraint every row is screened; the same shortlist, hence the same picks
    pool = rng.random((4096, 4))
    used = rng.choice(len(pool), 60, replace=False)
    H = history(pool[used], lambda x: {**quadratic(x), "c": float(x[0])}, pool_index=used)
    c = [OutcomeConstraint("c", "<=", 0.6)]
    picks = [[p.pool_index for p in policy(cube(4, pool=pool), constraints=c, pool_screen_float32=f).propose(H, 3, [])] for f in (True, False)]
    assert picks[0] == picks[1]


@pytest.mark.parametrize("name,cost", [("qlognei", False), ("ucb", False), ("ucb", True), ("qlognehvi", False)])
def test_float32_screen_keeps_the_float64_shortlist(name, cost, monkeypatch):
    from policies.bayesian import pool_search
    from policies.bayesian.acquisition import Outcomes, per_cost
    from policies.bayesian.search import SearchContext, SearchSettings

    rng = np.random.default_rng(25)
    X = rng.random((150, 4))
    Y = np.stack([np.sin(9 * X).sum(1), ((X - 0.3) ** 2).sum(1), np.cos(3 * X[:, 0]) * X[:, 1]], axis=1)
    Y += 0.02 * rng.standard_normal(Y.shape)
    objectives = [Objective("f0"), Objective("f1")] if name == "qlognehvi" else [Objective("f0")]
    Y = Y[:, [0, 1, 2] if len(objectives) == 2 else [0, 2]]
    fitted = fit_model(TrainingData(X, Y, None, [o.metric for o in objectives] + ["c"]), np.array([0]), ModelSettings())
    problem = Problem(space=cube(4), objectives=objectives, constraints=[OutcomeConstraint("c", "<=", 0.2)], seed=0)
    ref = torch.as_tensor(-Y[:, :2].max(0) - 0.1) if len(objectives) == 2 else None
    P = torch.rand(30000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    seconds = torch.rand(len(P), dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.1
    rank = (lambda v: per_cost(v, seconds, "raw", 0.0)) if cost else (lambda v: v)
    redone, exact_rows = [], pool_search.marginal_posterior
    monkeypatch.setattr(pool_search, "marginal_posterior", lambda m, X, **kw: redone.append(len(X)) or exact_rows(m, X, **kw))
    k, scores = 256, []
    for f32 in (True, False):
        ctx = SearchContext(fitted=fitted, outcomes=Outcomes.from_problem(problem), space=cube(4),
                            settings=SearchSettings(pool_screen_float32=f32), pending=np.zeros((0, 4)), ref_point=ref)
        scores.append(pool_search._screen_every_row(name, fitted.model, P, ctx, pool_search.screen_context(ctx), k, rank))
    screened, exact = scores
    top = torch.topk(screened, k).indices
    kth = float(torch.topk(exact, k).values[-1])
    # float64's shortlist, up to rows tied with its k-th to float64 rounding
    assert float(exact[top].min()) >= kth - 1e-9 * (1 + abs(kth))
    assert redone[0] < len(P) // 10  # the float32 screen was worth it: few rows redone (~300 here)


@pytest.mark.parametrize("name,objectives", [("qlognei", 1), ("ucb", 1), ("qlognehvi", 2)])
def test_pruned_pool_screen_finds_the_same_shortlist_as_scoring_every_row(name, objectives):
    from policies.bayesian.acquisition import Outcomes, screen_scores
    from policies.bayesian.pool_search import _pruned_screen, screen_context
    from policies.bayesian.search import SearchContext, SearchSettings

    rng = np.random.default_rng(24)
    X = rng.random((80, 4))
    Y = np.stack([np.sin(5 * X).sum(1), ((X - 0.3) ** 2).sum(1)], axis=1)[:, :objectives]
    metrics = ["f0", "f1"][:objectives]
    fitted = fit_model(TrainingData(X, Y, None, metrics), np.array([0]), ModelSettings())
    problem = Problem(space=cube(4), objectives=[Objective(m) for m in metrics], seed=0)
    outcomes = Outcomes.from_problem(problem)
    ref = torch.as_tensor(-Y.max(0) - 0.1) if objectives > 1 else None  # minimised objectives, larger-is-better ref
    ctx = SearchContext(fitted=fitted, outcomes=outcomes, space=cube(4), settings=SearchSettings(),
                        pending=np.zeros((0, 4)), ref_point=ref)
    sc = screen_context(ctx)
    P = torch.rand(30000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mean, std = marginal_posterior(fitted, P)
    _, std_bound = marginal_posterior(fitted, P, bound=True)
    assert bool((std_bound >= std - 1e-12).all()) and float((std_bound - std).max()) > 1e-3
    full = screen_scores(name, mean, std, outcomes, **sc)
    pruned = _pruned_screen(name, fitted.model, P, ctx, sc, 256)
    assert set(torch.topk(pruned, 256).indices.tolist()) == set(torch.topk(full, 256).indices.tolist())
    scored = torch.isfinite(pruned)
    torch.testing.assert_close(pruned[scored], full[scored])
    if objectives == 1:  # (the optimistic hypervolume bound is looser; on this toy front every row can reach)
        assert int(scored.sum()) < len(P) // 4  # most rows were never scored exactly

def test_analytic_logei_matches_botorch_and_has_gradients():
    from botorch.acquisition.analytic import LogExpectedImprovement

    from policies.bayesian.acquisition import MarginalLogEI, Outcomes

    rng = np.random.default_rng(23)
    X = rng.random((25, 3))
    fitted = fit_model(TrainingData(X, np.sin(4 * X).sum(1, keepdims=True), None, ["y"]), np.array([0]), ModelSettings())
    outcomes = Outcomes(metrics=("y",), objective_index=(0,), signs=(-1.0,), constraints=())  # minimise y
    best = float((-fitted.model.posterior(fitted.train_X).mean).max())
    ours = MarginalLogEI(fitted.model, outcomes, best)
    P = torch.rand(16, 1, 3, dtype=torch.float64, requires_grad=True)
    reference = LogExpectedImprovement(fitted.model, best_f=-best, maximize=False)(P)
    values = ours(P)
    torch.testing.assert_close(values, reference, atol=1e-6, rtol=1e-6)
    (grad,) = torch.autograd.grad(values.sum(), P)
    (ref_grad,) = torch.autograd.grad(reference.sum(), P)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)


def test_subsets_keep_the_incumbent_neighbourhood_and_spread_out():
    X = np.random.default_rng(22).random((2000, 2))
    rows = select_subset(X, np.array([7]), 100)
    assert len(rows) == 100 == len(set(rows.tolist())) and 7 in rows
    near = np.sort(((X - X[7]) ** 2).sum(1))[49]
    far = ((X[rows] - X[7]) ** 2).sum(1) > near
    assert far.sum() >= 45  # the space-filling half lies outside the incumbent's neighbourhood


def test_large_histories_fit_on_subsets():
    rng = np.random.default_rng(23)
    H = history(rng.random((1500, 2)), quadratic)
    (p,) = policy(cube(2), fit_max=64, condition_max=128).propose(H, 1, [])
    assert p.reason["model"]["n_train"] == 128 and p.reason["model"]["n_fit"] == 64


# ------------------------------------------------------------------------------------------------
# does it optimise?


def best_regret(pol, seed: int, evaluations: int = 30, batch: int = 5) -> float:
    H = History()
    while len(H) < evaluations:
        for p in pol.propose(H, min(batch, evaluations - len(H)), []):
            H.append(Observation(trial_id=len(H), x=p.x, metrics={"y": branin(p.x)}))
    return min(o.metrics["y"] for o in H.observations) - BRANIN.optimal_value


def test_beats_random_search_on_branin_within_30_evaluations():
    seeds = [0, 1, 2]
    bo = [best_regret(policy(cube(2), seed=s, initial=6), s) for s in seeds]
    rnd = [best_regret(RandomPolicy(Problem(cube(2), [Objective("y")], seed=s)), s) for s in seeds]
    # random search's median regret over 30 points is ~0.5-1; BO's should be an order of magnitude lower
    assert np.median(bo) < 0.2, bo
    assert np.median(bo) < 0.2 * np.median(rnd), (bo, rnd)


@pytest.mark.gpu
def test_runs_on_cuda_when_available():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    H = history(np.random.default_rng(24).random((10, 2)), quadratic)
    (p,) = policy(cube(2), device="cuda").propose(H, 1, [])
    assert p.reason["acquisition"] == "qlognei" and "fallback" not in p.reason


# ------------------------------------------------------------------------------------------------
# fast paths and the model's caches


@pytest.mark.parametrize("how", ["option", "environment"])
def test_fast_paths_off_uses_botorch_throughout_and_says_so(how, monkeypatch):
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement

    from policies.bayesian import acquisition, models as models_module, pool_search

    used = {"fit_exact_gp": 0, "pruned": 0}
    real_fit, real_pruned = models_module.fit_exact_gp, pool_search._pruned_screen
    monkeypatch.setattr(models_module, "fit_exact_gp", lambda *a, **k: used.__setitem__("fit_exact_gp", 1) or real_fit(*a, **k))
    monkeypatch.setattr(pool_search, "_pruned_screen", lambda *a, **k: used.__setitem__("pruned", 1) or real_pruned(*a, **k))
    built = []
    real_build = acquisition.AcquisitionBuilder.build
    monkeypatch.setattr(acquisition.AcquisitionBuilder, "build", lambda self, *a, **k: built.append(real_build(self, *a, **k)) or built[-1])
    options = {}
    if how == "option":
        options["fast_paths"] = False
    else:
        monkeypatch.setenv("AEC_FAST_PATHS", "0")
    H = history(np.random.default_rng(21).random((10, 2)), quadratic)
    (p,) = policy(cube(2), strict=True, **options).propose(H, 1, [])
    assert p.reason["fast_paths"].startswith("off") and "fallback" not in p.reason
    assert used["fit_exact_gp"] == 0 and all(type(a) is qLogNoisyExpectedImprovement for a in built)
    pool = np.random.default_rng(22).random((500, 2))
    Hp = history(pool[:10], quadratic, pool_index=np.arange(10))
    (q,) = policy(cube(2, pool=pool), strict=True, **options).propose(Hp, 1, [])
    assert q.reason["fast_paths"].startswith("off") and used["pruned"] == 0 and q.pool_index >= 10


def test_fast_paths_on_say_so_and_pick_what_botorch_picks():
    """Closed-form fit + CachedLogNEI against fit_gpytorch_mll + qLogNEI: the same point, near enough."""
    H = history(np.random.default_rng(23).random((12, 2)), quadratic)
    (fast,) = policy(cube(2), strict=True).propose(H, 1, [])
    (slow,) = policy(cube(2), strict=True, fast_paths=False).propose(H, 1, [])
    assert fast.reason["fast_paths"] == "on"
    assert np.abs(fast.x - slow.x).max() < 0.05
    assert fast.reason["predicted"]["y"]["mean"] == pytest.approx(slow.reason["predicted"]["y"]["mean"], abs=0.02)


def test_missing_botorch_fast_path_names_disable_those_paths_visibly():
    """A BoTorch without batched_lbfgs_b or _log_improvement: BoTorch's own routines, a warning, a reason."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent('''
        import sys, logging
        import numpy as np
        import types
        import botorch.fit, botorch.generation.gen, botorch.optim.optimize, botorch.optim.optimize_mixed  # BoTorch's own
        import botorch.acquisition.logei, botorch.acquisition.multi_objective.logei  # imports keep the real modules
        real = {}
        for name, drop in [("botorch.optim.batched_lbfgs_b", "fmin_l_bfgs_b_batched"), ("botorch.acquisition.logei", "_log_improvement")]:
            real[name] = sys.modules[name]
            proxy = types.ModuleType(name)  # what an import of a BoTorch without that name finds
            proxy.__dict__.update({k: v for k, v in vars(real[name]).items() if k != drop})
            sys.modules[name] = proxy
        from policies.bayesian import fast_paths, policy as _
        sys.modules.update(real)
        logging.basicConfig(level=logging.WARNING)
        from tests.bayes_helpers import cube, history, policy, quadratic
        assert set(fast_paths.MISSING) == {"mll_fit", "cached_nei"}, fast_paths.MISSING
        H = history(np.random.default_rng(21).random((10, 2)), quadratic)
        for _ in range(2):
            pol = policy(cube(2), strict=False)
            (p,) = pol.propose(H, 1, [])
            assert "fallback" not in p.reason and p.reason["acquisition"] == "qlognei"
            assert pol.degradations() and "degraded" in pol.degradations()[0]  # for the progress line and summary
            print("REASON", p.reason["fast_paths"])
        from policies import PolicyFallbackError
        try:
            policy(cube(2), strict=True)
        except PolicyFallbackError as exc:
            print("STRICT", exc)
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    reasons = [line for line in out.stdout.splitlines() if line.startswith("REASON")]
    assert len(reasons) == 2 and all("degraded" in r and "mll_fit" in r and "cached_nei" in r for r in reasons)
    assert out.stderr.count("degraded:") == 1  # warned once
    assert any(line.startswith("STRICT") and "fast paths degraded" in line for line in out.stdout.splitlines())


def test_fantasies_shrink_the_std_only_as_conditioning_does():
    """with_fantasies equals BoTorch's condition_on_observations: far from the pending points the
    std barely moves (re-standardising with the fantasised means used to shrink it by ~5%)."""
    rng = np.random.default_rng(0)
    X = rng.random((8, 2))
    Y = ((X - 0.3) ** 2).sum(1, keepdims=True) + 0.01 * rng.standard_normal((8, 1))
    fitted = fit_model(TrainingData(X=X, Y=Y, Yvar=None, metrics=["y"]), np.array([0]), ModelSettings())
    P = torch.tensor([[0.1, 0.1], [0.15, 0.12], [0.12, 0.2]], dtype=torch.float64)
    at = torch.tensor([[0.95, 0.95], [0.9, 0.05], [0.12, 0.12]], dtype=torch.float64)
    mean0, std0 = marginal_posterior(fitted, at)
    mean1, std1 = marginal_posterior(models_module.with_fantasies(fitted, P), at)
    fitted.model.posterior(P)  # condition_on_observations needs gpytorch's prediction cache
    pmean, _ = marginal_posterior(fitted, P)
    reference = fitted.model.condition_on_observations(fitted.model.transform_inputs(P), pmean).posterior(at)
    torch.testing.assert_close(mean1, mean0, atol=1e-9, rtol=0)  # a believer leaves the mean alone
    torch.testing.assert_close(std1, reference.variance.sqrt().detach(), rtol=1e-6, atol=1e-9)
    assert (std1[:2] / std0[:2] > 0.98).all() and std1[2, 0] < 0.8 * std0[2, 0]


def test_the_cached_factor_follows_hyperparameters_changed_in_place():
    from policies.bayesian.posterior import screen_posterior

    rng = np.random.default_rng(1)
    X = rng.random((12, 2))
    fitted = fit_model(TrainingData(X=X, Y=np.sin(6 * X[:, :1]), Yvar=None, metrics=["y"]), np.array([0]), ModelSettings())
    at = torch.as_tensor(rng.random((5, 2)))
    before = marginal_posterior(fitted, at)
    screen_posterior(fitted, at)  # fills the float32 inverse cache too
    gp = fitted.model
    with torch.no_grad():
        gp.covar_module.lengthscale = gp.covar_module.lengthscale * 0.5  # in place, through .data
    gp.train()
    gp.eval()  # drops gpytorch's own prediction cache, for the reference
    reference = gp.posterior(at)
    mean, std = marginal_posterior(fitted, at)
    torch.testing.assert_close(mean, reference.mean.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(std, reference.variance.sqrt().detach(), rtol=1e-6, atol=1e-9)
    assert not torch.allclose(std, before[1])
    _, std32, _ = screen_posterior(fitted, at)
    torch.testing.assert_close(std32, std, rtol=1e-4, atol=1e-7)


def test_few_integer_levels_are_each_searched_so_rounding_the_relaxation_cannot_hide_the_better_level():
    """An acquisition whose continuous relaxation peaks at k = 0.46 (rounds to level 0) but is higher at level 1."""
    from botorch.acquisition import AcquisitionFunction
    from policies.bayesian.acquisition import Outcomes
    from policies.bayesian.search import SearchContext, SearchSettings, _optimise_once

    class Bumped(AcquisitionFunction):
        def forward(self, X: torch.Tensor) -> torch.Tensor:
            k, rest = X[..., 0, 0], X[..., 0, 1:]
            return torch.exp(-(((k - 0.45) / 0.3) ** 2)) + 0.2 * k - ((rest - 0.3) ** 2).sum(-1)

    rng = np.random.default_rng(0)
    X = rng.random((12, 3))
    fitted = fit_model(TrainingData(X, X.sum(1, keepdims=True), None, ["y"]), np.array([0]), ModelSettings())
    space = EncodedSpace(names=["k", "a", "b"], levels=[2, None, None], categorical=[False] * 3)
    problem = Problem(space=space, objectives=[Objective("y")], seed=0)
    ctx = SearchContext(fitted=fitted, outcomes=Outcomes.from_problem(problem), space=space,
                        settings=SearchSettings(num_restarts=6, raw_samples=128), pending=np.zeros((0, 3)))
    cands, values = _optimise_once(Bumped(fitted.model), ctx)
    assert set(cands[:, 0, 0].tolist()) == {0.0, 1.0}  # every restart held one level fixed, both levels searched
    best = cands[0, 0]
    assert float(best[0]) == 1.0  # exp(-(0.55/0.3)^2) + 0.2 = 0.235 beats level 0's exp(-2.25) = 0.105
    assert torch.allclose(best[1:], torch.full((2,), 0.3, dtype=best.dtype), atol=1e-3)
    assert float(values[0]) == pytest.approx(math.exp(-((0.55 / 0.3) ** 2)) + 0.2, abs=1e-5)
