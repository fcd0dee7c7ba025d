"""Shared helpers of the BoTorch policy tests (test_bayesian.py, test_winsorize.py): small spaces,
policies with cheap search settings, histories and test functions."""
from __future__ import annotations

import numpy as np
import torch

import simulators
from policies.base import EncodedSpace, History, Objective, Observation, Problem
from policies.bayesian import BotorchPolicy

FAST = dict(num_restarts=4, raw_samples=128, mc_samples=64, maxiter=50, ts_candidates=256, pool_shortlist=64)
ACQUISITIONS = ["qlognei", "logei", "ucb", "ts", "variance"]


def cube(d: int, **kw) -> EncodedSpace:
    return EncodedSpace(names=[f"x{i}" for i in range(d)], levels=[None] * d, categorical=[False] * d, **kw)


def policy(space: EncodedSpace, objectives=None, constraints=(), seed=0, move_cost=None, strict=None, **options) -> BotorchPolicy:
    problem = Problem(
        space=space, objectives=objectives or [Objective("y")], constraints=list(constraints),
        move_cost=move_cost, seed=seed,
    )
    return BotorchPolicy(problem, BotorchPolicy.Options(**{**FAST, **options}), strict=strict)


def history(X: np.ndarray, fn, pool_index=None) -> History:
    H = History()
    for i, x in enumerate(X):
        H.append(Observation(trial_id=i, x=x, metrics=fn(x), pool_index=None if pool_index is None else int(pool_index[i])))
    return H


def quadratic(x: np.ndarray) -> dict[str, float]:
    return {"y": float(((x - 0.3) ** 2).sum())}


BRANIN = simulators.create("branin")
LOW, HIGH = BRANIN.problem.bounds.numpy()


def branin(x: np.ndarray) -> float:
    native = torch.as_tensor(LOW + np.asarray(x) * (HIGH - LOW))[None]
    return float(BRANIN.evaluate_tensor(native, noise=False)[0])
