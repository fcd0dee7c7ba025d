"""The hand-written fast paths, the BoTorch names they need, and the switch that turns them all off.

Fast paths (each computes what a BoTorch or gpytorch routine computes, for less):
- mll_fit: closed-form marginal likelihood + BoTorch's batched L-BFGS-B, instead of fit_gpytorch_mll;
- cached_nei: CachedLogNEI, instead of BoTorch's qLogNoisyExpectedImprovement (q = 1, no constraints);
- pool screens: the pruned screen (only rows that can reach the shortlist) and the float32 variance
  product, instead of scoring every row in float64.

They rely on BoTorch names that are private or recent (`botorch.optim.batched_lbfgs_b`,
`botorch.acquisition.logei._log_improvement` and `TAU_RELU`, `botorch.acquisition.analytic._log_ei_helper`).
pyproject pins a BoTorch that has them; should one go missing anyway, the fast path that needs it is
disabled (BoTorch's own routine is used), a warning is logged once and every proposal's
reason["fast_paths"] says so. `AEC_FAST_PATHS=0` in the environment, or `fast_paths: false` in a
botorch policy section, turns every fast path off, so that a bug report can be checked against
BoTorch's own code paths.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)

ENV = "AEC_FAST_PATHS"
MISSING: dict[str, str] = {}  # fast path -> the BoTorch name it lacks (ImportError text)

fmin_l_bfgs_b_batched: Callable[..., Any] | None
try:
    from botorch.optim.batched_lbfgs_b import fmin_l_bfgs_b_batched
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by tests/test_bayesian.py
    fmin_l_bfgs_b_batched = None
    MISSING["mll_fit"] = str(exc)

log_improvement: Callable[..., torch.Tensor] | None
TAU_RELU: float
try:
    from botorch.acquisition.logei import TAU_RELU, _log_improvement as log_improvement
except ImportError as exc:  # pragma: no cover - as above
    log_improvement, TAU_RELU = None, 1e-6
    MISSING["cached_nei"] = str(exc)

try:
    from botorch.acquisition.analytic import _log_ei_helper as log_ei
except ImportError as exc:  # pragma: no cover - as above
    from botorch.utils.probability.utils import log_ndtr, log_phi

    MISSING["log_ei"] = str(exc)

    def log_ei(u: torch.Tensor) -> torch.Tensor:
        """log(phi(u) + u Phi(u)): log of the expected improvement of a standard normal over -u.

        Stand-in for BoTorch's `_log_ei_helper`: exact for u > -5; below, the asymptotic
        log phi(u) - 2 log|u| (relative error < 3 / u^2), instead of BoTorch's erfcx series.
        """
        near = u.clamp_min(-5.0)
        inside = (log_phi(near).exp() + near * log_ndtr(near).exp()).clamp_min(1e-300).log()
        far = u.clamp_max(-5.0)
        return torch.where(u > -5.0, inside, log_phi(far) - 2.0 * far.abs().log())

_warned = False


def env_enabled() -> bool:
    """False when $AEC_FAST_PATHS is 0, false, no or off."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def available(name: str, enabled: bool) -> bool:
    """Whether fast path `name` runs: switched on and not missing a BoTorch name."""
    return enabled and name not in MISSING


def note(option: bool) -> str:
    """reason["fast_paths"]: 'on', 'off (...)', or 'degraded: ...' naming what BoTorch lacks.

    Logs a warning the first time a degradation is reported, so that it is visible but not repeated."""
    global _warned
    if not env_enabled():
        return f"off ({ENV}=0): BoTorch's own fit, acquisitions and full float64 pool screens"
    if not option:
        return "off (fast_paths: false): BoTorch's own fit, acquisitions and full float64 pool screens"
    if not MISSING:
        return "on"
    text = "degraded: " + "; ".join(f"{k} disabled, BoTorch lacks it ({v})" for k, v in sorted(MISSING.items()))
    if not _warned:
        logger.warning("botorch policy: %s", text)
        _warned = True
    return text
