"""Ways to rank the targets of a state (B, N scores, higher is better): the learned Q-network and the
baselines (greedy on the expected immediate reward, a Rubin-like weighted sum of basis functions, random)."""
from __future__ import annotations

from typing import Callable

import torch

from policies.rl.env import Observation, expected_reward
from policies.rl.network import TargetQNet
from simulators.telescope import FEATURES, TelescopeSimulator

Scorer = Callable[[Observation], torch.Tensor]
_COL = {name: i for i, name in enumerate(FEATURES)}

# basis functions of the weighted-sum scheduler, each of order one with larger = better before weighting
FEATURE_WEIGHTS = {"depth": 1.0, "airmass": 0.5, "slew": 1.0, "sky_brightness": 0.3, "since_visit": 3.0,
                   "priority": 1.0, "setting": 0.3}


def q_scorer(net: TargetQNet) -> Scorer:
    """Q-values of the network (no gradients)."""
    def score(obs: Observation) -> torch.Tensor:
        with torch.no_grad():
            return net(obs.x, obs.mask)
    return score


def greedy_scorer(sim: TelescopeSimulator) -> Scorer:
    """The highest expected immediate reward: the simulator's reward rule on what is known before looking."""
    return lambda obs: expected_reward(obs.features, sim).masked_fill(~obs.mask, -torch.inf)


def basis_functions(feats: torch.Tensor, sim: TelescopeSimulator) -> dict[str, torch.Tensor]:
    """Rubin-style basis functions (B, N): depth above the floor, airmass, slew over exposure, sky brightness,
    novelty since the last visit, priority, and how soon the target sets (hour angle > 0 and low)."""
    col = lambda k: feats[..., _COL[k]]  # noqa: E731
    return {
        "depth": (col("depth") - sim.depth_floor) / 2.0,
        "airmass": -(col("airmass") - 1.0),
        "slew": -col("slew_time") / max(sim.exposure, 1.0),
        "sky_brightness": col("sky_brightness") - 21.0,
        "since_visit": 1.0 - torch.exp(-col("since_visit").clamp(min=0.0) / sim.cadence),
        "priority": col("priority"),
        "setting": (col("hour_angle") > 0) * (1.0 - col("altitude") / 90.0),
    }


def feature_scorer(sim: TelescopeSimulator, weights: dict[str, float] | None = None) -> Scorer:
    """A weighted sum of basis functions (Rubin's feature-based scheduler in miniature)."""
    w = {**FEATURE_WEIGHTS, **(weights or {})}

    def score(obs: Observation) -> torch.Tensor:
        basis = basis_functions(obs.features, sim)
        total = sum(w[k] * v for k, v in basis.items())
        return total.to(torch.float32).masked_fill(~obs.mask, -torch.inf)
    return score


def random_scorer(seed: int) -> Scorer:
    """Uniformly random allowed targets (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return lambda obs: torch.rand(obs.mask.shape, generator=g).masked_fill(~obs.mask, -torch.inf)
