"""AxPolicy: the aec loop driven by an Ax Client, rebuilt from the history whenever needed.

Tests that only need Ax's center/Sobol steps are quick; those that reach Ax's BoTorch model
(seconds per proposal on a busy CPU, tens of seconds under linear constraints) are marked slow.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from policies import PolicyConfigError, make_policy
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
from simulators.functions import TestFunctionSimulator

pytest.importorskip("ax")
from policies.ax import AxPolicy  # noqa: E402


def unit_space(d: int, **kw) -> EncodedSpace:
    return EncodedSpace(names=[f"p{i}" for i in range(d)], levels=[None] * d, categorical=[False] * d, **kw)


def evaluate(sim: TestFunctionSimulator, x: np.ndarray) -> dict[str, float]:
    b = sim.problem.bounds.numpy()
    f = sim.evaluate_tensor(torch.as_tensor(b[0] + x * (b[1] - b[0])).unsqueeze(0))
    names = sim.metrics()
    return {n: float(v) for n, v in zip(names, f.reshape(-1, len(names))[0])}


def run_loop(policy, sim, history: History, trials: int, batch: int = 1) -> list[Proposal]:
    proposals = []
    while len(history) < trials:
        for p in policy.propose(history, min(batch, trials - len(history)), []):
            history.append(Observation(trial_id=len(history), x=p.x, metrics=evaluate(sim, p.x)))
            proposals.append(p)
    return proposals


def sobol_history(sim, n: int, seed: int = 0) -> History:
    X = torch.quasirandom.SobolEngine(sim.dim, scramble=True, seed=seed).draw(n, dtype=torch.float64).numpy()
    h = History()
    for i, x in enumerate(X):
        h.append(Observation(trial_id=i, x=x, metrics=evaluate(sim, x)))
    return h


def ax_trials(policy: AxPolicy) -> dict[int, tuple[str, dict]]:
    exp = policy._client._experiment
    return {i: (t.status.name, dict(t.arm.parameters)) for i, t in exp.trials.items()}


def test_registry_builds_ax_policy_and_rejects_unknown_options():
    problem = Problem(space=unit_space(2), objectives=[Objective("y")])
    policy = make_policy("ax", {"initial": 3}, problem)
    assert isinstance(policy, AxPolicy) and policy.options.initial == 3
    with pytest.raises(PolicyConfigError, match="intial"):
        make_policy("ax", {"intial": 3}, problem)


def test_initial_proposals_lie_in_the_unit_cube_and_say_which_node_made_them():
    sim = TestFunctionSimulator("branin")
    policy = AxPolicy(Problem(space=unit_space(2), objectives=[Objective("y")], seed=3), AxPolicy.Options(initial=6))
    proposals = run_loop(policy, sim, History(), trials=4, batch=2)
    X = np.array([p.x for p in proposals])
    assert X.shape == (4, 2) and (X >= 0).all() and (X <= 1).all()
    assert proposals[0].reason["policy"] == "ax"
    assert proposals[0].reason["generation_node"] == "CenterOfSearchSpace"
    assert {p.reason["generation_node"] for p in proposals[1:]} == {"Sobol"}


def test_linear_constraint_becomes_an_ax_parameter_constraint_and_is_respected():
    # x0 + x1 <= 0.8  <=>  -x0 - x1 >= -0.8 (BoTorch's convention in the seam)
    space = unit_space(3, linear_constraints=[LinearConstraint((0, 1), (-1.0, -1.0), -0.8)])
    problem = Problem(space=space, objectives=[Objective("y")], seed=1)
    policy = AxPolicy(problem, AxPolicy.Options(method="random_search"))
    sim = TestFunctionSimulator("hartmann3")
    proposals = run_loop(policy, sim, History(), trials=8, batch=4)
    X = np.array([p.x for p in proposals])
    assert space.feasible(X).all(), X
    ss = policy._client._experiment.search_space
    assert len(ss.parameter_constraints) == 1
    assert not ss.check_membership({"x0": 0.5, "x1": 0.5, "x2": 0.1})
    assert ss.check_membership({"x0": 0.3, "x1": 0.4, "x2": 0.9})


def test_discrete_and_categorical_dims_come_back_on_their_levels():
    space = EncodedSpace(names=["a", "n", "c"], levels=[None, 5, 3], categorical=[False, False, True])
    policy = AxPolicy(Problem(space=space, objectives=[Objective("y", maximize=True)]), AxPolicy.Options(method="random_search"))
    h = History()
    for p in policy.propose(h, 6, []):
        assert np.allclose(space.snap(p.x), p.x)
    params = policy._client._experiment.search_space.parameters
    assert type(params["x1"]).__name__ == "RangeParameter" and type(params["x2"]).__name__ == "ChoiceParameter"


def test_fresh_instance_replays_history_with_failures_and_proposes_a_new_point():
    sim = TestFunctionSimulator("branin")
    problem = Problem(space=unit_space(2), objectives=[Objective("y")], seed=0)
    h = sobol_history(sim, 3)
    h.append(Observation(trial_id=3, x=np.array([0.9, 0.9]), metrics={}, status="failed"))
    policy = AxPolicy(problem, AxPolicy.Options(initial=8))
    (p,) = policy.propose(h, 1, [])
    statuses = [s for s, _ in ax_trials(policy).values()]
    assert statuses == ["COMPLETED"] * 3 + ["FAILED", "RUNNING"]
    assert ((p.x >= 0) & (p.x <= 1)).all()
    # a new point, not a replayed one: Sobol points of a 2-d design lie far more than 1e-3 apart
    assert min(np.abs(p.x - o.x).max() for o in h.observations) > 1e-3


def test_pending_trials_are_attached_as_running_and_not_proposed_again():
    sim = TestFunctionSimulator("branin")
    problem = Problem(space=unit_space(2), objectives=[Objective("y")], seed=0)
    h = sobol_history(sim, 2)
    pending = [Proposal(x=np.array([0.1, 0.2])), Proposal(x=np.array([0.7, 0.3]))]
    policy = AxPolicy(problem, AxPolicy.Options(initial=10))
    new = policy.propose(h, 2, pending)
    trials = ax_trials(policy)
    running = [tuple(p.values()) for s, p in trials.values() if s == "RUNNING"]
    assert (0.1, 0.2) in running and (0.7, 0.3) in running and len(running) == 4
    for p in new:
        assert not any(np.allclose(p.x, q.x) for q in pending)


def test_cached_client_grows_with_the_history_and_is_rebuilt_when_the_history_changes():
    sim = TestFunctionSimulator("branin")
    problem = Problem(space=unit_space(2), objectives=[Objective("y")], seed=0)
    policy = AxPolicy(problem, AxPolicy.Options(initial=10))
    h = History()
    (p,) = policy.propose(h, 1, [])
    client = policy._client
    h.append(Observation(trial_id=0, x=p.x, metrics=evaluate(sim, p.x)))
    (q,) = policy.propose(h, 1, [])
    assert policy._client is client
    # the first trial completed the running Ax trial instead of adding another one
    assert [s for s, _ in ax_trials(policy).values()] == ["COMPLETED", "RUNNING"]
    # a proposal the controller dropped (not pending any more) is abandoned
    h.append(Observation(trial_id=1, x=np.array([0.3, 0.3]), metrics=evaluate(sim, np.array([0.3, 0.3]))))
    policy.propose(h, 1, [])
    assert [s for s, _ in ax_trials(policy).values()] == ["COMPLETED", "ABANDONED", "COMPLETED", "RUNNING"]
    other = History(observations=h.observations[::-1])
    policy.propose(other, 1, [])
    assert policy._client is not client
    assert [s for s, _ in ax_trials(policy).values()] == ["COMPLETED", "COMPLETED", "RUNNING"]


def test_pool_proposals_are_distinct_unused_rows_nearest_to_ax_points():
    rng = np.random.default_rng(0)
    pool = rng.random((300, 2))
    space = EncodedSpace(names=["a", "b"], levels=[None, None], categorical=[False, False], pool=pool)
    policy = AxPolicy(Problem(space=space, objectives=[Objective("y")]), AxPolicy.Options(initial=10))
    h = History(observations=[Observation(trial_id=0, x=pool[5], metrics={"y": 1.0}, pool_index=5)])
    pending = [Proposal(x=pool[7], pool_index=7)]
    out = policy.propose(h, 3, pending)
    idx = [p.pool_index for p in out]
    assert len(set(idx)) == 3 and not {5, 7} & set(idx)
    for p in out:
        assert np.array_equal(p.x, pool[p.pool_index])
        assert "nearest unused pool row" in p.reason["pool"]
        d = np.sqrt(((pool - np.array(p.reason["ax_point"])) ** 2).sum(1))
        assert p.reason["pool_distance"] == pytest.approx(d[p.pool_index])


def test_objective_and_outcome_constraints_reach_ax_with_safe_names():
    space = unit_space(2)
    problem = Problem(
        space=space,
        objectives=[Objective("E", threshold=10.0), Objective("beta", maximize=True, threshold=0.5)],
        constraints=[OutcomeConstraint("efficiency", ">=", 0.9)],
    )
    policy = AxPolicy(problem, AxPolicy.Options(method="random_search"))
    policy.propose(History(), 1, [])
    cfg = policy._client._experiment.optimization_config
    assert cfg.is_moo_problem
    assert {t.metric_names[0] for t in cfg.objective_thresholds} == {"m0", "m1"}
    assert [c.metric_names[0] for c in cfg.outcome_constraints] == ["m2"]


@pytest.mark.slow
def test_branin_loop_reaches_ax_model_and_improves_on_the_initial_design():
    sim = TestFunctionSimulator("branin")
    policy = AxPolicy(Problem(space=unit_space(2), objectives=[Objective("y")], seed=0), AxPolicy.Options(initial=5))
    h = History()
    proposals = run_loop(policy, sim, h, trials=12)
    assert [p.reason["generation_node"] for p in proposals[5:]] == ["MBM"] * 7
    assert "predicted_mean" in proposals[-1].reason
    X = h.X(2)
    assert ((X >= 0) & (X <= 1)).all()
    assert len({tuple(np.round(x, 9)) for x in X}) == len(X)
    y = [o.metrics["y"] for o in h.observations]
    # seed 0: the initial design's best is 3.55; the model's trials reach 0.42 (Branin's minimum: 0.398)
    assert min(y[5:]) < min(y[:5]) - 1.0 and min(y[5:]) < 1.0


@pytest.mark.slow
def test_multi_objective_branin_currin_proposes_from_the_model_after_replay():
    sim = TestFunctionSimulator("branincurrin")
    objectives = [Objective(o["metric"], threshold=o["threshold"]) for o in sim.objectives()]
    policy = AxPolicy(Problem(space=unit_space(2), objectives=objectives, seed=0), AxPolicy.Options(initial=4))
    h = sobol_history(sim, 6)
    (p,) = policy.propose(h, 1, [])
    assert p.reason["generation_node"] == "MBM"
    assert ((p.x >= 0) & (p.x <= 1)).all()


def test_a_resumed_policy_does_not_propose_the_initial_design_again():
    sim = TestFunctionSimulator("branin")
    problem = Problem(space=unit_space(2), objectives=[Objective("y")], seed=0)
    first = AxPolicy(problem, AxPolicy.Options(initial=6)).propose(History(), 3, [])
    # a crash: the three are still running; a fresh policy (as after `aec resume`) sees them as pending
    pending = [Proposal(x=np.asarray(p.x) + 1e-15) for p in first]  # a round trip through the store moves ulps
    again = AxPolicy(problem, AxPolicy.Options(initial=6)).propose(History(), 3, pending)
    for p in again:
        assert not any(np.allclose(p.x, q.x, atol=1e-9) for q in pending), "re-proposed a running point"
