"""Baseline policies: uniform random, scrambled Sobol, and a serpentine grid / raster scan.

All three are deterministic functions of (seed, history, pending): the i-th proposal of a
campaign is the same whether or not the campaign was restarted in between.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.quasirandom import SobolEngine

from policies.base import EncodedSpace, History, Problem, Proposal


def _taken(history: History, pending: list[Proposal]) -> set[int]:
    return history.used_pool_indices() | {p.pool_index for p in pending if p.pool_index is not None}


def _feasible_rows(space: EncodedSpace, X: np.ndarray) -> np.ndarray:
    return X[space.feasible(X)] if space.linear_constraints else X


def polytope_samples(space: EncodedSpace, n: int, seed: int) -> np.ndarray:
    """n points spread over the constrained polytope (hit-and-run), snapped and filtered (<= n rows).

    Rejection sampling fails when constraints keep a tiny share of the cube (8 ordered radii: 1 in
    8!); hit-and-run walks inside the polytope instead.
    """
    from botorch.utils.sampling import get_polytope_samples

    d = space.dim
    bounds = torch.stack([torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)])
    ineq = [
        (torch.tensor(c.indices, dtype=torch.long), torch.tensor(c.coefficients, dtype=torch.float64), float(c.rhs))
        for c in space.linear_constraints
    ]
    X = get_polytope_samples(4 * n, bounds, inequality_constraints=ineq, seed=seed, n_burnin=200, n_thinning=4).numpy()
    return _feasible_rows(space, space.snap(X))[:n]


def _feasible_share(space: EncodedSpace, seed: int) -> float:
    probe = np.random.default_rng(seed).random((2048, space.dim))
    return float(space.feasible(space.snap(probe)).mean())


class RandomPolicy:
    """Uniform random points (rejection-sampled under linear constraints) or random unused pool rows."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        kind: Literal["random"] = "random"

    def __init__(self, problem: Problem, options: "RandomPolicy.Options | None" = None):
        self.problem = problem
        self.space = problem.space

    def propose(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        rng = np.random.default_rng([self.problem.seed, len(history), len(pending), 1])
        if self.space.pool is not None:
            taken = _taken(history, pending)
            free = np.setdiff1d(np.arange(len(self.space.pool)), np.fromiter(taken, int, len(taken)))
            picks = rng.choice(free, size=min(n, len(free)), replace=False) if len(free) else []
            return [Proposal(x=self.space.pool[i], pool_index=int(i), reason={"policy": "random"}) for i in picks]
        if self.space.linear_constraints and _feasible_share(self.space, self.problem.seed) < 0.01:
            seed = int(rng.integers(2**31))
            X = polytope_samples(self.space, n, seed)
            return [Proposal(x=x, reason={"policy": "random", "sampler": "hit-and-run"}) for x in X]
        out: list[np.ndarray] = []
        for _ in range(1000):
            X = _feasible_rows(self.space, self.space.snap(rng.random((max(4 * n, 64), self.space.dim))))
            out.extend(X[: n - len(out)])
            if len(out) >= n:
                break
        if len(out) < n:
            raise RuntimeError("random sampling found no point that satisfies the linear constraints")
        return [Proposal(x=x, reason={"policy": "random"}) for x in out]


class SobolPolicy:
    """Scrambled, seeded Sobol points; on pools, the unused row nearest to each Sobol point."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        kind: Literal["sobol"] = "sobol"

    def __init__(self, problem: Problem, options: "SobolPolicy.Options | None" = None):
        self.problem = problem
        self.space = problem.space

    def _points(self, start: int, count: int) -> np.ndarray:
        engine = SobolEngine(self.space.dim, scramble=True, seed=self.problem.seed)
        if start:
            engine.fast_forward(start)
        return engine.draw(count, dtype=torch.float64).numpy()

    def propose(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        start = len(history) + len(pending)
        if self.space.pool is not None:
            pool = self.space.pool
            taken = _taken(history, pending)
            free = np.ones(len(pool), dtype=bool)
            free[list(taken)] = False
            out = []
            for k, target in enumerate(self._points(start, n)):
                if not free.any():
                    break
                idx = np.flatnonzero(free)
                i = int(idx[np.argmin(((pool[idx] - target) ** 2).sum(1))])
                free[i] = False
                out.append(Proposal(x=pool[i], pool_index=i, reason={"policy": "sobol", "sequence": start + k}))
            return out
        if not self.space.linear_constraints:
            X = self.space.snap(self._points(start, n))
            return [Proposal(x=x, reason={"policy": "sobol", "sequence": start + k}) for k, x in enumerate(X)]
        if _feasible_share(self.space, self.problem.seed) < 0.01:
            X = polytope_samples(self.space, n, self.problem.seed * 100_003 + start)
            return [Proposal(x=x, reason={"policy": "sobol", "sampler": "hit-and-run"}) for x in X]
        # Under constraints, walk the sequence from a position that depends only on how many points came before.
        out, pos = [], 0
        block = 256
        while len(out) < n:
            X = self.space.snap(self._points(pos, block))
            ok = np.flatnonzero(self.space.feasible(X))
            if pos > 1_000_000:
                raise RuntimeError("the Sobol sequence found no point that satisfies the linear constraints")
            for i in ok:
                if start > 0:
                    start -= 1
                    continue
                out.append(Proposal(x=X[i], reason={"policy": "sobol", "sequence": pos + int(i)}))
                if len(out) == n:
                    break
            pos += block
        return out


def serpentine_order(coords: np.ndarray) -> np.ndarray:
    """Order rows of a grid (N x d) as a boustrophedon scan: dimension 0 fastest, each pass reversing.

    Rank each dimension's values; dimension j runs backwards when the ranks of the slower
    dimensions (j+1 ...) sum to an odd number, so consecutive points differ in one coordinate.
    """
    coords = np.atleast_2d(coords)
    ranks = np.stack([np.unique(c, return_inverse=True)[1] for c in coords.T], axis=1)
    sizes = ranks.max(axis=0) + 1
    keys = ranks.copy()
    d = coords.shape[1]
    for j in range(d - 1):
        slower = ranks[:, j + 1 :].sum(axis=1)
        keys[:, j] = np.where(slower % 2 == 1, sizes[j] - 1 - ranks[:, j], ranks[:, j])
    return np.lexsort(tuple(keys[:, j] for j in range(d)))


class GridPolicy:
    """A raster scan: a full grid (or the pool) visited in serpentine order, one row after another."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        kind: Literal["grid", "raster"] = "grid"
        points_per_dim: int = Field(10, ge=2, description="grid points along each continuous dimension")

    def __init__(self, problem: Problem, options: "GridPolicy.Options | None" = None):
        self.problem = problem
        self.space = problem.space
        opts = options or GridPolicy.Options()
        if self.space.pool is not None:
            self.points = self.space.pool
            self.is_pool = True
        else:
            axes = [
                np.linspace(0, 1, k if k is not None else opts.points_per_dim) for k in self.space.levels
            ]
            mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, self.space.dim)
            self.points = _feasible_rows(self.space, mesh)
            self.is_pool = False
        self.order = serpentine_order(self.points) if len(self.points) else np.zeros(0, dtype=int)

    def propose(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        if self.is_pool:
            taken = _taken(history, pending)
            picks = [int(i) for i in self.order if int(i) not in taken][:n]
            return [Proposal(x=self.points[i], pool_index=i, reason={"policy": "grid"}) for i in picks]
        start = len(history) + len(pending)
        picks = self.order[start : start + n]
        return [Proposal(x=self.points[i], reason={"policy": "grid", "step": start + k}) for k, i in enumerate(picks)]
