"""Winsorization of the training data: only far, bad-side values move, never past a threshold or bound."""

from __future__ import annotations

import numpy as np

from policies.base import Objective, OutcomeConstraint, Problem
from policies.bayesian.acquisition import Outcomes
from policies.bayesian.winsorize import cutoffs, winsorize
from tests.bayes_helpers import branin, cube, history, policy


def outcomes(objectives, constraints=()) -> Outcomes:
    return Outcomes.from_problem(Problem(space=cube(1), objectives=list(objectives), constraints=list(constraints)))


def test_a_minimised_objective_loses_only_its_far_upper_tail():
    y = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [100.0], [np.nan]])
    out, clipped = winsorize(y, outcomes([Objective("y")]), [None])
    assert clipped == 1
    assert out[5, 0] == 5.0 + 1.5 * (5.0 - 2.0)  # Tukey's fence: q3 + 1.5 IQR (quartiles taken on the data)
    np.testing.assert_array_equal(out[:5], y[:5])
    assert np.isnan(out[6, 0])


def test_a_maximised_objective_loses_only_its_far_lower_tail():
    y = np.array([[-100.0], [1.0], [2.0], [3.0], [4.0], [500.0]])
    out, clipped = winsorize(y, outcomes([Objective("y", maximize=True)]), [None])
    assert clipped == 1 and out[0, 0] > -100.0 and out[5, 0] == 500.0


def test_cutoffs_never_come_inside_an_objective_threshold():
    y = np.column_stack([np.linspace(0, 1, 20), np.linspace(0, 1, 20)])
    y[-1] = [1e4, -1e4]
    outs = outcomes([Objective("a", threshold=50.0), Objective("b", maximize=True, threshold=-50.0)])
    (lo_a, hi_a), (lo_b, hi_b) = cutoffs(y, outs, [50.0, -50.0])
    assert lo_a == -np.inf and hi_a >= 50.0 and hi_a < 1e4
    assert hi_b == np.inf and lo_b <= -50.0 and lo_b > -1e4


def test_a_constraint_only_metric_is_clipped_on_its_infeasible_side():
    y = np.column_stack([np.arange(8.0), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, -1e3, 1e3]])
    outs = outcomes([Objective("y")], [OutcomeConstraint("g", ">=", 2.0)])
    out, clipped = winsorize(y, outs, [None])
    assert out[7, 1] == 1e3  # the feasible side is left alone
    assert -1e3 < out[6, 1] <= 2.0 and clipped == 1


def test_too_few_or_identical_values_are_left_alone():
    outs = outcomes([Objective("y")])
    few = np.array([[1.0], [2.0], [1e6]])
    same = np.array([[3.0]] * 6 + [[1e6]])
    assert winsorize(few, outs, [None])[1] == 0
    out, clipped = winsorize(same, outs, [None])
    assert clipped == 0 and out[-1, 0] == 1e6


def test_the_policy_winsorizes_when_asked_and_says_how_many_values_moved():
    X = np.random.default_rng(3).random((16, 2))
    H = history(X, lambda x: {"y": branin(x)})
    plain = policy(cube(2)).propose(H, 1, [])[0]
    clipped = policy(cube(2), winsorize=True).propose(H, 1, [])[0]
    assert plain.reason["model"]["winsorized"] == 0
    assert clipped.reason["model"]["winsorized"] >= 1
    assert all(0 <= v <= 1 for v in clipped.x)
