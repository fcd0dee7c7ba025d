"""What we believe: Gaussian-process surrogates of the metrics, fitted from a campaign's history.

One output per modelled metric (objectives first, then outcome-constraint metrics):
`SingleTaskGP` (batched over outputs) on unit-cube inputs with `Standardize`,
`MixedSingleTaskGP` when some dimensions are categorical, a `ModelListGP` when metrics were
observed on different trials. Reported standard errors become fixed noise (`train_Yvar`).

Large histories stay cheap: hyperparameters are fitted on at most `fit_max` points and the
posterior is conditioned on at most `condition_max` points, each subset being half the points
nearest the incumbents and half a farthest-point (space-filling) sample of the rest. The last
hyperparameters are cached in memory to warm-start the next fit; that cache is an optimisation
only: without it (after a restart) the same history is fitted from BoTorch's defaults.
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import gpytorch
import numpy as np
import torch
from botorch.exceptions.errors import ModelFittingError
from botorch.exceptions.warnings import InputDataWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import MixedSingleTaskGP, ModelListGP, SingleTaskGP
from botorch.models.model import Model
from botorch.models.transforms.outcome import Standardize
from gpytorch.constraints import GreaterThan
from gpytorch.mlls import ExactMarginalLogLikelihood, SumMarginalLogLikelihood
from scipy.spatial.distance import cdist

from policies.bayesian.mll_fit import exact_gp_parts, fit_exact_gp
from policies.bayesian.posterior import MAX_CHOLESKY, marginal_posterior
from policies.bayesian.priors import pool_lengthscales

__all__ = [
    "FittedModel", "HyperparameterCache", "ModelFitError", "ModelSettings", "TrainingData",
    "build_model", "fit_model", "marginal_posterior", "select_subset", "single_gp", "train_marginals", "with_fantasies",
]

logger = logging.getLogger(__name__)

# Jitter (added noise variance, in standardised units) for the second, more robust fit attempt.
ROBUST_JITTER = 1e-4
# A fit that starts from the last hyperparameters is close to its optimum: stop sooner.
WARM_MAXITER = 50
WARM_FTOL = 1e-6


class ModelFitError(RuntimeError):
    """The surrogate could not be fitted even with added jitter; the policy falls back to Sobol points."""


@dataclass
class TrainingData:
    """Completed trials as the model sees them: X (n x d), Y (n x m, NaN = missing), Yvar (n x m) or None."""

    X: np.ndarray
    Y: np.ndarray
    Yvar: np.ndarray | None
    metrics: list[str]
    clipped: int = 0  # values winsorized before fitting


@dataclass
class ModelSettings:
    fit_max: int = 256
    condition_max: int = 512
    refit_every: int | None = None  # None: 1 up to fit_max points, then about n / fit_max
    warm_start: bool = True
    warm_start_after: int = 30  # below this many fitted points, fits start from BoTorch's defaults
    fit_maxiter: int = 200
    cat_dims: tuple[int, ...] = ()
    dtype: torch.dtype = torch.float64
    fast_paths: bool = True  # mll_fit for BoTorch's default GPs (False: always fit_gpytorch_mll)
    lengthscale_pooling: float | None = None  # sd of log length scales about their mean (priors.py); None: BoTorch's prior
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class HyperparameterCache:
    """Last fitted hyperparameters (raw gpytorch parameters), reused to warm-start or skip a refit."""

    key: tuple | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    n_at_fit: int = -1


@dataclass
class FittedModel:
    """A fitted surrogate and what it was fitted on."""

    model: Model
    data: TrainingData
    rows: np.ndarray  # rows of `data` the posterior is conditioned on
    train_X: torch.Tensor  # those rows' inputs, n_c x d (the X_baseline of noisy acquisitions)
    n_fit: int  # points the hyperparameters were fitted on (0 = reused from the cache)
    refit: bool
    warm_started: bool
    jitter: float | None
    state: dict[str, torch.Tensor]
    settings: ModelSettings
    y_std: torch.Tensor  # m, spread of each metric's observations (for standardised scores)
    fit_error: str | None = None  # why the plain fit failed, when the jittered one was used
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def tensor(self, X: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(X, dtype=self.settings.dtype, device=self.settings.device)


# ---------------------------------------------------------------------------------------------
# subsets


def select_subset(X: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    """Indices of k rows of X (n x d): half nearest the anchor rows, half spread out over the rest.

    Deterministic. The first half keeps the model sharp where the optimum probably is; the
    second (greedy farthest-point) half keeps it honest everywhere else.
    """
    n = len(X)
    if n <= k:
        return np.arange(n)
    anchors = np.asarray(anchors, dtype=int)
    if anchors.size == 0:
        anchors = np.array([0])
    near = np.argsort(cdist(X, X[anchors], "sqeuclidean").min(axis=1), kind="stable")[: k // 2]
    chosen = np.zeros(n, dtype=bool)
    chosen[near] = True
    dist = cdist(X, X[near], "sqeuclidean").min(axis=1)  # to the chosen set, updated one pick at a time
    picks = list(near)
    while len(picks) < k:
        dist[chosen] = -1.0
        i = int(np.argmax(dist))
        chosen[i] = True
        picks.append(i)
        dist = np.minimum(dist, ((X - X[i]) ** 2).sum(-1))
    return np.sort(np.asarray(picks))


# ---------------------------------------------------------------------------------------------
# building and fitting


def single_gp(
    X: torch.Tensor, Y: torch.Tensor, Yvar: torch.Tensor | None, cat_dims: tuple[int, ...], scale: Standardize | None = None,
    pooling: float | None = None,
) -> Model:
    """One GP over m outputs that share the inputs X (n x d); Y (n x m), Yvar (n x m) or None.

    pooling: pool the ARD length scales' logs towards their mean with this sd (priors.py; continuous
    spaces only: a mixed space keeps MixedSingleTaskGP's own kernel).

    scale: an outcome transform whose fixed statistics standardise Y (a copy, attached after
    construction: BoTorch's models put a transform given to them in train mode, refitting it to Y);
    None: a new Standardize fitted to Y.
    """
    m = Y.shape[-1]
    fixed = None
    if scale is not None:
        fixed = copy.deepcopy(scale).eval()
        with torch.no_grad():
            Y, Yvar = fixed(Y, Yvar)
    outcome = Standardize(m) if fixed is None else None
    with warnings.catch_warnings():
        if fixed is not None:  # standardised by other points' statistics, on purpose
            warnings.simplefilter("ignore", InputDataWarning)
        # X is already in the unit cube (EncodedSpace): no input transform, whose identity Normalize cost ~12% of
        # every acquisition evaluation
        if cat_dims:
            model = MixedSingleTaskGP(X, Y, cat_dims=list(cat_dims), train_Yvar=Yvar, outcome_transform=outcome)
        else:
            model = SingleTaskGP(X, Y, train_Yvar=Yvar, outcome_transform=outcome)
            if pooling is not None:
                pool_lengthscales(model.covar_module, pooling)
    if fixed is not None:
        model.outcome_transform = fixed
    return model


def build_model(
    X: np.ndarray, Y: np.ndarray, Yvar: np.ndarray | None, settings: ModelSettings,
    scales: list[Standardize] | None = None,
) -> Model:
    """An unfitted surrogate for Y (n x m, NaN = not observed) at X (n x d).

    Outputs observed on the same rows share one batched GP; otherwise each output gets its own
    GP on its own rows, in a ModelListGP. scales: the outcome transforms of a model of the same
    structure, to standardise with their statistics rather than Y's (see with_fantasies).
    """
    t = lambda a: torch.as_tensor(a, dtype=settings.dtype, device=settings.device)  # noqa: E731
    finite = np.isfinite(Y)
    if Yvar is not None:
        Yvar = np.maximum(Yvar, 1e-6 * np.nanvar(Y, axis=0, keepdims=True) + 1e-12)
    if finite.all():
        return single_gp(t(X), t(Y), None if Yvar is None else t(Yvar), settings.cat_dims, scales[0] if scales else None,
                         settings.lengthscale_pooling)
    models = []
    for j in range(Y.shape[1]):
        ok = finite[:, j]
        yv = None if Yvar is None else t(Yvar[ok, j : j + 1])
        models.append(single_gp(t(X[ok]), t(Y[ok, j : j + 1]), yv, settings.cat_dims, scales[j] if scales else None,
                                settings.lengthscale_pooling))
    return ModelListGP(*models)


def hyperparameters(model: Model) -> dict[str, torch.Tensor]:
    """The trainable (raw) hyperparameters of a model, detached."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1].startswith("raw_")}


def load_hyperparameters(model: Model, state: dict[str, torch.Tensor]) -> bool:
    """Copy cached hyperparameters into a model of the same structure; False when they do not fit."""
    own = model.state_dict()
    if not state or set(state) - set(own) or any(own[k].shape != v.shape for k, v in state.items()):
        return False
    model.load_state_dict({k: v.to(own[k]) for k, v in state.items()}, strict=False)
    return True


def _mll(model: Model):
    if isinstance(model, ModelListGP):
        return SumMarginalLogLikelihood(model.likelihood, model)
    return ExactMarginalLogLikelihood(model.likelihood, model)


def _raise_noise_floor(model: Model, floor: float) -> None:
    """Keep inferred noise above `floor` (standardised units) so the kernel matrix stays well conditioned."""
    for gp in model.models if isinstance(model, ModelListGP) else [model]:
        noise_covar = getattr(gp.likelihood, "noise_covar", None)
        if noise_covar is not None and hasattr(noise_covar, "raw_noise"):
            noise_covar.register_constraint("raw_noise", GreaterThan(floor))
            noise_covar.noise = torch.full_like(noise_covar.noise, max(10 * floor, 1e-2))


def _optimise(model: Model, maxiter: int, warm: bool = False, fast: bool = True) -> None:
    """Maximise the marginal likelihood (L-BFGS-B); a warm start stops at a looser tolerance.

    BoTorch's default GPs go through mll_fit (the same objective, 0.2-0.3x the time per fit);
    anything else, or every model when `fast` is False (fast_paths.py), through `fit_gpytorch_mll`.
    """
    options: dict[str, Any] = {"maxiter": maxiter}
    if warm:
        options.update(maxiter=min(maxiter, WARM_MAXITER), ftol=WARM_FTOL, factr=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gps = model.models if isinstance(model, ModelListGP) else [model]
        parts = [exact_gp_parts(gp) if fast else None for gp in gps]
        if all(p is not None for p in parts):
            for gp, p in zip(gps, parts):
                fit_exact_gp(gp, options["maxiter"], options.get("ftol"), parts=p)
        else:
            fit_gpytorch_mll(
                _mll(model),
                optimizer_kwargs={"options": options},
                max_attempts=2,
                caught_exception_types=(),
            )
    for p in model.parameters():
        if not torch.isfinite(p).all():
            raise ModelFittingError("a hyperparameter became NaN or infinite")


def fit_model(
    data: TrainingData,
    anchors: np.ndarray,
    settings: ModelSettings,
    cache: HyperparameterCache | None = None,
) -> FittedModel:
    """Fit the surrogate to `data`; `anchors` are the incumbent rows that subsets keep close to.

    Tries a normal fit, then one with a noise floor and Cholesky jitter; raises ModelFitError
    when both fail. Updates `cache` (in place) with the new hyperparameters.
    """
    n = len(data.X)
    key = (tuple(data.metrics), bool(np.isfinite(data.Y).all()), data.Yvar is not None, settings.cat_dims, data.X.shape[1])
    cond_rows = select_subset(data.X, anchors, settings.condition_max)
    every = settings.refit_every or max(1, round(n / settings.fit_max))
    reuse = cache is not None and cache.key == key and every > 1 and 0 <= n - cache.n_at_fit < every
    errors: list[str] = []
    for jitter in (None, ROBUST_JITTER):
        try:
            with gpytorch.settings.max_cholesky_size(MAX_CHOLESKY), _jitter(jitter):
                fitted = _fit_once(data, anchors, cond_rows, settings, cache, key, reuse, jitter)
            fitted.fit_error = errors[0] if errors else None
            return fitted
        except Exception as exc:  # noqa: BLE001 - any numerical failure means: try harder, then fall back
            logger.info("model fit failed (jitter=%s): %s: %s", jitter, type(exc).__name__, exc)
            errors.append(f"{type(exc).__name__}: {exc}")
            reuse = False
    raise ModelFitError("; then with jitter: ".join(errors))


def _jitter(jitter: float | None):
    if jitter is None:
        return gpytorch.settings.cholesky_jitter(None, None, None)
    return gpytorch.settings.cholesky_jitter(float_value=jitter * 10, double_value=jitter, half_value=None)


def _fit_once(
    data: TrainingData,
    anchors: np.ndarray,
    cond_rows: np.ndarray,
    settings: ModelSettings,
    cache: HyperparameterCache | None,
    key: tuple,
    reuse: bool,
    jitter: float | None,
) -> FittedModel:
    n = len(data.X)
    Yvar = data.Yvar
    if jitter is not None and Yvar is not None:
        Yvar = Yvar + jitter * np.nanvar(data.Y, axis=0, keepdims=True)
    warm = False
    n_fit = 0
    if reuse:
        state = cache.state
    else:
        fit_rows = cond_rows if len(cond_rows) <= settings.fit_max else cond_rows[
            select_subset(data.X[cond_rows], _positions(cond_rows, anchors), settings.fit_max)
        ]
        sub = build_model(data.X[fit_rows], data.Y[fit_rows], None if Yvar is None else Yvar[fit_rows], settings)
        if jitter is not None:
            _raise_noise_floor(sub, jitter)
        if (settings.warm_start and len(fit_rows) >= settings.warm_start_after and cache is not None
                and cache.key == key and jitter is None):
            warm = load_hyperparameters(sub, cache.state)
        _optimise(sub, settings.fit_maxiter, warm, settings.fast_paths)
        state = hyperparameters(sub)
        n_fit = len(fit_rows)
        if n_fit == n and len(cond_rows) == n:
            model = sub
    if n_fit != n or len(cond_rows) != n:
        model = build_model(data.X[cond_rows], data.Y[cond_rows], None if Yvar is None else Yvar[cond_rows], settings)
        if jitter is not None:
            _raise_noise_floor(model, jitter)
        if not load_hyperparameters(model, state):
            raise ModelFittingError("cached hyperparameters do not match the model")
    model.eval()
    if cache is not None and not reuse and jitter is None:
        cache.key, cache.state, cache.n_at_fit = key, state, n
    t = lambda a: torch.as_tensor(a, dtype=settings.dtype, device=settings.device)  # noqa: E731
    y_std = np.nanstd(data.Y, axis=0)
    y_std = np.where(np.isfinite(y_std) & (y_std > 0), y_std, 1.0)
    fitted = FittedModel(
        model=model, data=data, rows=cond_rows, train_X=t(data.X[cond_rows]), n_fit=n_fit, refit=not reuse,
        warm_started=warm, jitter=jitter, state=state, settings=settings, y_std=t(y_std),
    )
    # A model that cannot even predict at its own data is no use: fail here, inside the fallback chain.
    mean, std = marginal_posterior(fitted, fitted.train_X[:1])
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise ModelFittingError("the fitted model predicts NaN")
    return fitted


def _positions(rows: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Positions within `rows` of those anchors that are in it."""
    where = {int(r): i for i, r in enumerate(rows)}
    return np.array([where[int(a)] for a in anchors if int(a) in where], dtype=int)


def train_marginals(fitted: FittedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """marginal_posterior at the conditioned training inputs, computed once per fitted model."""
    if "train" not in fitted._cache:
        fitted._cache["train"] = marginal_posterior(fitted, fitted.train_X)
    return fitted._cache["train"]


def with_fantasies(fitted: FittedModel, X_new: np.ndarray | torch.Tensor) -> Model:
    """The model conditioned on extra points whose outcomes are taken to be the posterior mean.

    This "kriging believer" leaves the mean unchanged and shrinks the variance around X_new
    (k x d) exactly as real observations would: how pending trials enter the analytic and
    sample-based acquisitions. Same hyperparameters, no refit, and the same outcome
    standardisation: re-standardising with the fantasised means included shrank the outcome
    scale, hence the prior variance in metric units, and so every std far from X_new (by ~5%
    with 8 training points and 3 fantasies, where conditioning cannot reach; tests/test_bayesian.py).
    """
    X_new = fitted.tensor(X_new).reshape(-1, fitted.train_X.shape[-1])
    if len(X_new) == 0:
        return fitted.model
    key = ("fantasy", tuple(np.round(X_new.cpu().numpy().ravel(), 12)))
    if key in fitted._cache:
        return fitted._cache[key]
    mean, _ = marginal_posterior(fitted, X_new)
    data = fitted.data
    X = np.vstack([data.X[fitted.rows], X_new.cpu().numpy()])
    Y = np.vstack([data.Y[fitted.rows], mean.cpu().numpy()])
    Yvar = None
    if data.Yvar is not None:
        typical = np.nanmedian(data.Yvar, axis=0, keepdims=True)
        Yvar = np.vstack([data.Yvar[fitted.rows], np.repeat(typical, len(X_new), axis=0)])
    gps = fitted.model.models if isinstance(fitted.model, ModelListGP) else [fitted.model]
    scales = [gp.outcome_transform for gp in gps]
    model = build_model(X, Y, Yvar, fitted.settings, scales)
    if fitted.jitter is not None:
        _raise_noise_floor(model, fitted.jitter)
    load_hyperparameters(model, fitted.state)
    model.eval()
    if len(fitted._cache) > 8:
        fitted._cache = {k: v for k, v in fitted._cache.items() if k == "train"}
    fitted._cache[key] = model
    return model
