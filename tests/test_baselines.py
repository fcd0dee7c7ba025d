"""Baseline policies: deterministic from (seed, history), inside the space, never repeating pool rows."""
from __future__ import annotations

import numpy as np
import pytest

from policies.base import EncodedSpace, History, LinearConstraint, Objective, Observation, Problem, Proposal
from policies.baselines import GridPolicy, RandomPolicy, SobolPolicy, serpentine_order


def _problem(d: int = 3, pool: np.ndarray | None = None, constraints=(), levels=None) -> Problem:
    space = EncodedSpace([f"x{i}" for i in range(d)], levels or [None] * d, [False] * d, list(constraints), pool)
    return Problem(space, [Objective("y")], seed=5)


def _grow(history: History, props: list[Proposal]) -> None:
    for p in props:
        history.append(Observation(len(history), p.x, {"y": 0.0}, pool_index=p.pool_index))


@pytest.mark.parametrize("cls", [RandomPolicy, SobolPolicy])
def test_proposals_depend_only_on_seed_and_history(cls):
    a, b = cls(_problem()), cls(_problem())
    h = History()
    first = a.propose(h, 4, [])
    assert np.allclose([p.x for p in first], [p.x for p in b.propose(History(), 4, [])])
    _grow(h, first)
    assert not np.allclose(a.propose(h, 1, [])[0].x, first[0].x)


def test_sobol_continues_the_sequence_after_a_restart():
    pol = SobolPolicy(_problem())
    h = History()
    batch = pol.propose(h, 6, [])
    h2 = History()
    _grow(h2, batch[:2])
    again = SobolPolicy(_problem()).propose(h2, 4, [])
    assert np.allclose([p.x for p in again], [p.x for p in batch[2:]])


@pytest.mark.parametrize("cls", [RandomPolicy, SobolPolicy])
def test_linear_constraints_hold(cls):
    c = LinearConstraint((0, 1), (-1.0, -1.0), -0.5)  # x0 + x1 <= 0.5
    props = cls(_problem(constraints=[c])).propose(History(), 20, [])
    X = np.array([p.x for p in props])
    assert len(X) == 20 and np.all(X[:, 0] + X[:, 1] <= 0.5 + 1e-9)


@pytest.mark.parametrize("cls", [RandomPolicy, SobolPolicy, GridPolicy])
def test_pool_rows_are_never_repeated_and_pending_is_respected(cls):
    pool = np.random.default_rng(0).random((30, 2))
    pol = cls(_problem(2, pool=pool))
    h = History()
    pending = pol.propose(h, 5, [])
    seen = {p.pool_index for p in pending}
    while True:
        props = pol.propose(h, 4, pending)
        if not props:
            break
        idx = {p.pool_index for p in props}
        assert not idx & seen
        seen |= idx
        _grow(h, pending)
        pending = props
    assert seen == set(range(30))


def test_serpentine_order_moves_one_grid_step_at_a_time():
    xs, ys, zs = np.meshgrid(np.arange(4), np.arange(3), np.arange(2), indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel(), zs.ravel()], axis=1).astype(float)
    rng = np.random.default_rng(1)
    grid = grid[rng.permutation(len(grid))]
    path = grid[serpentine_order(grid)]
    steps = np.abs(np.diff(path, axis=0)).sum(axis=1)
    assert np.all(steps == 1) and len({tuple(p) for p in path}) == 24
    assert np.all(path[:4, 1:] == 0) and np.all(path[:4, 0] == [0, 1, 2, 3])


def test_grid_policy_scans_the_continuous_space_in_order():
    pol = GridPolicy(_problem(2), GridPolicy.Options(points_per_dim=3))
    h = History()
    xs = []
    for _ in range(3):
        props = pol.propose(h, 3, [])
        xs += [p.x for p in props]
        _grow(h, props)
    assert len({tuple(x) for x in xs}) == 9
    assert pol.propose(h, 1, []) == []


@pytest.mark.parametrize("cls", [RandomPolicy, SobolPolicy])
def test_tightly_ordered_parameters_are_sampled_inside_the_polytope(cls):
    d = 8  # x0 <= x1 - 0.05 <= ... : about 1 point in 8! of the cube is feasible
    cons = [LinearConstraint((i + 1, i), (1.0, -1.0), 0.05) for i in range(d - 1)]
    props = cls(_problem(d, constraints=cons)).propose(History(), 6, [])
    X = np.array([p.x for p in props])
    assert len(X) == 6
    assert np.all(np.diff(X, axis=1) >= 0.05 - 1e-9)
    assert len({tuple(x) for x in X}) == 6
