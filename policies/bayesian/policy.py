"""BotorchPolicy: Sobol points first, then a GP surrogate, an acquisition and a search, composed.

    propose(history, n, pending)
      1. fewer than `initial` trials issued       -> Sobol points (SobolPolicy), reason["initial_design"]
      2. fit the surrogate (models.fit_model)     -> on failure: jitter, then Sobol with reason["fallback"]
      3. build the acquisition (acquisition.py)   -> pending trials as X_pending / fantasies
      4. search (search.py): unit cube or pool    -> n points as one greedy (or joint) batch
      5. optionally order the batch as a short route (route.py)

Stateless for persistence: a proposal depends on (problem, options, history, pending) and on a
seed drawn from problem.seed, len(history) and len(pending). The in-memory hyperparameter cache
only warm-starts fits (set `warm_start: false` for bit-for-bit replays across restarts).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from typing import Any, Iterator, Literal

import numpy as np
import torch
from botorch.utils.sampling import manual_seed
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from threadpoolctl import ThreadpoolController

from policies.base import History, PolicyFallbackError, Problem, Proposal, strict_mode
from policies.baselines import SobolPolicy
from policies.bayesian import fast_paths, fused_kernel
from policies.bayesian.acquisition import AcquisitionBuilder, Outcomes
from policies.bayesian.models import (
    FittedModel,
    HyperparameterCache,
    ModelSettings,
    TrainingData,
    fit_model,
    marginal_posterior,
    single_gp,
)
from policies.bayesian.priors import LENGTHSCALE_POOLING
from policies.bayesian.route import TravelCost, order_route
from policies.bayesian.pool_search import search_pool
from policies.bayesian.search import ACQ_FTOL, Pick, SearchContext, SearchSettings, search_space
from policies.bayesian.winsorize import winsorize
from policies.pareto import pareto_mask, reference_point

logger = logging.getLogger(__name__)

# Failed trials (their x) are treated as pending so that the acquisition looks elsewhere; the most recent ones.
MAX_FAILED_AVOIDED = 32
# Fits on fewer points than this start from BoTorch's defaults when one metric is modelled.
WARM_START_AFTER = 30
# Acquisition search effort. With several objectives, Ax's (restarts, raw samples, iterations, scipy's
# tolerance): there it measured at least as good (benchmarks/README.md), and building qLogNEHVI
# costs more than the search. With one objective, less, for proposals under 0.07 s.
SINGLE_RESTARTS, SINGLE_RAW_SAMPLES, SINGLE_MAXITER = 12, 512, 100
MULTI_RESTARTS, MULTI_RAW_SAMPLES, MULTI_MAXITER = 20, 1024, 200


class BotorchOptions(BaseModel):
    """The `policy:` section for `kind: botorch` (every key optional)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["botorch"] = "botorch"
    acquisition: Literal["qlognei", "logei", "ucb", "ts", "variance", "qlognehvi"] = Field(
        "qlognei", description="qlognei (default; becomes qlognehvi with several objectives), logei (analytic, faster; "
        "for exact or low-noise measurements), ucb, ts, variance, qlognehvi"
    )
    beta: float = Field(2.0, gt=0, description="UCB exploration weight (std multiplier sqrt(beta))")
    initial: int | None = Field(None, ge=0, description="initial-design points (the centre, then Sobol) before the model; default max(d, 6), which measured better than 2d + 2 "
                                "(benchmarks/README.md)")
    center: bool | None = Field(
        None, description="make the centre of the box (or the pool row nearest it) the first point of the initial "
        "design, as Ax does: a nominal setting that a scientist would measure anyway (benchmarks/README.md). Default: "
        "on for continuous and mixed spaces, off for pools, where the centre is no nominal setting and would make "
        "every seed's first pick the same row",
    )
    batch: int = Field(1, ge=1, description="preferred batch size; propose(n=...) decides the actual size")
    batch_mode: Literal["sequential", "joint"] = Field("sequential", description="greedy q-batch or joint optimisation")
    mc_samples: int = Field(128, ge=8, description="quasi-MC samples of MC acquisitions")
    num_restarts: int | None = Field(
        None, ge=1, description="acquisition optimiser restarts (default 12 with one objective; 20 with several, as "
        "Ax: with Ax's other search settings, better on 14 of 20 VehicleSafety seeds, Wilcoxon p = 0.03; "
        "benchmarks/README.md)",
    )
    raw_samples: int | None = Field(
        None, ge=8, description="points scored to pick the restarts' starting points (default 512; 1,024 with several objectives)",
    )
    maxiter: int | None = Field(None, ge=1, description="optimiser iterations per restart (default 100; 200 with several objectives)")
    acq_ftol: float | Literal["auto"] | None = Field(
        "auto", description="relative change of the acquisition value at which a restart stops (None: scipy's 2.2e-9; "
        "auto: 1e-6 with one objective, scipy's with several, as Ax)",
    )
    fit_max: int = Field(256, ge=8, description="most points the hyperparameters are fitted on")
    condition_max: int = Field(512, ge=8, description="most points the posterior is conditioned on")
    fit_maxiter: int = Field(200, ge=1, description="L-BFGS iterations of a hyperparameter fit")
    refit_every: int | None = Field(
        None, ge=1,
        description="optimise hyperparameters every k new observations, else reuse the cached ones; "
        "default 1 up to fit_max observations, then about n / fit_max",
    )
    warm_start: bool = Field(True, description="start each fit from the last hyperparameters (in memory)")
    warm_start_after: int | None = Field(
        None, ge=0, description="warm-start only fits on this many points or more; default 30 with one modelled "
        "metric, fit_max with several (objectives or constraint metrics). A warm start from the first few points can "
        "stay in a poor optimum (DTLZ2 hypervolume after 40: 0.12 always warm, 0.25 warm from 30), and the batched "
        "fit of several metrics did better cold throughout (DTLZ2, 4 of 4 seeds; benchmarks/README.md)",
    )
    winsorize: bool = Field(
        False, description="clip each metric's far tail on its bad side (Tukey's fence, never inside a threshold or "
        "bound) before fitting, as Ax does, so that a few very poor measurements do not flatten the model",
    )
    standardize_objectives: bool = Field(
        True, description="qlognehvi: measure hypervolume in units of each objective's observed spread (as Ax, which "
        "standardises outcomes before BoTorch sees them), so that BoTorch's fixed smoothing temperatures mean the same "
        "for every objective and the choice of units (g or kg) changes nothing (measured: at least as good as metric "
        "units on VehicleSafety, DTLZ2 and BraninCurrin over 20 seeds; benchmarks/README.md)",
    )
    lengthscale_pooling: float | Literal["auto"] | None = Field(
        "auto", description="sd of the GP's log length scales about their mean (a Gaussian prior on each deviation, "
        "on top of BoTorch's LogNormal): near-isotropic with few points, ARD once the data shows the inputs differ; "
        "null: BoTorch's independent ARD prior; auto: 0.5 with one modelled metric (AutoAM's replay +0.087 "
        "mean Top%, level elsewhere), null with several (pooled ended lower on 7 of 10 VehicleSafety seeds; "
        "benchmarks/README.md). Continuous spaces only",
    )
    fixed_noise: bool = Field(True, description="use reported standard errors as fixed noise when every trial has them")
    avoid_failed: bool = Field(True, description="steer away from the settings of failed trials")
    pool_chunk: int | None = Field(None, ge=64, description="pool rows scored per chunk (default: a 2 MiB kernel matrix per chunk)")
    pool_shortlist: int = Field(256, ge=1, description="pool rows the MC acquisition re-scores after screening")
    pool_screen_float32: bool = Field(
        True, description="screen a float64 pool's variances with a float32 product that bounds its own rounding "
        "error per row; rows whose bound could move them into the shortlist are redone in float64, so the shortlist "
        "is float64's (used with outcome constraints or travel costs; benchmarks/README.md)",
    )
    ts_candidates: int = Field(1024, ge=16, description="candidates per Thompson draw")
    cost_aware: Literal["none", "divide", "route", "both"] = Field(
        "none", description="divide: value per second of travel + dwell; route: order each batch as a short path"
    )
    dwell: float = Field(1.0, ge=0, description="seconds a measurement takes, added to travel when dividing")
    fast_paths: bool = Field(
        True, description="use aec's hand-written fast paths (closed-form GP fit, cached qLogNEI, pruned and float32 "
        "pool screens); false (or AEC_FAST_PATHS=0 in the environment) uses BoTorch's own routines throughout, "
        "for bug reports. reason['fast_paths'] says which ran",
    )
    dtype: Literal["float64", "float32"] = "float64"
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available)")
    num_threads: int | None = Field(
        1, ge=1,
        description="torch and BLAS threads while proposing (None: leave them as they are). GP work at these sizes "
        "is per-call overhead; on a busy machine extra threads spin at barriers and run ~10x slower",
    )

    @field_validator("acq_ftol", "lengthscale_pooling", mode="before")
    @classmethod
    def _positive_auto_or_null(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None or v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{info.field_name} must be a positive number, 'auto' or null, got {v!r}")
        return float(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {v!r}")
        return v


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (problem seed, history length, pending count ...)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's and the BLAS's threads limited to n: scipy's L-BFGS-B calls OpenBLAS on 10-dim vectors,
    and with the other core busy its idle threads spin, which made each call ~3 ms instead of ~10 us."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with _blas_pools().limit(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(old)


def _cuda_present(device: str) -> bool:
    """Whether torch can place tensors on `device` ('cuda' or 'cuda:N')."""
    if not torch.cuda.is_available():
        return False
    index = device.partition(":")[2]
    return not index or int(index) < torch.cuda.device_count()


@functools.lru_cache(maxsize=1)
def _blas_pools() -> ThreadpoolController:
    """The loaded thread pools, found once (threadpool_limits looks them up anew: ~1.4 ms a call).

    First called inside propose, after torch, numpy and scipy have loaded their BLAS."""
    return ThreadpoolController()


class BotorchPolicy:
    """Bayesian optimisation with BoTorch: single or multi-objective, constrained, batch, pools, cost-aware."""

    Options = BotorchOptions
    has_fallbacks = True  # make_policy passes the campaign's strict setting

    def __init__(self, problem: Problem, options: BotorchOptions | None = None, *, strict: bool | None = None):
        self.problem = problem
        self.strict = strict_mode(strict)
        self.space = problem.space
        self.options = opts = options or BotorchOptions()
        self.outcomes = Outcomes.from_problem(problem)
        if not problem.objectives:
            raise ValueError("the botorch policy needs at least one objective")
        name = opts.acquisition
        if self.outcomes.multi:
            if name in ("logei", "ucb", "ts"):
                raise ValueError(f"acquisition {name!r} takes one objective; with several use qlognehvi (default) or variance")
            name = "qlognehvi" if name == "qlognei" else name
        elif name == "qlognehvi":
            raise ValueError("qlognehvi needs two or more objectives; use qlognei for one")
        self.acquisition = name
        d = self.space.dim
        self.initial = opts.initial if opts.initial is not None else max(d, 6)
        device = opts.device
        self.device_fallback: str | None = None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not _cuda_present(device):
            self.device_fallback = f"device {device} asked for but not present (torch sees {torch.cuda.device_count()} CUDA devices); proposing on the CPU"
            if self.strict:
                raise PolicyFallbackError("botorch", self.device_fallback)
            logger.warning("botorch policy: %s", self.device_fallback)
            device = "cpu"
        self.fast_paths = opts.fast_paths and fast_paths.env_enabled()
        if self.strict and self.fast_paths and fast_paths.MISSING:
            raise PolicyFallbackError("botorch", "fast paths " + fast_paths.note(True))
        if self.outcomes.multi:
            fused_kernel.prepare_for("botorch", self.strict)
        self.model_settings = ModelSettings(
            fit_max=opts.fit_max, condition_max=max(opts.condition_max, opts.fit_max), refit_every=opts.refit_every,
            warm_start=opts.warm_start, warm_start_after=self._warm_start_after(), fit_maxiter=opts.fit_maxiter,
            cat_dims=tuple(i for i, c in enumerate(self.space.categorical) if c),
            dtype=torch.float64 if opts.dtype == "float64" else torch.float32, device=torch.device(device),
            fast_paths=self.fast_paths, lengthscale_pooling=self._lengthscale_pooling(),
        )
        self.search_settings = SearchSettings(
            num_restarts=opts.num_restarts or (MULTI_RESTARTS if self.outcomes.multi else SINGLE_RESTARTS),
            raw_samples=opts.raw_samples or (MULTI_RAW_SAMPLES if self.outcomes.multi else SINGLE_RAW_SAMPLES),
            maxiter=opts.maxiter or (MULTI_MAXITER if self.outcomes.multi else SINGLE_MAXITER),
            ftol=(None if self.outcomes.multi else ACQ_FTOL) if opts.acq_ftol == "auto" else opts.acq_ftol,
            batch_mode=opts.batch_mode, pool_chunk=opts.pool_chunk, pool_shortlist=opts.pool_shortlist,
            pool_screen_float32=opts.pool_screen_float32,
            ts_candidates=opts.ts_candidates, beta=opts.beta, fast_paths=self.fast_paths,
        )
        self.travel = None
        if problem.move_cost is not None and opts.cost_aware != "none":
            self.travel = TravelCost(problem.move_cost, opts.dwell)
        self._cache = HyperparameterCache()  # an optimisation only (warm starts)
        self._sobol = SobolPolicy(problem)

    def _lengthscale_pooling(self) -> float | None:
        """The sd the GPs pool their log length scales with; None: BoTorch's independent prior (and on mixed spaces)."""
        pooling, mixed = self.options.lengthscale_pooling, any(self.space.categorical)
        if pooling == "auto":
            return LENGTHSCALE_POOLING if len(self.outcomes.metrics) == 1 and not mixed else None
        if pooling is not None and mixed:
            raise ValueError("lengthscale_pooling applies to continuous spaces; this one has choice parameters, whose "
                             "MixedSingleTaskGP keeps its own kernel (use auto or null)")
        return pooling

    def _warm_start_after(self) -> int:
        if self.options.warm_start_after is not None:
            return self.options.warm_start_after
        return WARM_START_AFTER if len(self.outcomes.metrics) == 1 else self.options.fit_max

    # -----------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Pay the model stack's one-time costs now (torch imports sympy lazily on the first GP: ~0.5 s), not at
        the first model proposal, which idle workers may be waiting for. Builds a 3-point GP; changes no state."""
        s = self.model_settings
        X = torch.linspace(0, 1, 3 * self.space.dim, dtype=s.dtype, device=s.device).reshape(3, self.space.dim)
        model = single_gp(X, X.sum(-1, keepdim=True), None, ())
        with torch.no_grad():
            model.posterior(X[:1]).mean.sum().item()

    def degradations(self) -> list[str]:
        """Standing reasons this policy runs other than at its best (fast paths off or missing), for the progress line."""
        note = fast_paths.note(self.options.fast_paths)
        kernel = fused_kernel.note() if self.outcomes.multi else None
        return ([] if note == "on" else [f"fast paths {note}"]) + ([kernel] if kernel else [])

    def propose(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        """n proposals (fewer when a pool runs out), avoiding pending trials.

        Never raises on bad data unless strict: a failure becomes Sobol points whose
        reason["fallback"] says why; in strict mode it raises PolicyFallbackError instead."""
        pending = list(pending or [])
        if n <= 0:
            return []
        seed = derive_seed(self.problem.seed, len(history), len(pending))
        issued = len(history) + len(pending)
        if issued < self.initial:
            return self._sobol_points(history, n, pending, {"initial_design": True, "initial": self.initial})
        data = self._training_data(history)
        counts = np.isfinite(data.Y).sum(axis=0)
        if (counts < 2).any():
            short = [m for m, c in zip(data.metrics, counts) if c < 2]
            if pending and len(history) < self.initial:  # more workers than the design: its results are still coming
                return self._sobol_points(history, n, pending, {
                    "initial_design": True, "initial": self.initial,
                    "extended": f"waiting for {len(pending)} pending trial(s): too few completed observations of {short} yet"})
            return self._fall_back(history, n, pending, f"too few completed observations of {short} to fit a model")
        try:
            with _threads(self.options.num_threads), manual_seed(seed):
                out = self._model_points(history, n, pending, data, seed)
        except PolicyFallbackError:
            raise
        except Exception as exc:  # noqa: BLE001 - a proposal must always come back; the reason says why
            if self.strict:
                raise PolicyFallbackError("botorch", f"{type(exc).__name__}: {exc}") from exc
            logger.warning("botorch policy fell back to Sobol points: %s: %s", type(exc).__name__, exc, exc_info=True)
            return self._fall_back(history, n, pending, f"{type(exc).__name__}: {exc}", logged=True)
        if self.device_fallback:
            for p in out:
                p.reason.setdefault("fallback", self.device_fallback)
        return out

    def _fall_back(self, history: History, n: int, pending: list[Proposal], why: str, logged: bool = False) -> list[Proposal]:
        """Sobol points whose reason says why the model was not used; in strict mode, an error instead."""
        if self.strict:
            raise PolicyFallbackError("botorch", why)
        if not logged:
            logger.warning("botorch policy fell back to Sobol points: %s", why)
        return self._sobol_points(history, n, pending, {"initial_design": False, "fallback": why})

    # -----------------------------------------------------------------------------------------

    def _sobol_points(self, history: History, n: int, pending: list[Proposal], extra: dict[str, Any]) -> list[Proposal]:
        first: list[Proposal] = []
        center = self.options.center if self.options.center is not None else self.space.pool is None
        if center and extra.get("initial_design") and not len(history) and not pending:
            first = self._center()
            for p in first:
                p.reason = {"policy": "botorch", "acquisition": "center", **extra}
        out = self._sobol.propose(history, n - len(first), pending + first) if n > len(first) else []
        for p in out:
            p.reason = {"policy": "botorch", "acquisition": "sobol", **extra, "sequence": p.reason.get("sequence")}
        return first + out

    def _center(self) -> list[Proposal]:
        """The centre of the box, snapped to the discrete levels; none when it breaks a linear constraint."""
        space = self.space
        center = np.full(space.dim, 0.5)
        if space.pool is not None:
            if not len(space.pool):
                return []
            i = int(np.argmin(((space.pool - center) ** 2).sum(axis=1)))
            return [Proposal(x=space.pool[i].copy(), pool_index=i)]
        x = space.snap(center[None, :])
        return [Proposal(x=x[0])] if space.feasible(x)[0] else []

    def _training_data(self, history: History) -> TrainingData:
        metrics = list(self.outcomes.metrics)
        X = history.X(self.space.dim)
        Y = history.Y(metrics)
        Yvar = history.Yvar(metrics) if self.options.fixed_noise else None
        Y = np.where(np.isfinite(Y), Y, np.nan)
        keep = np.isfinite(Y).any(axis=1) & np.isfinite(X).all(axis=1)
        if Yvar is not None and not np.isfinite(Yvar[keep]).all():
            Yvar = None
        Y, clipped = Y[keep], 0
        if self.options.winsorize:
            Y, clipped = winsorize(Y, self.outcomes, [o.threshold for o in self.problem.objectives])
        return TrainingData(X=X[keep], Y=Y, Yvar=None if Yvar is None else Yvar[keep], metrics=metrics, clipped=clipped)

    def _anchors(self, data: TrainingData) -> np.ndarray:
        """Rows of the best observed trials: the incumbent, or the feasible Pareto set."""
        Yt = torch.as_tensor(data.Y)
        obj = self.outcomes.objective_values(Yt).numpy()
        violation = self.outcomes.violation(torch.nan_to_num(Yt, nan=0.0)).numpy()
        ok = np.isfinite(obj).all(axis=1)
        feasible = ok & (violation <= 0)
        pool = feasible if feasible.any() else ok
        if self.outcomes.multi:
            return np.flatnonzero(pareto_mask(np.where(pool[:, None], obj, np.nan), [True] * obj.shape[1]))[:64]
        score = np.where(pool, obj[:, 0], -np.inf)
        return np.array([int(np.argmax(score))])

    def _start(self, history: History, pending: list[Proposal]) -> np.ndarray | None:
        if pending:
            return np.asarray(pending[-1].x, dtype=float)
        if len(history):
            return np.asarray(history.observations[-1].x, dtype=float)
        return None

    def _model_points(self, history: History, n: int, pending: list[Proposal], data: TrainingData, seed: int) -> list[Proposal]:
        opts, space = self.options, self.space
        t0 = time.perf_counter()
        fitted = fit_model(data, self._anchors(data), self.model_settings, self._cache)
        t_fit = time.perf_counter() - t0
        reason: dict[str, Any] = {"policy": "botorch", "acquisition": self.acquisition, "initial_design": False, "seed": seed,
                                  "fast_paths": fast_paths.note(self.options.fast_paths)}
        if fitted.jitter is not None:
            reason["fallback"] = f"model refitted with jitter {fitted.jitter:g} after: {fitted.fit_error}"
            if self.strict:
                raise PolicyFallbackError("botorch", reason["fallback"])
            logger.warning("botorch policy: %s", reason["fallback"])
        reason["model"] = {
            "kind": type(fitted.model).__name__, "n_train": len(fitted.rows), "n_fit": fitted.n_fit,
            "refit": fitted.refit, "warm_start": fitted.warm_started, "winsorized": data.clipped,
            "lengthscale_pooling": self.model_settings.lengthscale_pooling,
        }
        ref_t = None
        if self.outcomes.multi:
            obj_cols = [self.outcomes.metrics[j] for j in self.outcomes.objective_index]
            ref, inferred = reference_point(history.Y(obj_cols), self.problem.objectives)
            if not np.isfinite(ref).all():
                raise ValueError("cannot infer a hypervolume reference point: no completed trial has every objective")
            ref_t = fitted.tensor(ref * np.asarray(self.outcomes.signs))
            reason["ref_point"] = dict(zip(obj_cols, map(float, ref)))
            reason["ref_point_inferred"] = inferred
        pend = [np.asarray(p.x, dtype=float) for p in pending]
        if opts.avoid_failed and space.pool is None:
            pend += [np.asarray(o.x, dtype=float) for o in history.observations if o.status == "failed"][-MAX_FAILED_AVOIDED:]
        start = self._start(history, pending)
        divide = self.travel is not None and opts.cost_aware in ("divide", "both") and start is not None
        ctx = SearchContext(
            fitted=fitted, outcomes=self.outcomes, space=space, settings=self.search_settings,
            pending=np.vstack(pend) if pend else np.zeros((0, space.dim)),
            cost=self.travel if divide else None, start=start, ref_point=ref_t,
        )
        builder = AcquisitionBuilder(
            self.acquisition, fitted, self.outcomes, mc_samples=opts.mc_samples, seed=seed, beta=opts.beta, ref_point=ref_t,
            standardize_objectives=opts.standardize_objectives, fast_paths=self.fast_paths,
        )
        if space.pool is not None:
            taken = history.used_pool_indices() | {p.pool_index for p in pending if p.pool_index is not None}
            picks = search_pool(builder, self.acquisition, ctx, n, taken)
            reason["search"] = "pool"
            reason["pool_free"] = int(len(space.pool) - len(taken))
        else:
            picks = search_space(builder, self.acquisition, ctx, n, seed)
            reason["search"] = "mixed" if any(k is not None for k in space.levels) else "continuous"
        reason["seconds_spent"] = {"fit": round(t_fit, 4), "search": round(time.perf_counter() - t0 - t_fit, 4)}
        if self.travel is not None and picks:
            if opts.cost_aware in ("route", "both") and len(picks) > 1:
                order = order_route(self.travel, start, np.vstack([p.x for p in picks]))
                picks = [picks[i] for i in order]
            previous = start
            for p in picks:  # travel + dwell along the batch as it will be measured
                p.seconds = float(self.travel.seconds(previous, p.x[None, :])[0])
                previous = p.x
        return self._proposals(picks, fitted, reason)

    def _proposals(self, picks: list[Pick], fitted: FittedModel, reason: dict[str, Any]) -> list[Proposal]:
        if not picks:
            return []
        X = np.vstack([p.x for p in picks])
        mean, std = marginal_posterior(fitted, fitted.tensor(X))
        mean, std = mean.cpu().numpy(), std.cpu().numpy()
        out = []
        for k, p in enumerate(picks):
            r = dict(reason)
            r["acquisition_value"] = p.value
            r["predicted"] = {m: {"mean": float(mean[k, j]), "std": float(std[k, j])} for j, m in enumerate(self.outcomes.metrics)}
            r["batch"] = {"index": k, "size": len(picks)}
            if p.seconds is not None:
                r["seconds"] = p.seconds
                r["log_value_per_second"] = p.utility
            out.append(Proposal(x=np.asarray(p.x, dtype=float).copy(), pool_index=p.pool_index, reason=r))
        return out
