"""How we search the unit cube: maximise an acquisition over a continuous or mixed space.

Batches are built greedily: each point is chosen with the pending trials and the batch's
earlier points as `X_pending` (MC acquisitions) or as fantasies (analytic ones), so workers
never duplicate work and the model is never refitted inside a batch. `batch_mode="joint"`
optimises a q-batch jointly instead (MC acquisitions, continuous spaces, no cost).

- continuous spaces: `optimize_acqf` (L-BFGS-B, or SLSQP under linear constraints);
- spaces with categories (or only binary levels): `optimize_acqf_mixed_alternating`, then `space.snap`;
- ordinal integer levels: with at most ENUMERATE_MAX assignments, each one fixed in turn (the
  relaxation's optimum, rounded, never revisited the other layer count of the detector study); with
  more, the continuous relaxation, snapped and re-scored (the alternating mixed optimiser took
  30-40 s per proposal on a 9-d detector space with one integer dimension);
- Thompson sampling: joint posterior draws over Sobol points plus points near the incumbents.
Pools are searched by pool_search.py, which shares the pieces defined here.

With a TravelCost, candidates are ranked by acquisition per second from the previous point.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from botorch.optim import optimize_acqf
from botorch.optim.initializers import initialize_q_batch
from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating
from torch.quasirandom import SobolEngine

from policies.base import EncodedSpace
from policies.bayesian.acquisition import (
    MC_ACQUISITIONS,
    AcquisitionBuilder,
    Outcomes,
    per_cost,
    thompson_draws,
)
from policies.bayesian.models import FittedModel, train_marginals, with_fantasies
from policies.bayesian.route import TravelCost
from policies.pareto import pareto_mask

logger = logging.getLogger(__name__)

ACQ_FTOL = 1e-6  # default relative change of the acquisition value at which L-BFGS-B stops
ENUMERATE_MAX = 8  # ordinal level assignments searched one by one up to this many (more: the relaxation)


@dataclass
class SearchSettings:
    num_restarts: int = 12
    raw_samples: int = 512
    maxiter: int = 100
    ftol: float | None = ACQ_FTOL  # None: scipy's default (2.2e-9)
    batch_mode: str = "sequential"
    pool_chunk: int | None = None  # None: pool_search.chunk_rows
    pool_shortlist: int = 256
    pool_screen_float32: bool = True
    ts_candidates: int = 1024
    beta: float = 2.0
    fast_paths: bool = True  # pruned and float32 pool screens (False: every row in float64)


@dataclass
class Pick:
    """One chosen point: unit-cube x (d,), its acquisition value, and where it came from."""

    x: np.ndarray
    value: float
    pool_index: int | None = None
    utility: float | None = None  # value per second (log), when cost-aware
    seconds: float | None = None  # travel + dwell from the previous point


@dataclass
class SearchContext:
    """Everything a search needs besides the acquisition."""

    fitted: FittedModel
    outcomes: Outcomes
    space: EncodedSpace
    settings: SearchSettings
    pending: np.ndarray  # k x d: running trials (and failed points to avoid)
    cost: TravelCost | None = None  # set when ranking by value per second
    start: np.ndarray | None = None  # the instrument's current (or last queued) position
    ref_point: torch.Tensor | None = None  # larger-is-better hypervolume reference (MOO)

    def tensor(self, X: np.ndarray) -> torch.Tensor:
        return self.fitted.tensor(X)

    def pending_with(self, picks: list[Pick]) -> torch.Tensor | None:
        rows = [self.pending] + [p.x[None, :] for p in picks]
        X = np.vstack(rows) if rows else np.zeros((0, self.space.dim))
        return self.tensor(X) if len(X) else None


# ---------------------------------------------------------------------------------------------
# candidate sets


def sobol_candidates(space: EncodedSpace, n: int, seed: int) -> np.ndarray:
    """n feasible, snapped, scrambled-Sobol points (fewer when constraints reject most)."""
    engine = SobolEngine(space.dim, scramble=True, seed=seed)
    out = np.zeros((0, space.dim))
    for _ in range(16):
        X = space.snap(engine.draw(max(n, 64), dtype=torch.float64).numpy())
        out = np.vstack([out, X[space.feasible(X)]])
        if len(out) >= n:
            break
    return out[:n]


def local_candidates(space: EncodedSpace, centres: np.ndarray, n: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """n Gaussian perturbations (sd = scale) of the centres, snapped and feasible."""
    if len(centres) == 0 or n <= 0:
        return np.zeros((0, space.dim))
    X = centres[rng.integers(0, len(centres), n)] + scale * rng.standard_normal((n, space.dim))
    X = space.snap(X)
    return X[space.feasible(X)]


def _is_new(x: np.ndarray, taken: np.ndarray, tol: float = 1e-9) -> bool:
    return len(taken) == 0 or bool((np.abs(taken - x).max(axis=1) > tol).all())


def _incumbents(ctx: SearchContext, k: int = 5) -> np.ndarray:
    """Up to k observed points the model thinks best (Pareto points for several objectives)."""
    fitted, outcomes = ctx.fitted, ctx.outcomes
    mean, _ = train_marginals(fitted)
    obj = outcomes.objective_values(mean).cpu().numpy()
    X = fitted.train_X.cpu().numpy()
    if outcomes.multi:
        return X[pareto_mask(obj, [True] * obj.shape[1])][:k]
    return X[np.argsort(-obj[:, 0])[:k]]


# ---------------------------------------------------------------------------------------------
# continuous / mixed spaces


def _inequality_constraints(ctx: SearchContext) -> list[tuple[torch.Tensor, torch.Tensor, float]] | None:
    cons = [
        (torch.as_tensor(c.indices, dtype=torch.long, device=ctx.fitted.settings.device), ctx.tensor(np.asarray(c.coefficients, dtype=float)), float(c.rhs))
        for c in ctx.space.linear_constraints
    ]
    return cons or None


def _discrete_structure(space: EncodedSpace) -> tuple[dict[int, list[float]], dict[int, list[float]], dict[int, float]]:
    """(ordinal dims -> allowed values, categorical dims -> values, fixed dims -> value)."""
    discrete, categorical, fixed = {}, {}, {}
    for i, k in enumerate(space.levels):
        if k is None:
            continue
        if k <= 1:
            fixed[i] = 0.0
            continue
        values = [j / (k - 1) for j in range(k)]
        (categorical if space.categorical[i] else discrete)[i] = values
    return discrete, categorical, fixed


def _feasible_starts(acqf, ctx: SearchContext, seed: int, restarts: int, fixed: dict[int, float]) -> torch.Tensor | None:
    """Starting points (r x 1 x d) under linear constraints, from rejection-sampled Sobol points.

    BoTorch's default draws them by hit-and-run on the polytope, ~2.5 s per call here; rejection
    is instant unless the feasible region is a sliver (then None: BoTorch's sampler takes over).
    """
    s = ctx.settings
    X = _with_fixed(sobol_candidates(ctx.space, s.raw_samples, seed), fixed, ctx.space)
    if len(X) < max(4 * restarts, 32):
        return None
    values = evaluate(acqf, X, ctx)
    finite = torch.isfinite(values)
    if int(finite.sum()) < restarts:
        return None
    starts, _ = initialize_q_batch(ctx.tensor(X)[finite].unsqueeze(-2), values[finite], n=restarts)
    return starts


def _with_fixed(X: np.ndarray, fixed: dict[int, float], space: EncodedSpace) -> np.ndarray:
    """Rows of X with the fixed dimensions set, keeping those that still meet the linear constraints."""
    if not fixed or not len(X):
        return X
    X = X.copy()
    for i, v in fixed.items():
        X[:, i] = v
    return X[space.feasible(X)]


def _level_combinations(discrete: dict[int, list[float]]) -> list[dict[int, float]]:
    """Every assignment of the ordinal dimensions' levels, up to ENUMERATE_MAX + 1 of them (more: stop counting)."""
    combos: list[dict[int, float]] = [{}]
    for i, values in discrete.items():
        combos = [{**c, i: v} for c in combos for v in values]
        if len(combos) > ENUMERATE_MAX:
            break
    return combos


def _optimise_once(acqf, ctx: SearchContext, q: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Local optima of acqf: (r x q x d candidates, r values), best first.

    Restarts that stop early (scipy's ABNORMAL line searches are common on flat log-acquisitions)
    still return their best point, so BoTorch's warnings about them are logged, not raised.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _optimise_once_quietly(acqf, ctx, q, seed)
    if caught:
        logger.debug("acquisition optimiser: %s", "; ".join(sorted({str(w.message)[:120] for w in caught})))
    return out


def _optimise_once_quietly(acqf, ctx: SearchContext, q: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    s, space = ctx.settings, ctx.space
    d = space.dim
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(ctx.fitted.train_X)
    discrete, categorical, fixed = _discrete_structure(space)
    ineq = _inequality_constraints(ctx)
    if categorical or (discrete and all(len(v) <= 2 for v in discrete.values()) and len(discrete) == d):
        X, v = optimize_acqf_mixed_alternating(
            acqf, bounds, discrete_dims=discrete or None, cat_dims=categorical or None,
            q=q, raw_samples=s.raw_samples, num_restarts=s.num_restarts,
            fixed_features=fixed or None, inequality_constraints=ineq,
            options={"maxiter_alternating": 16, "batch_limit": max(s.num_restarts, 8), "init_batch_limit": s.raw_samples},
        )
        return X.reshape(1, q, d), v.reshape(-1)[:1] if q == 1 else v.sum().reshape(1)
    combos = _level_combinations(discrete) if q == 1 else [{}]
    if not discrete or len(combos) > ENUMERATE_MAX:
        return _optimise_continuous(acqf, ctx, bounds, ineq, fixed, q, seed, s.num_restarts)
    # few ordinal levels: optimise the continuous dimensions with each assignment fixed (as BoTorch's
    # optimize_acqf_mixed), so a level the relaxation's optimum rounds away from is still searched
    restarts = max(2, -(-s.num_restarts // len(combos)))
    probe = sobol_candidates(space, 64, seed) if ineq else None  # one feasibility probe for every assignment
    parts = [
        _optimise_continuous(acqf, ctx, bounds, ineq, {**fixed, **combo}, q, seed + 104729 * j, restarts)
        for j, combo in enumerate(combos)
        if probe is None or len(_with_fixed(probe, combo, space))
    ]
    if not parts:  # no assignment has a feasible Sobol point: let the relaxation search the polytope
        return _optimise_continuous(acqf, ctx, bounds, ineq, fixed, q, seed, s.num_restarts)
    X, v = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    order = torch.argsort(v, descending=True)
    return X[order], v[order]


def _optimise_continuous(
    acqf, ctx: SearchContext, bounds: torch.Tensor, ineq, fixed: dict[int, float], q: int, seed: int, restarts: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-start gradient ascent over the continuous relaxation with `fixed` dimensions held."""
    s = ctx.settings
    options: dict = {"maxiter": s.maxiter, "batch_limit": max(restarts, 8), "init_batch_limit": s.raw_samples}
    starts = None
    if ineq is None and s.ftol is not None:
        options.update(ftol=s.ftol, factr=None)  # batched L-BFGS-B: stop once the value stops moving
    elif q == 1:
        starts = _feasible_starts(acqf, ctx, seed, restarts, fixed)
    X, v = optimize_acqf(
        acqf, bounds, q=q, num_restarts=restarts, raw_samples=None if starts is not None else s.raw_samples,
        inequality_constraints=ineq, fixed_features=fixed or None, batch_initial_conditions=starts,
        options=options,
        return_best_only=False, retry_on_optimization_warning=False,
    )
    order = torch.argsort(v, descending=True)
    return X[order], v[order]


def evaluate(acqf, X: np.ndarray, ctx: SearchContext, chunk: int = 512) -> torch.Tensor:
    """acqf at each row of X (N x d), one point per t-batch: N."""
    T = ctx.tensor(X).unsqueeze(-2)
    with torch.no_grad():
        return torch.cat([acqf(c) for c in T.split(chunk)]) if len(T) else T.new_zeros(0)


def search_space(builder: AcquisitionBuilder | None, name: str, ctx: SearchContext, q: int, seed: int) -> list[Pick]:
    """q points in the (continuous or mixed) unit cube maximising acquisition `name`."""
    if name == "ts":
        rng = np.random.default_rng(seed)
        n = ctx.settings.ts_candidates
        C = np.vstack([sobol_candidates(ctx.space, n, seed), local_candidates(ctx.space, _incumbents(ctx), n // 2, 0.05, rng)])
        return thompson_picks(ctx, C, None, q, builder)
    if ctx.settings.batch_mode == "joint" and q > 1 and name in MC_ACQUISITIONS and ctx.cost is None:
        discrete, categorical, _ = _discrete_structure(ctx.space)
        if not discrete and not categorical:
            acqf = builder.build(ctx.pending_with([]), q=q)
            X, v = _optimise_once(acqf, ctx, q=q, seed=seed)
            snapped = ctx.space.snap(X[0].detach().cpu().numpy())
            if ctx.space.feasible(snapped).all():
                return [Pick(x=x, value=float(v[0])) for x in snapped]
    picks: list[Pick] = []
    previous = ctx.start
    for k in range(q):
        acqf = builder.build(ctx.pending_with(picks))
        X, v = _optimise_once(acqf, ctx, seed=seed + 7919 * k)
        cands = ctx.space.snap(X[:, 0, :].detach().cpu().numpy())
        values = v.detach()
        if ctx.cost is not None:
            extra = sobol_candidates(ctx.space, ctx.settings.raw_samples, seed + k)
            cands = np.vstack([cands, extra])
            values = torch.cat([values, evaluate(acqf, extra, ctx)])
        if not (ctx.space.feasible(cands).all()) or ctx.space.levels.count(None) < ctx.space.dim:
            # snapping may have broken a constraint or moved two optima onto one point: re-score
            values = evaluate(acqf, cands, ctx)
        taken = np.vstack([ctx.pending] + [p.x[None, :] for p in picks]) if (len(ctx.pending) or picks) else np.zeros((0, ctx.space.dim))
        if all(k_ is not None for k_ in ctx.space.levels):
            taken = np.vstack([taken, ctx.fitted.data.X])  # a finite space: never re-measure a point
        pick = _choose(ctx, cands, values, taken, previous, builder)
        if pick is None:
            extra = sobol_candidates(ctx.space, max(ctx.settings.raw_samples, 256), seed + 1000 + k)
            pick = _choose(ctx, extra, evaluate(acqf, extra, ctx), taken, previous, builder)
        if pick is None:
            break
        picks.append(pick)
        previous = pick.x
    return picks


def _choose(
    ctx: SearchContext, cands: np.ndarray, values: torch.Tensor, taken: np.ndarray, previous: np.ndarray | None,
    builder: AcquisitionBuilder | None,
) -> Pick | None:
    """The best feasible candidate not already taken, by value or by value per second."""
    ok = ctx.space.feasible(cands)
    utility = values.clone()
    seconds = None
    if ctx.cost is not None:
        seconds = ctx.cost.seconds(previous, cands)
        utility = per_cost(values, values.new_tensor(seconds), builder.scale, builder.reference)
    for i in torch.argsort(utility, descending=True).tolist():
        if ok[i] and _is_new(cands[i], taken) and torch.isfinite(values[i]):
            return Pick(
                x=cands[i], value=float(values[i]),
                utility=None if seconds is None else float(utility[i]),
                seconds=None if seconds is None else float(seconds[i]),
            )
    return None


def thompson_picks(
    ctx: SearchContext, C: np.ndarray, pool_index: np.ndarray | None, q: int, builder: AcquisitionBuilder | None
) -> list[Pick]:
    """q Thompson picks among candidates C (N x d): the argmax of each of q joint posterior draws."""
    model = with_fantasies(ctx.fitted, ctx.pending) if len(ctx.pending) else ctx.fitted.model
    draws = thompson_draws(model, ctx.tensor(C), q, ctx.outcomes)  # q x N
    picks: list[Pick] = []
    used = np.zeros(len(C), dtype=bool)
    previous = ctx.start
    taken = ctx.pending
    reference = builder.reference if builder is not None else 0.0
    for k in range(q):
        utility = draws[k].clone()
        seconds = None
        if ctx.cost is not None:
            seconds = ctx.cost.seconds(previous, C)
            utility = per_cost(draws[k], draws.new_tensor(seconds), "raw", reference)
        utility[torch.as_tensor(used, device=utility.device)] = -float("inf")
        for i in torch.argsort(utility, descending=True).tolist():
            if used[i]:
                break
            if pool_index is not None or _is_new(C[i], taken):
                used[i] = True
                picks.append(Pick(
                    x=C[i], value=float(draws[k, i]), pool_index=None if pool_index is None else int(pool_index[i]),
                    utility=None if seconds is None else float(utility[i]),
                    seconds=None if seconds is None else float(seconds[i]),
                ))
                previous = C[i]
                break
    return picks
