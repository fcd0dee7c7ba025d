"""The RL environment: B nights of the telescope simulator in torch, observed as per-target feature rows.

An observation is (B, N, F) float32: one row per catalogue field holding that field's state
(altitude, airmass, hour angle, sky brightness, moon separation, depth, slew time from the current
pointing, time since its last visit, transients seen there, priority) and the night's (time left,
cloud, seeing, Moon, Sun), scaled to order one; the action is a field, unobservable ones masked;
the reward is the simulator's science reward. Rows are scored by one network with shared weights,
so the catalogue may change size between training and use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from simulators.telescope import FEATURES, TelescopeSimulator
from simulators.telescope.batch import NightBatch, Plan

ENCODING = "aec-telescope-features-2"
ENCODED = ["altitude", "inverse_airmass", "hour_angle", "moon_separation", "sky_brightness", "seeing", "depth",
           "slew", "novelty", "log_since_visit", "n_visits", "known_active", "priority", "night_left", "cloud",
           "moon_illumination", "sun_altitude", "expected_reward", "setting"]
# the linear prior of the agent: these encoded columns, weighted; FEATURE_PRIOR is the feature-based (Rubin-like)
# scheduler's weighting expressed in encoded units (policies.rl.scorers.FEATURE_WEIGHTS), where the search starts
PRIOR = ["depth", "inverse_airmass", "slew", "sky_brightness", "novelty", "priority", "setting", "expected_reward"]
FEATURE_PRIOR = {"depth": 1.0, "inverse_airmass": 0.5, "slew": -1.0, "sky_brightness": 0.45, "novelty": 3.0,
                 "priority": 1.0, "setting": 0.3, "expected_reward": 0.0}
_COL = {name: i for i, name in enumerate(FEATURES)}


def expected_reward(feats: torch.Tensor, sim: TelescopeSimulator) -> torch.Tensor:
    """The simulator's reward rule applied to what is known before looking (B, N): the depth term, plus
    new epochs of the transients already seen in a field, both worth less the sooner the field is revisited."""
    col = lambda k: feats[..., _COL[k]]  # noqa: E731
    novelty = 1.0 - torch.exp(-col("since_visit") / sim.cadence)
    deep = sim.depth_weight * (col("depth") - sim.depth_floor).clamp(min=0.0)
    return col("priority") * novelty * (deep + col("known_active")) * (col("cloud") < sim.dome_close_oktas)


def encode(feats: torch.Tensor, sim: TelescopeSimulator) -> torch.Tensor:
    """Simulator FEATURES (..., N, len(FEATURES)) -> network inputs (..., N, len(ENCODED)) float32, each of order one."""
    col = lambda k: feats[..., _COL[k]]  # noqa: E731
    since = col("since_visit").clamp(min=0.0)
    cols = [
        col("altitude") / 90.0, 1.0 / col("airmass"), col("hour_angle") / 12.0, col("moon_separation") / 180.0,
        (col("sky_brightness") - 21.0) / 1.5, col("seeing").clamp(max=5.0) / 2.0,
        (col("depth") - sim.depth_floor) / 2.0, col("slew_time") / max(sim.exposure, 1.0),
        1.0 - torch.exp(-since / sim.cadence), torch.log1p(since * 24.0) / math.log1p(720.0),
        col("n_visits").clamp(max=5.0) / 5.0, col("known_active").clamp(max=5.0) / 5.0, col("priority"),
        col("night_left") / 12.0, col("cloud") / 8.0, col("moon_illumination"), col("sun_altitude") / 90.0,
        expected_reward(feats, sim), (col("hour_angle") > 0) * (1.0 - col("altitude") / 90.0),
    ]
    return torch.stack(cols, dim=-1).to(torch.float32)


@dataclass
class Observation:
    """What a scheduler sees of B nights: encoded rows (B, N, F), raw features, the mask, and the plan."""

    x: torch.Tensor
    features: torch.Tensor
    mask: torch.Tensor
    plan: Plan


class TelescopeEnv:
    """B nights observed in lock step; `observe()` then `step(actions)` until `done`."""

    def __init__(self, sim: TelescopeSimulator, nights: list[int]):
        self.sim = sim
        self.batch = NightBatch(sim, nights)

    def move_to(self, nights: list[int]) -> None:
        """The same survey states, on other nights of the calendar."""
        self.batch.move_to(nights)

    @classmethod
    def build(cls, options: dict[str, Any], nights: int, seed: int) -> "TelescopeEnv":
        """Nights 0..nights-1 of a simulator with `options`, its weather and transients drawn from `seed`."""
        opts = {**options, "nights": nights, "seed": seed, "images": False}
        return cls(TelescopeSimulator(**opts), list(range(nights)))

    def reseed(self, seed: int) -> None:
        """Fresh weather and transients for the same nights, every night back to evening."""
        self.sim.reset(seed)
        self.batch = NightBatch(self.sim, self.batch.nights.tolist())

    @property
    def size(self) -> int:
        return self.batch.size

    @property
    def done(self) -> torch.Tensor:
        return self.batch.done

    def observe(self) -> Observation:
        feats = self.batch.features()
        plan = self.batch.plan()
        return Observation(encode(feats, self.sim), feats, plan.allowed, plan)

    def step(self, actions: torch.Tensor, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward, transients detected), each (B,); finished nights give 0."""
        return self.batch.step(actions, obs.plan)
