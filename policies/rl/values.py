"""What a scheduler can know a target is worth before looking, per unit of telescope time; the per-step
metric's yardstick (evaluate.py) and the floor that keeps a scheduler's choice near the best of it.
"""
from __future__ import annotations

import torch

from policies.rl.env import Observation, TelescopeEnv
from policies.rl.scorers import Scorer


def known_reward(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The part of a target's reward a scheduler can know of before looking: depth plus new epochs of
    transients it has already detected (first detections are a surprise until the image is taken)."""
    return parts["depth"] + parts["transient_repeat"]


def fair_values(reward: torch.Tensor, overhead: torch.Tensor, exposure: float, allowed: torch.Tensor) -> torch.Tensor:
    """Per target (..., N): `reward` per exposure-length of telescope time, reward * exposure / (overhead +
    exposure), overhead (s) being slew, settle and readout before the exposure starts; -inf where not allowed."""
    value = reward * (exposure / (overhead.clamp(min=0.0) + exposure))
    return value.masked_fill(~allowed, -torch.inf)


def best_value(values: torch.Tensor) -> torch.Tensor:
    """The best allowed target's value per state (...,): at least 0 (a closed dome or nothing allowed offers 0)."""
    return values.max(-1).values.clamp(min=0.0)


def overhead_seconds(env: TelescopeEnv, obs: Observation) -> torch.Tensor:
    """Seconds from now until each target's exposure could start (slew, settle, readout): B x N."""
    return (obs.plan.start - env.batch.now.view(-1, 1)) * 86400.0


def known_values(env: TelescopeEnv, obs: Observation) -> torch.Tensor:
    """fair_values of every target of `obs` (B x N; -inf where not allowed)."""
    parts = env.batch.preview_parts(obs.plan)
    return fair_values(known_reward(parts), overhead_seconds(env, obs), env.sim.exposure, obs.plan.allowed)


def floored(scorer: Scorer, env: TelescopeEnv, floor: float) -> Scorer:
    """`scorer` restricted by near_best to the targets of `env` worth at least `floor` of the best (itself at 0)."""
    if floor <= 0.0:
        return scorer
    return lambda obs: near_best(scorer(obs), known_values(env, obs), floor)


def near_best(scores: torch.Tensor, values: torch.Tensor, floor: float) -> torch.Tensor:
    """`scores` (B x N) with every target worth less than `floor` x the state's best known value masked (-inf),
    so that the fair per-step fraction of the argmax is at least `floor` in every state."""
    if floor <= 0.0:
        return scores
    low = values < floor * best_value(values).unsqueeze(-1)
    return scores.masked_fill(low, -torch.inf)
