"""How we search a pool: a finite table of candidates (scan grid, target catalogue, data-set rows).

Every free row (not completed, failed or pending; feasible) is scored in chunks by a cheap
analytic stand-in of the acquisition computed from exact marginal posteriors (LogEI, UCB,
optimistic hypervolume improvement, each with log P(feasible)); the MC acquisition then picks a
greedy batch among the best `pool_shortlist` rows, earlier picks becoming X_pending. Without
constraints or travel costs, only the rows whose upper bound can reach that shortlist are
scored exactly (_pruned_screen); with them, every row's variance is screened in float32 and the
rows whose rounding-error bound could move them across the shortlist's edge are redone in float64
(_screen_every_row). Maximum variance re-scores the whole pool after each pick (with
the pick as a fantasy); Thompson sampling draws jointly over the best `ts_candidates` rows by a
wide UCB.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from policies.bayesian.acquisition import (
    AcquisitionBuilder,
    Outcomes,
    best_observed,
    log_prob_feasible,
    nondominated_cells,
    per_cost,
    screen_scores,
)
from policies.bayesian.models import marginal_posterior, train_marginals, with_fantasies
from policies.bayesian.posterior import screen_posterior
from policies.bayesian.search import Pick, SearchContext, evaluate, thompson_picks
from policies.pareto import pareto_mask

CHUNK_BYTES = 2**21  # a chunk's N x n kernel matrix in float64 stays within a 2 MiB L2 cache


def chunk_rows(ctx: SearchContext) -> int:
    """Pool rows per chunk: `pool_chunk`, or as many as keep the chunk's kernel matrix in cache.

    Chunks whose kernel matrix fits the L2 cache were 1.5-2x faster here than 4096-row ones
    (65,536 rows: 0.081 vs 0.12-0.15 s per proposal at n = 200, 0.24 vs 0.33 s at n = 1,000).
    """
    if ctx.settings.pool_chunk:
        return ctx.settings.pool_chunk
    n = ctx.fitted.train_X.shape[-2] + len(ctx.pending)
    return int(min(8192, max(128, CHUNK_BYTES // (8 * max(n, 1)))))


def screen_context(ctx: SearchContext) -> dict:
    """Incumbent value (single objective) or the non-dominated cells of the predicted front (several)."""
    fitted, outcomes = ctx.fitted, ctx.outcomes
    mean, std = train_marginals(fitted)
    out = {"best": best_observed(mean, std, outcomes), "beta": ctx.settings.beta, "y_std": fitted.y_std}
    if outcomes.multi:
        obj = outcomes.objective_values(mean)
        if outcomes.constraints:
            feasible = outcomes.violation(mean) <= 0
            obj = obj[feasible] if feasible.any() else obj[:0]
        front = obj[torch.as_tensor(pareto_mask(obj.cpu().numpy(), [True] * obj.shape[1]), device=obj.device)] if len(obj) else obj
        front = front[(front > ctx.ref_point).all(-1)] if len(front) else front
        out["cells"] = nondominated_cells(front, ctx.ref_point)
    return out


def search_pool(builder: AcquisitionBuilder | None, name: str, ctx: SearchContext, q: int, taken: set[int]) -> list[Pick]:
    """Up to q distinct, untaken pool rows maximising acquisition `name`."""
    pool, s = ctx.space.pool, ctx.settings
    free = np.ones(len(pool), dtype=bool)
    if taken:
        free[np.fromiter(taken, dtype=int, count=len(taken))] = False
    if ctx.space.linear_constraints:
        free &= ctx.space.feasible(pool)
    idx = np.flatnonzero(free)
    if len(idx) == 0:
        return []
    q = min(q, len(idx))
    Xf = ctx.tensor(pool[idx])
    sc = screen_context(ctx)
    if name == "variance":
        return _pool_greedy_believer(ctx, idx, Xf, q, sc, builder)
    # pending trials as fantasies, so that the shortlist is not crowded around them
    model = with_fantasies(ctx.fitted, ctx.pending) if len(ctx.pending) else ctx.fitted.model
    k = min(len(idx), max(s.ts_candidates if name == "ts" else s.pool_shortlist, 4 * q))
    if ctx.cost is None and not ctx.outcomes.constraints and s.fast_paths:
        scores = _pruned_screen(name, model, Xf, ctx, sc, k)
    else:
        rank: Callable[[torch.Tensor], torch.Tensor] = lambda v: v  # noqa: E731
        if ctx.cost is not None:
            seconds = Xf.new_tensor(ctx.cost.seconds(ctx.start, pool[idx]))
            screen_scale = "raw" if name in ("ucb", "ts") else ("log" if name != "variance" else "positive")
            ref = float(sc["best"][0]) if screen_scale == "raw" else 0.0
            rank = lambda v: per_cost(v, seconds, screen_scale, ref)  # noqa: E731
        scores = _screen_every_row(name, model, Xf, ctx, sc, k, rank)
    top = torch.topk(scores, k).indices.cpu().numpy()
    if name == "ts":
        return thompson_picks(ctx, pool[idx[top]], idx[top], q, builder)
    return _pool_greedy_mc(ctx, builder, idx[top], q)


def _pruned_screen(name: str, model, Xf: torch.Tensor, ctx: SearchContext, sc: dict, k: int) -> torch.Tensor:
    """Screen scores of every row, exact for the rows that can reach the best k and -inf for the rest.

    Every screen score grows with the objectives' std, so the score at the std's cheap upper
    bound (marginal_posterior(bound=True)) bounds it. Rows are scored exactly in the order of
    their bounds, in doubling blocks, until no unscored row's bound reaches the k-th best exact
    score: the same top k as scoring everything. On Hartmann6 pools of 65,536 rows, 1-2% of
    the rows could reach the best 256 at 50-1,000 observations. Without constraints: log
    P(feasible) is not monotone in the std.
    """
    s = ctx.settings
    mean, std_bound = marginal_posterior(model, Xf, chunk=chunk_rows(ctx), bound=True)
    bound = screen_scores(name, mean, std_bound, ctx.outcomes, **sc)
    order = torch.argsort(bound, descending=True)
    scores = torch.full_like(bound, -float("inf"))
    done, block = 0, max(4 * k, 1024)
    while done < len(order):
        rows = order[done : done + block]
        m, sd = marginal_posterior(model, Xf[rows], chunk=chunk_rows(ctx))
        scores[rows] = screen_scores(name, m, sd, ctx.outcomes, **sc)
        done, block = done + len(rows), 2 * block
        if done < len(order):
            kth = float(torch.topk(scores, k).values[-1])
            if float(bound[order[done]]) < kth - 1e-9 * (1.0 + abs(kth)):
                break
    return scores


def _screen_every_row(
    name: str, model, Xf: torch.Tensor, ctx: SearchContext, sc: dict, k: int, rank: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """rank(screen score) of every row (rank: non-decreasing, e.g. per_cost), with the same top k as float64.

    With pool_screen_float32, variances come from screen_posterior with a bound on each one's error;
    the rows whose score range under that bound reaches the k-th best lower end are rescored in
    float64. At least k rows score above that edge, so no row left in float32 can be in the top k.
    """
    chunk = chunk_rows(ctx)
    if not (ctx.settings.pool_screen_float32 and ctx.settings.fast_paths):
        mean, std = marginal_posterior(model, Xf, chunk=chunk)
        return rank(screen_scores(name, mean, std, ctx.outcomes, **sc))
    mean, std, rel = screen_posterior(model, Xf, chunk=chunk)
    low, high = score_range(name, mean, std * (1.0 - rel).clamp_min(0.0).sqrt(), std * (1.0 + rel).sqrt(), ctx.outcomes, sc)
    redo = torch.nonzero(rank(high) >= torch.topk(rank(low), k).values[-1]).squeeze(-1)
    scores = screen_scores(name, mean, std, ctx.outcomes, **sc)
    mean, std = marginal_posterior(model, Xf[redo], chunk=chunk)
    scores[redo] = screen_scores(name, mean, std, ctx.outcomes, **sc)
    return rank(scores)


def score_range(name: str, mean: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, outcomes: Outcomes, sc: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Least and greatest screen_scores over every std between lo and hi (N x m), at the same means.

    The objectives' part grows with their std (UCB, log EI, optimistic hypervolume); each
    constraint's log P(feasible) is monotone in its own std, so its extremes are at lo and hi.
    """
    free = dataclasses.replace(outcomes, constraints=())
    low, high = screen_scores(name, mean, lo, free, **sc), screen_scores(name, mean, hi, free, **sc)
    weight = float(sc["y_std"][outcomes.objective_index[0]]) if name in ("ucb", "ts") else 1.0  # as screen_scores
    for c in outcomes.constraints:
        one = dataclasses.replace(outcomes, constraints=(c,))
        a, b = log_prob_feasible(mean, lo, one), log_prob_feasible(mean, hi, one)
        low, high = low + weight * torch.minimum(a, b), high + weight * torch.maximum(a, b)
    return low, high


def _pool_greedy_mc(ctx: SearchContext, builder: AcquisitionBuilder, rows: np.ndarray, q: int) -> list[Pick]:
    """Greedy batch over pool rows with the MC acquisition, earlier picks becoming X_pending."""
    pool = ctx.space.pool
    picks: list[Pick] = []
    alive = np.ones(len(rows), dtype=bool)
    previous = ctx.start
    for _ in range(q):
        acqf = builder.build(ctx.pending_with(picks))
        values = torch.full((len(rows),), -float("inf"), dtype=ctx.fitted.train_X.dtype, device=ctx.fitted.train_X.device)
        live = np.flatnonzero(alive)
        scored = evaluate(acqf, pool[rows[live]], ctx, chunk=256)
        values[torch.as_tensor(live, device=values.device)] = torch.nan_to_num(scored, nan=-1e300, neginf=-1e300)
        utility, seconds = values, None
        if ctx.cost is not None:
            seconds = ctx.cost.seconds(previous, pool[rows])
            utility = per_cost(values, values.new_tensor(seconds), builder.scale, builder.reference)
            utility[torch.as_tensor(~alive, device=utility.device)] = -float("inf")
        i = int(torch.argmax(utility))
        if not alive[i]:
            break
        alive[i] = False
        picks.append(Pick(
            x=pool[rows[i]], value=float(values[i]), pool_index=int(rows[i]),
            utility=None if seconds is None else float(utility[i]), seconds=None if seconds is None else float(seconds[i]),
        ))
        previous = pool[rows[i]]
    return picks


def _pool_greedy_believer(
    ctx: SearchContext, idx: np.ndarray, Xf: torch.Tensor, q: int, sc: dict, builder: AcquisitionBuilder | None
) -> list[Pick]:
    """Greedy maximum-variance batch: each pick is added as a fantasy before scoring the next.

    Conditioning only lowers variances, so after the first full pass later picks re-score just
    the rows that started highest; a row outside them cannot win while the shortlist's best
    stays above the shortlist's entry bar (otherwise the whole pool is re-scored). Exact up to
    the fantasy model's re-standardisation. With travel costs every pass scores every row.
    """
    pool = ctx.space.pool
    picks: list[Pick] = []
    alive = torch.ones(len(idx), dtype=torch.bool, device=Xf.device)
    previous = ctx.start
    rows = torch.arange(len(idx), device=Xf.device)  # rows scored in this pass
    bar = -float("inf")
    for _ in range(q):
        pend = ctx.pending_with(picks)
        model = with_fantasies(ctx.fitted, pend) if pend is not None else ctx.fitted.model
        mean, std = marginal_posterior(model, Xf[rows], chunk=chunk_rows(ctx))
        values = torch.full((len(idx),), -float("inf"), dtype=Xf.dtype, device=Xf.device)
        values[rows] = screen_scores("variance", mean, std, ctx.outcomes, **sc)
        utility, seconds = values.clone(), None
        if ctx.cost is not None:
            seconds = ctx.cost.seconds(previous, pool[idx])
            utility = per_cost(values, values.new_tensor(seconds), "positive")
        utility[~alive] = -float("inf")
        i = int(torch.argmax(utility))
        if len(rows) < len(idx) and float(values[i]) < bar:
            rows = torch.arange(len(idx), device=Xf.device)  # the bound failed: score everything again
            mean, std = marginal_posterior(model, Xf, chunk=chunk_rows(ctx))
            values = screen_scores("variance", mean, std, ctx.outcomes, **sc)
            utility = values.clone()
            utility[~alive] = -float("inf")
            i = int(torch.argmax(utility))
        if not alive[i]:
            break
        alive[i] = False
        picks.append(Pick(
            x=pool[idx[i]], value=float(values[i]), pool_index=int(idx[i]),
            utility=None if seconds is None else float(utility[i]), seconds=None if seconds is None else float(seconds[i]),
        ))
        previous = pool[idx[i]]
        keep = min(len(idx), max(8 * ctx.settings.pool_shortlist, 2048))
        if ctx.cost is None and len(rows) == len(idx) and keep < len(idx):
            top = torch.topk(values, keep)
            rows, bar = top.indices, float(top.values[-1])
    return picks
