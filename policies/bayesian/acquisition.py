"""What a measurement is worth: acquisition functions over the surrogate, outcome constraints, cost.

Every acquisition here scores candidates `batch x q x d` (BoTorch's convention) in a space
where larger is better:

- `qlognei`  qLogNoisyExpectedImprovement; outcome constraints as BoTorch constraint callables.
             Without constraints, the same quantity (pending points in the baseline) from the
             cached factor (cached_nei.CachedLogNEI), 3.6x cheaper per evaluation.
- `logei`    analytic LogEI over the best predicted value (+ log P(feasible)), the fast choice for
             exact or low-noise measurements (MarginalLogEI).
- `ucb`      qUpperConfidenceBound; outcome constraints as a log-probability-of-feasibility penalty.
- `ts`       Thompson sampling: joint posterior draws over a candidate set (see `thompson_draws`).
- `variance` pure exploration, for mapping: the posterior standard deviation of the objectives,
             each in units of its observed spread.
- `qlognehvi` qLogNoisyExpectedHypervolumeImprovement (several objectives), with constraints.

Pending trials enter the MC acquisitions as `X_pending`, and the analytic / sample-based ones
through a "kriging believer" model (models.with_fantasies). `screen_scores` gives cheap analytic
stand-ins computed from marginal means and spreads, used to rank pools of 10^5 candidates
before the MC acquisition looks at a shortlist. `per_cost` turns any of them into value per second.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import AnalyticAcquisitionFunction, LogProbabilityOfFeasibility
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.monte_carlo import qUpperConfidenceBound
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
from botorch.acquisition.objective import GenericMCObjective
from botorch.models.model import Model
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.multi_objective.box_decompositions.non_dominated import NondominatedPartitioning
from botorch.utils.probability.utils import log_ndtr
from botorch.utils.transforms import t_batch_mode_transform
from linear_operator.utils.warnings import NumericalWarning
from torch import Tensor

from policies.base import Problem
from policies.bayesian import fast_paths, fused_kernel
from policies.bayesian.cached_nei import CachedLogNEI, supports_cached_nei
from policies.bayesian.models import FittedModel, train_marginals, with_fantasies
from policies.bayesian.posterior import factorize, gp_marginals_any
from policies.pareto import pareto_mask

MC_ACQUISITIONS = ("qlognei", "ucb", "qlognehvi")
BASELINE_MAX = 64  # most observed points a noisy acquisition integrates over
LOG_SCALE = ("qlognei", "logei", "qlognehvi")


@dataclass(frozen=True)
class Outcomes:
    """How model outputs map onto the problem: objectives (with directions) and outcome constraints.

    metrics: model outputs, objectives first, then metrics that only appear in constraints.
    constraints: (output index, op, bound) with op '<=' or '>='.
    """

    metrics: tuple[str, ...]
    objective_index: tuple[int, ...]
    signs: tuple[float, ...]
    constraints: tuple[tuple[int, str, float], ...]

    @staticmethod
    def from_problem(problem: Problem) -> "Outcomes":
        metrics: list[str] = []
        for name in [o.metric for o in problem.objectives] + [c.metric for c in problem.constraints]:
            if name not in metrics:
                metrics.append(name)
        return Outcomes(
            metrics=tuple(metrics),
            objective_index=tuple(metrics.index(o.metric) for o in problem.objectives),
            signs=tuple(o.sign() for o in problem.objectives),
            constraints=tuple((metrics.index(c.metric), c.op, float(c.bound)) for c in problem.constraints),
        )

    @property
    def multi(self) -> bool:
        return len(self.objective_index) > 1

    def objective_values(self, Y: Tensor) -> Tensor:
        """Objectives, larger-is-better, from outputs Y (... x m): ... x k."""
        return Y[..., list(self.objective_index)] * Y.new_tensor(self.signs)

    def violation(self, Y: Tensor) -> Tensor:
        """Total constraint violation (>= 0; 0 = feasible) of outputs Y (... x m): shape ...."""
        total = torch.zeros(Y.shape[:-1], dtype=Y.dtype, device=Y.device)
        for j, op, bound in self.constraints:
            slack = Y[..., j] - bound if op == "<=" else bound - Y[..., j]
            total = total + slack.clamp_min(0)
        return total


def constraint_callables(outcomes: Outcomes) -> list[Callable[[Tensor], Tensor]]:
    """BoTorch constraint callables: samples (... x m) -> (...), feasible where <= 0."""

    def make(j: int, op: str, bound: float) -> Callable[[Tensor], Tensor]:
        if op == "<=":
            return lambda Z: Z[..., j] - bound
        return lambda Z: bound - Z[..., j]

    return [make(j, op, b) for j, op, b in outcomes.constraints]


def analytic_bounds(outcomes: Outcomes) -> dict[int, tuple[float | None, float | None]]:
    """Outcome constraints as BoTorch's analytic {output: (lower, upper)} bounds (two on one metric merge)."""
    bounds: dict[int, list[float | None]] = {}
    for j, op, b in outcomes.constraints:
        lo, hi = bounds.setdefault(j, [None, None])
        if op == "<=":
            bounds[j][1] = b if hi is None else min(hi, b)
        else:
            bounds[j][0] = b if lo is None else max(lo, b)
    return {j: (lo, hi) for j, (lo, hi) in bounds.items()}


class FeasibilityWeighted(AcquisitionFunction):
    """acqf(X) + weight * sum over the q points of log P(outcome constraints hold).

    For acquisitions in objective units (UCB): a candidate that is surely feasible keeps its
    value, one that is feasible with probability 1/e pays `weight` (one spread of the
    objective), and a surely infeasible one is never chosen. Unlike a ConstrainedMCObjective
    inside qUCB, uncertainty about feasibility does not read as optimism.
    """

    def __init__(self, acqf: AcquisitionFunction, log_pof: AcquisitionFunction, weight: float):
        super().__init__(model=acqf.model)
        self.acqf, self.log_pof, self.weight = acqf, log_pof, weight

    def set_X_pending(self, X_pending: Tensor | None = None) -> None:
        self.acqf.set_X_pending(X_pending)

    def forward(self, X: Tensor) -> Tensor:
        """X: b x q x d -> b."""
        b, q, d = X.shape[0], X.shape[-2], X.shape[-1]
        penalty = self.log_pof(X.reshape(-1, 1, d)).reshape(b, q).sum(-1)
        return self.acqf(X) + self.weight * penalty


def _scalar_objective(outcomes: Outcomes) -> GenericMCObjective:
    j, s = outcomes.objective_index[0], outcomes.signs[0]
    return GenericMCObjective(lambda Z, X=None: s * Z[..., j])


class StandardizedPosteriorStd(AnalyticAcquisitionFunction):
    """Sum over objectives of the posterior standard deviation in units of each metric's spread.

    Pure exploration (mapping): its maximiser is where the model knows least. q = 1.
    """

    def __init__(self, model: Model, outputs: list[int], scale: Tensor):
        super().__init__(model=model, allow_multi_output=True)
        self.outputs = outputs
        self.register_buffer("scale", scale)

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: Tensor) -> Tensor:
        """X: b x 1 x d -> b."""
        posterior = self.model.posterior(X)
        std = posterior.variance.clamp_min(1e-18).sqrt().squeeze(-2)  # b x m
        return (std[..., self.outputs] / self.scale).sum(-1)


class MarginalLogEI(AcquisitionFunction):
    """Analytic log expected improvement of the objective over `best_f`, plus log P(outcome constraints hold).

    The `logei` acquisition: BoTorch's LogExpectedImprovement values, from the marginal posterior
    with the training covariance factored once (posterior.py), which skips gpytorch's prediction
    machinery and costs 2-5x less per evaluation than an MC acquisition. Treats the best
    predicted value as known, so it suits exact or low-noise measurements; q = 1 per t-batch.
    """

    def __init__(self, model: Model, outcomes: Outcomes, best_f: float):
        super().__init__(model=model)
        self.outcomes, self.best_f = outcomes, best_f
        factorize(model)

    def forward(self, X: Tensor) -> Tensor:
        """X: b x 1 x d -> b."""
        if X.shape[-2] != 1:
            raise ValueError("MarginalLogEI takes one point per t-batch")
        mean, std = gp_marginals_any(self.model, X.squeeze(-2))
        j, sign = self.outcomes.objective_index[0], self.outcomes.signs[0]
        sigma = std[..., j].clamp_min(1e-12)
        log_ei = fast_paths.log_ei((sign * mean[..., j] - self.best_f) / sigma) + sigma.log()
        return log_ei + log_prob_feasible(mean, std, self.outcomes)


class AcquisitionBuilder:
    """Builds the acquisition for given pending points: the same MC object re-pointed, or a believer model.

    `scale` says how values combine with cost: 'log' (log values), 'positive' (values > 0) or
    'raw' (values in objective units; compared with `reference`, the best predicted value so far).
    """

    def __init__(
        self,
        name: str,
        fitted: FittedModel,
        outcomes: Outcomes,
        *,
        mc_samples: int,
        seed: int,
        beta: float,
        ref_point: Tensor | None = None,
        standardize_objectives: bool = True,
        fast_paths: bool = True,
    ):
        self.name = name
        self.fast_paths = fast_paths  # False: BoTorch's qLogNEI instead of CachedLogNEI
        self.standardize_objectives = standardize_objectives
        self.fitted = fitted
        self.outcomes = outcomes
        self.mc_samples = mc_samples
        self.seed = seed
        self.beta = beta
        self.ref_point = ref_point
        self._mc: AcquisitionFunction | None = None
        self._best_f: float | None = None
        self.scale = "log" if name in LOG_SCALE else ("positive" if name == "variance" else "raw")
        self.reference = 0.0
        if self.scale == "raw":
            mean, _ = train_marginals(fitted)
            self.reference = float(outcomes.objective_values(mean)[..., 0].max())

    def build(self, X_pending: Tensor | None, q: int = 1) -> AcquisitionFunction:
        """The acquisition with `X_pending` (k x d) treated as running trials, for q points per t-batch."""
        if self.name == "qlognei" and q == 1 and self._cached_nei_applies():
            # Pending points join the baseline, as in BoTorch's (incremental) qLogNEI.
            X_baseline = self.baseline() if X_pending is None else torch.cat([self.baseline(), X_pending])
            return CachedLogNEI(self.fitted.model, X_baseline, self.outcomes.signs[0], self.mc_samples, self.seed)
        if self.name in MC_ACQUISITIONS:
            if self._mc is None:
                self._mc = self._make_mc(X_pending)
            else:
                self._mc.set_X_pending(X_pending)
            return self._mc
        model = self.fitted.model if X_pending is None else with_fantasies(self.fitted, X_pending)
        if self.name == "logei":
            if self._best_f is None:
                mean, std = train_marginals(self.fitted)
                self._best_f = float(best_observed(mean, std, self.outcomes)[0])
            return MarginalLogEI(model, self.outcomes, self._best_f)
        if self.name == "variance":
            outputs = list(self.outcomes.objective_index)
            return StandardizedPosteriorStd(model, outputs, self.fitted.y_std[outputs])
        raise ValueError(f"{self.name!r} is not optimised as an acquisition function")

    def _cached_nei_applies(self) -> bool:
        """qLogNEI without outcome constraints, on one single-output GP: cached_nei.py."""
        return (self.fast_paths and not self.outcomes.constraints and not self.outcomes.multi
                and supports_cached_nei(self.fitted.model))

    def _make_mc(self, X_pending: Tensor | None) -> AcquisitionFunction:
        model, outcomes = self.fitted.model, self.outcomes
        sampler = SobolQMCNormalSampler(torch.Size([self.mc_samples]), seed=self.seed)
        constraints = constraint_callables(outcomes) or None
        if self.name == "qlognei":
            return qLogNoisyExpectedImprovement(
                model, X_baseline=self.baseline(), sampler=sampler, objective=_scalar_objective(outcomes),
                constraints=constraints, X_pending=X_pending, prune_baseline=True,
            )
        if self.name == "ucb":
            ucb = qUpperConfidenceBound(model, beta=self.beta, sampler=sampler, objective=_scalar_objective(outcomes), X_pending=X_pending)
            if not constraints:
                return ucb
            weight = float(self.fitted.y_std[outcomes.objective_index[0]])
            return FeasibilityWeighted(ucb, LogProbabilityOfFeasibility(model, analytic_bounds(outcomes)), weight)
        if self.name == "qlognehvi":
            fused_kernel.prepare()  # once per process; the policy has already reported or refused a failure
            weights = self.fitted.train_X.new_tensor(outcomes.signs)
            ref_point = self.ref_point
            if self.standardize_objectives:  # BoTorch's smoothing temperatures then act on unit-spread objectives, as in Ax
                spread = self.fitted.y_std[list(outcomes.objective_index)].to(weights)
                weights, ref_point = weights / spread, ref_point / spread
            objective = WeightedMCMultiOutputObjective(
                weights=weights, outcomes=list(outcomes.objective_index), num_outcomes=len(outcomes.metrics),
            )
            return qLogNoisyExpectedHypervolumeImprovement(
                model, ref_point=ref_point, X_baseline=self.baseline(), sampler=sampler,
                objective=objective, constraints=constraints, X_pending=X_pending, prune_baseline=True,
            )
        raise ValueError(f"unknown MC acquisition {self.name!r}")

    def baseline(self, k: int = BASELINE_MAX) -> Tensor:
        """The observed points that could still be the best (X_baseline of the noisy acquisitions): k' x d.

        BoTorch prunes X_baseline itself by sampling the joint posterior at every point, which
        costs ~0.7 s at n = 1000; this keeps at most k points first, ranked by an optimistic
        (mean + 3 std) objective among points likely to be feasible, or by Pareto rank of the
        predicted means for several objectives.
        """
        X = self.fitted.train_X
        if len(X) <= k:
            return X
        mean, std = train_marginals(self.fitted)
        obj = self.outcomes.objective_values(mean)
        penalty = log_prob_feasible(mean, std, self.outcomes).clamp_max(0.0) * 1e3
        if not self.outcomes.multi:
            score = obj[:, 0] + 3.0 * std[:, self.outcomes.objective_index[0]] + penalty
            return X[torch.topk(score, k).indices]
        rank = torch.full((len(X),), float(len(X)), dtype=X.dtype, device=X.device)
        left = torch.ones(len(X), dtype=torch.bool, device=X.device)
        level = 0
        while left.any() and int((rank < len(X)).sum()) < k:
            idx = left.nonzero().squeeze(-1)
            front = torch.as_tensor(pareto_mask(obj[idx].cpu().numpy(), [True] * obj.shape[1]), device=X.device)
            rank[idx[front]] = level
            left[idx[front]] = False
            level += 1
        return X[torch.topk(-(rank - penalty), k).indices]


# ---------------------------------------------------------------------------------------------
# cheap analytic scores from marginal means and spreads (pool screening)


def log_prob_feasible(mean: Tensor, std: Tensor, outcomes: Outcomes) -> Tensor:
    """log P(all outcome constraints hold), outputs independent: N x m, N x m -> N."""
    out = torch.zeros(mean.shape[:-1], dtype=mean.dtype, device=mean.device)
    for j, op, bound in outcomes.constraints:
        z = (bound - mean[..., j]) / std[..., j].clamp_min(1e-12)
        out = out + log_ndtr(z if op == "<=" else -z)
    return out


def best_observed(mean: Tensor, std: Tensor, outcomes: Outcomes) -> Tensor:
    """Best predicted objective (larger-is-better, k objectives) among points predicted feasible: k."""
    obj = outcomes.objective_values(mean)
    if outcomes.constraints:
        ok = log_prob_feasible(mean, std, outcomes) >= math.log(0.5)
        if ok.any():
            obj = obj[ok]
    return obj.max(dim=0).values


def nondominated_cells(front: Tensor, ref_point: Tensor) -> Tensor:
    """Boxes (2 x C x k) covering the region not dominated by `front` (n x k, larger is better) above ref_point."""
    part = NondominatedPartitioning(ref_point=ref_point, Y=front)
    return part.get_hypercell_bounds()


def optimistic_hvi(U: Tensor, cells: Tensor) -> Tensor:
    """Hypervolume each point of U (N x k) would add to the front whose non-dominated cells are given: N."""
    lower, upper = cells[0], cells[1]  # C x k each
    top = torch.minimum(U.unsqueeze(-2), upper)  # N x C x k
    return (top - lower).clamp_min(0).prod(-1).sum(-1)


def screen_scores(
    name: str,
    mean: Tensor,
    std: Tensor,
    outcomes: Outcomes,
    *,
    best: Tensor,
    beta: float,
    y_std: Tensor,
    cells: Tensor | None = None,
) -> Tensor:
    """Analytic stand-in for acquisition `name` at N points with marginals mean, std (N x m): N.

    qlognei -> log EI (+ log P(feasible)); ucb / ts -> UCB (beta = 9 for ts) + spread * log
    P(feasible), as FeasibilityWeighted; variance -> standardised std; qlognehvi -> log of the hypervolume
    improvement of the optimistic (mean + 2 std) point (+ log P(feasible)).
    """
    obj_mean = outcomes.objective_values(mean)
    obj_std = std[..., list(outcomes.objective_index)]
    lpf = log_prob_feasible(mean, std, outcomes)
    if name == "variance":
        return (obj_std / y_std[list(outcomes.objective_index)]).sum(-1)
    if name in ("ucb", "ts"):
        b = 9.0 if name == "ts" else beta
        ucb = obj_mean[..., 0] + math.sqrt(b) * obj_std[..., 0]
        return ucb + y_std[outcomes.objective_index[0]] * lpf
    if name in ("qlognei", "logei"):
        sigma = obj_std[..., 0].clamp_min(1e-12)
        u = (obj_mean[..., 0] - best[0]) / sigma
        return fast_paths.log_ei(u) + sigma.log() + lpf
    if name == "qlognehvi":
        hvi = optimistic_hvi(obj_mean + 2.0 * obj_std, cells)
        return hvi.clamp_min(1e-300).log() + lpf
    raise ValueError(f"unknown acquisition {name!r}")


def thompson_draws(model: Model, X: Tensor, num: int, outcomes: Outcomes) -> Tensor:
    """num joint posterior draws of the (constrained) objective at candidates X (C x d): num x C.

    Infeasible draws score below every feasible one, ordered by how badly they violate.
    Uses the global torch RNG (the policy seeds it).
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)  # jitter on near-duplicate candidates is expected
        samples = model.posterior(X).rsample(torch.Size([num]))  # num x C x m
    value = outcomes.objective_values(samples)[..., 0]
    if outcomes.constraints:
        violation = outcomes.violation(samples)
        value = torch.where(violation > 0, -1e12 - violation, value)
    return value


def per_cost(values: Tensor, seconds: Tensor, scale: str, reference: float = 0.0) -> Tensor:
    """Acquisition value per second of travel + dwell, as a log utility (larger is better).

    'log' values are log-acquisitions (subtract log seconds); 'positive' ones are divided;
    'raw' ones (UCB, Thompson draws) count only their improvement over `reference`.
    """
    log_s = seconds.clamp_min(1e-9).log()
    if scale == "log":
        return values - log_s
    if scale == "positive":
        return values.clamp_min(1e-300).log() - log_s
    return (values - reference).clamp_min(1e-12).log() - log_s
