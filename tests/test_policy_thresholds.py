"""Every BoTorch policy configuration, driven past every internal threshold, proposes without a fallback.

A multi-objective campaign once turned into Sobol points after 64 observations (an AttributeError in
the baseline pruning, caught by the policy's catch-all). These tests cross each size at which the
policy changes path: BASELINE_MAX observed points in a noisy acquisition's baseline, `fit_max`
(hyperparameters fitted on a subset), `refit_every` (cached hyperparameters reused), `warm_start_after`
(fits started from the last ones), pool chunks and the pruned screen, the pool shortlist, and
winsorising, for every acquisition x 1/2/3 objectives x outcome constraints x spaces (unit cube,
pool, mixed with an integer and a linear constraint), with batch sizes, pending trials and
cost-aware modes rotated so each meets each, and joint q-batches. The policy runs strict, so a
fallback raises PolicyFallbackError here instead of passing as Sobol points.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

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
from policies.bayesian.acquisition import BASELINE_MAX

pytestmark = pytest.mark.slow

D = 3
N_FIRST = BASELINE_MAX + 8  # past the baseline cap, with the baseline conditioned on every point
FIT_MAX = 16  # hyperparameters fitted on a subset: refit_every = round(n / FIT_MAX) = 5 > 1
WARM_AFTER = 8  # below FIT_MAX, so the refits after the first are warm-started
POOL_ROWS = 700
POOL_CHUNK = 64  # about 11 chunks per screen
SEARCH = dict(num_restarts=2, raw_samples=32, mc_samples=16, maxiter=15, ts_candidates=64, pool_shortlist=16)
COMBOS = [  # (acquisition, objectives)
    ("qlognei", 1), ("logei", 1), ("ucb", 1), ("ts", 1), ("variance", 1),
    ("qlognehvi", 2), ("variance", 2), ("qlognehvi", 3), ("variance", 3),
]
COSTS = ["none", "divide", "route", "both"]


def _metrics(x: np.ndarray) -> dict[str, float]:
    """Three conflicting objectives and a constraint metric, with rare gross outliers for winsorising."""
    out = {
        "f0": float(((x - 0.3) ** 2).sum()),
        "f1": float(((x - 0.7) ** 2).sum()),
        "f2": float(np.sin(3 * x[0]) + x[1] - 0.5 * x[2]),
        "c": float(x[0] + x[1]),
    }
    if x[2] > 0.97:
        out["f0"] += 50.0
    return out


def _stage_seconds(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 10.0 * np.abs(np.asarray(a) - np.asarray(b)).max(axis=-1)


SPACES = ["cube", "pool", "mixed"]
JOINT = [("qlognei", 1), ("ucb", 1), ("qlognehvi", 2)]  # q-batches optimised jointly (MC acquisitions, cube)


def _cases():
    for k, (acq, m) in enumerate(COMBOS):
        for constrained, (s, space) in itertools.product((False, True), enumerate(SPACES)):
            batch = 1 + 2 * ((k + constrained + s) % 2)
            pending = 2 * ((k + s) % 2)
            cost = COSTS[(k + constrained + 2 * s) % 4]
            yield pytest.param(acq, m, constrained, space, batch, pending, cost, "sequential",
                               id=f"{acq}-{m}obj-{'cons' if constrained else 'free'}-{space}-q{batch}-pend{pending}-{cost}")
    for k, (acq, m) in enumerate(JOINT):
        yield pytest.param(acq, m, bool(k % 2), "cube", 3, 2 * (k % 2), "none", "joint", id=f"{acq}-{m}obj-joint-q3")


def _space(kind: str, rng: np.random.Generator) -> EncodedSpace:
    """The unit cube; a pool of POOL_ROWS rows; or x0 an integer with 5 levels and x1 + x2 <= 1.5."""
    names = [f"x{i}" for i in range(D)]
    if kind == "mixed":
        return EncodedSpace(names=names, levels=[5] + [None] * (D - 1), categorical=[False] * D,
                            linear_constraints=[LinearConstraint((1, 2), (-1.0, -1.0), -1.5)])
    pool = rng.random((POOL_ROWS, D)) if kind == "pool" else None
    return EncodedSpace(names=names, levels=[None] * D, categorical=[False] * D, pool=pool)


def _points(space: EncodedSpace, n: int, rng: np.random.Generator) -> np.ndarray:
    X = space.snap(rng.random((4 * n, D)))
    return X[space.feasible(X)][:n]


def _observe(history: History, X: np.ndarray, rows: np.ndarray | None) -> None:
    for i, x in enumerate(X):
        history.append(Observation(trial_id=len(history), x=np.asarray(x, dtype=float), metrics=_metrics(x),
                                   pool_index=None if rows is None else int(rows[i])))


@pytest.mark.parametrize("acq,m,constrained,space_kind,batch,pending,cost,mode", list(_cases()))
def test_no_configuration_falls_back_past_the_internal_thresholds(acq, m, constrained, space_kind, batch, pending, cost, mode):
    torch.set_num_threads(1)
    rng = np.random.default_rng([COMBOS.index((acq, m)), int(constrained), SPACES.index(space_kind)])
    space = _space(space_kind, rng)
    pool, table = space.pool is not None, space.pool
    objectives = [Objective(f"f{j}", threshold=3.0 if m > 1 else None) for j in range(m)]
    constraints = [OutcomeConstraint("c", "<=", 1.2)] if constrained else []
    problem = Problem(space=space, objectives=objectives, constraints=constraints,
                      move_cost=_stage_seconds if cost != "none" else None, seed=11)
    options = BotorchPolicy.Options(
        acquisition=acq, fit_max=FIT_MAX, condition_max=4 * N_FIRST, warm_start_after=WARM_AFTER,
        pool_chunk=POOL_CHUNK, winsorize=True, cost_aware=cost, batch_mode=mode, **SEARCH,
    )
    policy = BotorchPolicy(problem, options, strict=True)

    history = History()
    order = rng.permutation(POOL_ROWS) if pool else None
    first = order[:N_FIRST] if pool else None
    _observe(history, table[first] if pool else _points(space, N_FIRST, rng), first)

    # n = 72: a fresh fit; n = 73: cached hyperparameters reused; n = 78: a warm-started refit.
    for step, grow in enumerate((0, 1, 5)):
        if grow:
            rows = order[len(history):len(history) + grow] if pool else None
            _observe(history, table[rows] if pool else _points(space, grow, rng), rows)
        taken = {o.pool_index for o in history.observations}
        if pool:
            free = [i for i in order if i not in taken]
            running = [Proposal(x=table[i].copy(), pool_index=int(i)) for i in free[:pending]]
        else:
            running = [Proposal(x=x) for x in _points(space, pending, rng)]
        props = policy.propose(history, batch, running)

        assert len(props) == batch, f"step {step}: {len(props)} of {batch} proposals"
        for p in props:
            assert "fallback" not in p.reason, p.reason["fallback"]
            assert p.reason["acquisition"] == acq and not p.reason["initial_design"]
            assert np.isfinite(p.x).all() and (p.x >= 0).all() and (p.x <= 1).all()
            assert space.feasible(p.x[None])[0] and np.allclose(space.snap(p.x), p.x)
        assert props[0].reason["model"]["n_train"] == len(history)
        if pool:
            picked = [p.pool_index for p in props]
            assert len(set(picked)) == batch
            assert not set(picked) & (taken | {r.pool_index for r in running})
        if step == 0:
            assert props[0].reason["model"]["n_fit"] == FIT_MAX and props[0].reason["model"]["refit"]
        elif step == 1:
            assert not props[0].reason["model"]["refit"]
        else:
            assert props[0].reason["model"]["refit"] and props[0].reason["model"]["warm_start"]
