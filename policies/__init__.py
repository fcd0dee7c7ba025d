"""Policies: what to measure next (baselines, BoTorch, Ax) and what data to keep (novelty).

Each policy module defines a pydantic `Options` model (its keys in the campaign file's `policy:`
section, besides `kind`) and a policy class built as `Cls(problem, options)`. `make_policy`
looks the kind up lazily so that heavy imports (Ax) happen only when used.
"""
from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ValidationError

from policies.base import (
    DataSelector,
    Decision,
    EncodedSpace,
    History,
    KeepAll,
    LinearConstraint,
    Objective,
    Observation,
    OutcomeConstraint,
    Policy,
    PolicyFallbackError,
    Problem,
    Proposal,
    strict_mode,
)

POLICY_KINDS: dict[str, str] = {
    "random": "policies.baselines:RandomPolicy",
    "sobol": "policies.baselines:SobolPolicy",
    "grid": "policies.baselines:GridPolicy",
    "raster": "policies.baselines:GridPolicy",
    "botorch": "policies.bayesian:BotorchPolicy",
    "ax": "policies.ax:AxPolicy",
    "gest": "policies.gest:GestPolicy",
    "rl": "policies.rl.policy:RLPolicy",
    "greedy": "policies.rl.policy:GreedyPolicy",
    "feature": "policies.rl.policy:FeaturePolicy",
}


class PolicyConfigError(ValueError):
    """Bad policy options; `errors` holds (field path, message) pairs relative to the section."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))
        self.errors = errors


def policy_class(kind: str) -> type:
    if kind not in POLICY_KINDS:
        raise PolicyConfigError([("kind", f"unknown policy {kind!r}; expected one of {', '.join(POLICY_KINDS)}")])
    module, name = POLICY_KINDS[kind].split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise PolicyConfigError([("kind", f"policy {kind!r} is not available: {exc}")]) from exc


def validate_options(kind: str, options: dict[str, Any]) -> BaseModel:
    """Check a policy section's options against the policy's own Options model."""
    cls = policy_class(kind)
    try:
        return cls.Options.model_validate({**options, **({"kind": kind} if "kind" in cls.Options.model_fields else {})})
    except ValidationError as exc:
        raise PolicyConfigError([(".".join(str(p) for p in e["loc"]) or "policy", _message(e)) for e in exc.errors()]) from None


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key for this policy (see its options in the README)"
    msg = error["msg"]
    return msg[len("Value error, "):] if msg.startswith("Value error, ") else msg


def make_policy(kind: str, options: dict[str, Any], problem: Problem, *, strict: bool | None = None) -> Policy:
    """A policy of `kind`; `strict` (None: $AEC_STRICT) goes to policies that can fall back internally."""
    cls = policy_class(kind)
    extra = {"strict": strict} if getattr(cls, "has_fallbacks", False) else {}
    return cls(problem, validate_options(kind, options), **extra)


__all__ = [
    "DataSelector", "Decision", "EncodedSpace", "History", "KeepAll", "LinearConstraint",
    "Objective", "Observation", "OutcomeConstraint", "Policy", "PolicyConfigError", "PolicyFallbackError",
    "Problem", "Proposal", "make_policy", "strict_mode", "policy_class", "validate_options", "POLICY_KINDS",
]
