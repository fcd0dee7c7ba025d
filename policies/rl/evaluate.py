"""Run a scorer over whole nights and measure it: reward (and where it came from), two fractions of the
maximum achievable reward per step, transients caught with at least 3 epochs, revisits, slew-time fraction
and decision latency.

The two per-step fractions differ in what "the best available target's reward in that state" means:
- oracle (`fraction_of_max_reward`, as first measured): the simulator's full reward of every allowed
  target, including transients nobody has detected yet, and no cost for the slew to it;
- fair (`fraction_of_max_reward_fair`): what a scheduler could know before looking, per unit of telescope
  time: the depth term plus new epochs of transients already detected, times exposure / (overhead +
  exposure), so a target 2 minutes of slew away is worth what it pays per exposure-length of time. The
  chosen target is valued the same way, so the fraction is at most 1 in every state.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from policies.rl.env import TelescopeEnv
from policies.rl.network import masked_argmax
from policies.rl.scorers import Scorer
from policies.rl.values import best_value, fair_values, known_reward, overhead_seconds
from simulators.telescope.batch import REWARD_SOURCES


@dataclass
class NightScore:
    """Means over the evaluated nights (the per-step fractions pool every step of every night)."""

    nights: int
    fraction_of_max_reward: float
    fraction_of_max_reward_fair: float
    total_reward_mean: float
    total_reward_std: float
    transients_3_epochs_mean: float
    slew_fraction: float
    decisions_per_night: float
    decision_latency_ms: float
    night_totals: list[float]
    reward_by_source: dict[str, float] = field(default_factory=dict)
    fields_visited_mean: float = 0.0
    revisits_mean: float = 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def run_nights(env: TelescopeEnv, scorer: Scorer) -> NightScore:
    """Schedule every night of `env` from evening to morning with `scorer` and measure it (module docstring)."""
    b = env.batch
    zeros = lambda: torch.zeros(env.size, dtype=torch.float64)  # noqa: E731
    total, best, chosen_fair, best_fair, slew = zeros(), zeros(), zeros(), zeros(), zeros()
    sources = {k: zeros() for k in REWARD_SOURCES}
    decisions = torch.zeros(env.size)
    epochs = torch.zeros(env.size, len(env.sim.transients), dtype=torch.long)
    start_clock = b.clock.clone()
    spent = 0.0
    while not bool(env.done.all()):
        obs = env.observe()
        live = ~env.done
        keep = lambda v: torch.where(live, v, torch.zeros_like(v))  # noqa: E731
        parts = b.preview_parts(obs.plan)
        best += keep(best_value(parts["reward"]))
        fair = fair_values(known_reward(parts), overhead_seconds(env, obs), env.sim.exposure, obs.plan.allowed)
        best_fair += keep(best_value(fair))
        t0 = time.perf_counter()
        action = masked_argmax(scorer(obs), obs.mask)
        spent += time.perf_counter() - t0
        pick = lambda v: v.gather(1, action.view(-1, 1)).view(-1)  # noqa: E731
        chosen_fair += keep(pick(fair).clamp(min=0.0))
        slew += keep(pick(obs.plan.slew))
        for k in REWARD_SOURCES:
            sources[k] += keep(pick(parts[k]))
        before = b.last_detection.clone()
        reward, _ = env.step(action, obs)
        epochs += (b.last_detection != before).long()
        total += reward
        decisions += live.float()
    night_seconds = ((b.clock - start_clock) * 86400.0).clamp(min=1e-9)
    steps = float(decisions.sum())
    visited = (b.n_visits > 0).sum(-1).double()
    return NightScore(
        nights=env.size, fraction_of_max_reward=float(total.sum() / best.sum().clamp(min=1e-12)),
        fraction_of_max_reward_fair=float(chosen_fair.sum() / best_fair.sum().clamp(min=1e-12)),
        total_reward_mean=float(total.mean()), total_reward_std=float(total.std()) if env.size > 1 else 0.0,
        transients_3_epochs_mean=float((epochs >= 3).sum(-1).float().mean()),
        slew_fraction=float((slew / night_seconds).mean()), decisions_per_night=steps / env.size,
        decision_latency_ms=1000.0 * spent / max(steps, 1.0), night_totals=total.tolist(),
        reward_by_source={k: float(v.mean()) for k, v in sources.items()},
        fields_visited_mean=float(visited.mean()), revisits_mean=float((b.n_visits.sum(-1) - visited).mean()),
    )
