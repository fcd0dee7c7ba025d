"""Offline training from recorded campaigns: a store's journal of pointings and rewards becomes transitions
(features rebuilt with the site's astronomy, rewards as logged) for a DQN update with a CQL penalty, so a
facility learns from its own logs; the simulator only evaluates the result."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from policies.rl.agent import DQNAgent, TrainOptions, episode_seed, model_config
from policies.rl.env import TelescopeEnv, encode
from policies.rl.evaluate import NightScore, run_nights
from policies.rl.replay import Batch
from policies.rl.scorers import q_scorer
from simulators.telescope import TelescopeSimulator
from simulators.telescope.batch import NightBatch


@dataclass
class LoggedTrial:
    """One completed trial of a recorded campaign, as its journal holds it."""

    pool_index: int
    metrics: dict[str, float]


class OfflineDataError(ValueError):
    """Recorded campaigns that hold nothing to learn from (or not from this catalogue)."""


def transitions(sim: TelescopeSimulator, runs: Sequence[Sequence[LoggedTrial]], opts: TrainOptions) -> Batch:
    """All logged steps of `runs` (each a campaign's completed trials in journal order) with n-step returns."""
    xs, masks, actions, rewards, terminal, durations = [], [], [], [], [], []
    start = sim.start_mjd
    for run in runs:
        usable = [t for t in run if "time" in t.metrics and "reward" in t.metrics]
        if not usable:
            continue
        if max(t.pool_index for t in usable) >= len(sim.fields):
            raise OfflineDataError(f"a recorded trial names pool row {max(t.pool_index for t in usable)}, but the "
                                   f"catalogue has {len(sim.fields)} fields; record and train with the same catalogue")
        night = sim.calendar.index(start + usable[0].metrics["time"] / 24.0)
        batch = NightBatch(sim, [night])
        for k, t in enumerate(usable):
            end = start + t.metrics["time"] / 24.0
            if sim.calendar.index(end) != night:
                night = sim.calendar.index(end)
                terminal[-1] = True
                batch.move_to([night])
            mask = batch.plan().allowed[0].clone()
            mask[t.pool_index] = True
            xs.append(encode(batch.features()[0], sim))
            masks.append(mask)
            actions.append(t.pool_index)
            rewards.append(float(t.metrics["reward"]))
            terminal.append(k == len(usable) - 1)
            took = (end - float(batch.now[0])) * 86400.0 / sim.exposure if opts.time_discount else 1.0
            durations.append(max(took, 0.0))
            batch.log(t.pool_index, end, t.metrics.get("depth", 0.0) > 0.0, t.metrics.get("n_detected", 0.0))
    if len(xs) < 2:
        raise OfflineDataError("the recorded campaigns hold fewer than 2 completed telescope trials")
    x, mask = torch.stack(xs), torch.stack(masks)
    reward, term, took = torch.tensor(rewards), torch.tensor(terminal), torch.tensor(durations, dtype=torch.float32)
    n, steps = opts.n_step, len(xs)
    ret, discount = torch.zeros(steps), torch.ones(steps)
    going = torch.ones(steps, dtype=torch.bool)
    idx = torch.arange(steps)
    for k in range(n):
        j = (idx + k).clamp(max=steps - 1)
        ret += going * (idx + k < steps) * discount * reward[j]
        discount = discount * opts.gamma ** took[j]
        going &= ~term[j] & (idx + k < steps)
    nxt = (idx + n).clamp(max=steps - 1)
    return Batch(x, mask, torch.tensor(actions), ret, x[nxt], mask[nxt], going & (idx + n < steps), discount)


def train_offline(sim_options: dict[str, Any], runs: Sequence[Sequence[LoggedTrial]], opts: TrainOptions,
                  on_update: Any = None) -> tuple[dict[str, Any], NightScore]:
    """CQL-regularised double DQN on the logged transitions; evaluated on held-out simulated nights.
    Returns (checkpoint payload, evaluation)."""
    sim = TelescopeSimulator(**{**sim_options, "images": False, "seed": episode_seed(opts.seed, 0)})
    data = transitions(sim, runs, opts)
    agent = DQNAgent(opts, n_inputs=data.x.shape[-1])
    g = torch.Generator().manual_seed(opts.seed)
    size = min(opts.batch_size, data.x.shape[0])
    for _ in range(opts.offline_updates):
        i = torch.randint(0, data.x.shape[0], (size,), generator=g)
        agent.update(Batch(*(getattr(data, f)[i] for f in Batch.__dataclass_fields__)), cql_alpha=opts.cql_alpha)
        if on_update is not None:
            on_update()
    env = TelescopeEnv.build(sim_options, opts.eval_nights, episode_seed(opts.seed, 0, held_out=True))
    score = run_nights(env, q_scorer(agent.net))
    evaluation = {"episode": 0, "steps": int(data.x.shape[0]), "offline": True, **score.to_json()}
    payload = {**agent.state(), "episode": 0, "steps": 0, "evaluations": [evaluation],
               "generator": g.get_state(),
               "config": {**model_config(sim_options, opts), "offline_transitions": int(data.x.shape[0])}}
    return payload, score
