"""Run a scorer over whole nights and measure it: reward, fraction of the maximum achievable reward per
step, transients caught with at least 3 epochs, slew-time fraction and decision latency."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from policies.rl.env import TelescopeEnv
from policies.rl.network import masked_argmax
from policies.rl.scorers import Scorer


@dataclass
class NightScore:
    """Means over the evaluated nights (fraction_of_max_reward pools every step of every night)."""

    nights: int
    fraction_of_max_reward: float
    total_reward_mean: float
    total_reward_std: float
    transients_3_epochs_mean: float
    slew_fraction: float
    decisions_per_night: float
    decision_latency_ms: float
    night_totals: list[float]

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def run_nights(env: TelescopeEnv, scorer: Scorer) -> NightScore:
    """Schedule every night of `env` from evening to morning with `scorer`; the max achievable reward per step
    is the best allowed target's reward in each state the scheduler reached (Terranova et al. 2023)."""
    b = env.batch
    total = torch.zeros(env.size, dtype=torch.float64)
    best = torch.zeros(env.size, dtype=torch.float64)
    slew = torch.zeros(env.size, dtype=torch.float64)
    decisions = torch.zeros(env.size)
    epochs = torch.zeros(env.size, len(env.sim.transients), dtype=torch.long)
    start_clock = b.clock.clone()
    spent = 0.0
    while not bool(env.done.all()):
        obs = env.observe()
        live = ~env.done
        preview = b.preview(obs.plan)
        best += torch.where(live, preview.max(-1).values.clamp(min=0.0), torch.zeros_like(best))
        t0 = time.perf_counter()
        action = masked_argmax(scorer(obs), obs.mask)
        spent += time.perf_counter() - t0
        slew += torch.where(live, obs.plan.slew.gather(1, action.view(-1, 1)).view(-1), torch.zeros_like(slew))
        before = b.last_detection.clone()
        reward, _ = env.step(action, obs)
        epochs += (b.last_detection != before).long()
        total += reward
        decisions += live.float()
    night_seconds = ((b.clock - start_clock) * 86400.0).clamp(min=1e-9)
    steps = float(decisions.sum())
    return NightScore(
        nights=env.size, fraction_of_max_reward=float(total.sum() / best.sum().clamp(min=1e-12)),
        total_reward_mean=float(total.mean()), total_reward_std=float(total.std()) if env.size > 1 else 0.0,
        transients_3_epochs_mean=float((epochs >= 3).sum(-1).float().mean()),
        slew_fraction=float((slew / night_seconds).mean()), decisions_per_night=steps / env.size,
        decision_latency_ms=1000.0 * spent / max(steps, 1.0), night_totals=total.tolist(),
    )
