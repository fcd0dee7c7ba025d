"""Pareto sets, hypervolumes and reference points (policies.pareto), checked on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from policies.base import Objective
from policies.pareto import hypervolume, pareto_mask, reference_point


def test_pareto_mask_keeps_exactly_the_non_dominated_rows_when_minimising():
    Y = np.array([[1.0, 5.0], [2.0, 3.0], [3.0, 4.0], [4.0, 1.0], [5.0, 5.0]])
    # (3, 4) is beaten by (2, 3); (5, 5) by everything
    assert pareto_mask(Y, [False, False]).tolist() == [True, True, False, True, False]


def test_pareto_mask_respects_mixed_directions():
    Y = np.array([[1.0, 1.0], [2.0, 2.0], [0.5, 0.0]])  # minimise column 0, maximise column 1
    assert pareto_mask(Y, [False, True]).tolist() == [True, True, True]
    Y = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert pareto_mask(Y, [False, True]).tolist() == [True, False]


def test_pareto_mask_ignores_missing_and_infeasible_rows_and_keeps_ties():
    Y = np.array([[0.0, 0.0], [np.nan, -5.0], [1.0, 1.0], [1.0, 1.0]])
    assert pareto_mask(Y, [True, True]).tolist() == [False, False, True, True]
    assert pareto_mask(Y, [True, True], feasible=[True, True, False, False]).tolist() == [True, False, False, False]


def test_hypervolume_of_a_staircase_is_the_sum_of_its_steps():
    # maximise both; boxes [0,1]x[0,3] U [0,2]x[0,2] U [0,3]x[0,1] -> 3 + 2 + 1 = 6
    Y = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(Y, [True, True], [0.0, 0.0]) == pytest.approx(6.0)
    # the same front, minimised, with the reference point mirrored
    assert hypervolume(-Y, [False, False], [0.0, 0.0]) == pytest.approx(6.0)


def test_hypervolume_ignores_dominated_missing_and_out_of_reference_points():
    Y = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0], [np.nan, 9.0], [9.0, -1.0]])
    assert hypervolume(Y, [True, True], [0.0, 0.0]) == pytest.approx(6.0)
    assert hypervolume(np.zeros((0, 2)), [True, True], [0.0, 0.0]) == 0.0


def test_hypervolume_in_three_dimensions_of_one_box():
    Y = np.array([[2.0, 3.0, 4.0]])
    assert hypervolume(Y, [True] * 3, [1.0, 1.0, 1.0]) == pytest.approx(1 * 2 * 3)


def test_reference_point_uses_thresholds_when_every_objective_has_one():
    objectives = [Objective("a", maximize=False, threshold=10.0), Objective("b", maximize=True, threshold=0.5)]
    ref, inferred = reference_point(np.array([[1.0, 1.0]]), objectives)
    assert ref.tolist() == [10.0, 0.5] and inferred is False


def test_reference_point_is_inferred_behind_the_nadir_of_the_front():
    objectives = [Objective("a"), Objective("b")]  # both minimised
    Y = np.array([[0.0, 10.0], [10.0, 0.0], [20.0, 20.0]])  # front: the first two; range 10 in each
    ref, inferred = reference_point(Y, objectives)
    assert inferred is True
    assert ref == pytest.approx([11.0, 11.0])  # nadir (10, 10) pushed back by 0.1 * range


def test_reference_point_keeps_given_thresholds_and_infers_the_rest():
    objectives = [Objective("a", threshold=15.0), Objective("b")]
    ref, inferred = reference_point(np.array([[0.0, 10.0], [10.0, 0.0]]), objectives)
    assert inferred is True and ref[0] == 15.0 and ref[1] > 10.0


def test_reference_point_without_data_is_nan_where_it_cannot_be_inferred():
    ref, inferred = reference_point(np.zeros((0, 2)), [Objective("a", threshold=1.0), Objective("b")])
    assert inferred is True and ref[0] == 1.0 and np.isnan(ref[1])


points = arrays(np.float64, st.tuples(st.integers(1, 25), st.just(2)), elements=st.floats(-10, 10))


@settings(max_examples=40, deadline=None)
@given(points)
def test_every_dominated_row_is_dominated_by_a_pareto_row(Y):
    mask = pareto_mask(Y, [True, True])
    front = Y[mask]
    assert mask.any()
    for y, on_front in zip(Y, mask):
        dominated = ((front >= y).all(axis=1) & (front > y).any(axis=1)).any()
        assert dominated != on_front


@settings(max_examples=40, deadline=None)
@given(points, arrays(np.float64, (1, 2), elements=st.floats(-10, 10)))
def test_hypervolume_never_shrinks_when_a_point_is_added(Y, extra):
    ref = [-11.0, -11.0]
    before = hypervolume(Y, [True, True], ref)
    after = hypervolume(np.vstack([Y, extra]), [True, True], ref)
    assert after >= before - 1e-9
    assert before == pytest.approx(hypervolume(Y[pareto_mask(Y, [True, True])], [True, True], ref))
