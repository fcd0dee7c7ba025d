"""Double DQN with a target network and n-step returns over B nights in lock step, and the same update
with a conservative (CQL) penalty for learning offline from recorded campaigns.

With `start: feature` (the default) the Q-network is a residual on a linear prior over a few features that
starts as the feature-based (Rubin-like) scheduler: first a cross-entropy policy search improves the prior's
weights on whole simulated nights (the true reward, batched: every candidate on the same nights), then DQN
learns the residual; the checkpoint keeps the network that scored best on the held-out evaluation nights."""
from __future__ import annotations

import copy
import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from policies.rl.env import ENCODED, ENCODING, FEATURE_PRIOR, PRIOR, Observation, TelescopeEnv
from policies.rl.evaluate import NightScore, run_nights
from policies.rl.network import TargetQNet, masked_argmax
from policies.rl.replay import Batch, NightReplay
from policies.rl.scorers import feature_scorer, greedy_scorer, q_scorer
from simulators.telescope import TelescopeSimulator


class TrainOptions(BaseModel):
    """`policy.train` of a campaign file: how `aec train-rl` trains the agent."""

    model_config = ConfigDict(extra="forbid")
    episodes: int = Field(12, ge=1, description="rounds of `nights` simulated nights, each from evening to morning")
    nights: int = Field(8, ge=1, le=512, description="nights simulated in parallel per episode")
    eval_nights: int = Field(4, ge=1, le=512, description="held-out nights (other weather and transient seeds)")
    eval_every: int = Field(4, ge=1, description="episodes between evaluations")
    hidden: int = Field(64, ge=4, le=4096)
    dueling: bool = Field(False, description="split Q into a state value and per-target advantages")
    gamma: float = Field(0.99, gt=0.0, lt=1.0)
    n_step: int = Field(3, ge=1, le=64)
    time_discount: bool = Field(True, description="discount by the time a step takes (slew + exposure, in exposures) "
                                "rather than per decision, so a long slew costs future reward in the target itself")
    lr: float = Field(1e-3, gt=0.0, lt=1.0)
    batch_size: int = Field(128, ge=8)
    replay_steps: int = Field(3000, ge=16, description="lock steps of all nights kept for replay")
    updates_per_step: int = Field(1, ge=1, le=64)
    target_every: int = Field(250, ge=1, description="updates between copies to the target network")
    epsilon_start: float = Field(1.0, ge=0.0, le=1.0)
    epsilon_end: float = Field(0.05, ge=0.0, le=1.0)
    epsilon_fraction: float = Field(0.5, gt=0.0, le=1.0, description="share of the episodes epsilon decays over")
    start: Literal["feature", "none"] = Field(
        "feature", description="'feature': Q is a residual on a linear prior that starts as the feature-based "
        "scheduler and is improved by policy search before DQN; 'none': a plain Q-network")
    search_generations: int = Field(10, ge=0, le=1000, description="cross-entropy search generations of the prior")
    search_population: int = Field(12, ge=2, le=256, description="candidate weightings per generation")
    search_nights: int = Field(4, ge=1, le=64, description="nights each candidate is scored on (the same for all)")
    search_sigma: float = Field(0.3, gt=0.0, le=10.0, description="initial spread of the candidates' weights")
    save_replay: bool = Field(True, description="checkpoint the replay memory too (STORE.data/replay.pt), so a "
                              "resumed run does not start with an empty memory")
    guide: Literal["none", "greedy", "feature"] = Field(
        "none", description="half of the exploratory actions come from this baseline scheduler instead of chance")
    cql_alpha: float = Field(1.0, ge=0.0, description="weight of the CQL penalty when training offline")
    offline_updates: int = Field(2000, ge=1)
    seed: int = Field(0, ge=0, lt=2**32)


def episode_seed(seed: int, episode: int, held_out: bool = False, search: bool = False) -> int:
    """The weather/transient seed of a training episode, of a search generation, or of the held-out nights
    (three separate streams)."""
    ss = np.random.SeedSequence([seed, 1 if held_out else 0, episode] + ([2] if search else []))
    return int(ss.generate_state(1)[0])


def step_duration(env: TelescopeEnv, obs: Observation, action: torch.Tensor) -> torch.Tensor:
    """Time from now to the end of observing `action` (slew, readout, exposure), in units of the exposure."""
    end = obs.plan.end.gather(1, action.view(-1, 1)).view(-1)
    return ((end - env.batch.now) * 86400.0 / env.sim.exposure).clamp(min=0.0).float()


class DQNAgent:
    """Online and target Q-networks, the optimiser and the update rule."""

    def __init__(self, opts: TrainOptions, n_inputs: int = len(ENCODED)):
        torch.manual_seed(opts.seed)
        self.opts = opts
        prior = [ENCODED.index(c) for c in PRIOR] if opts.start == "feature" else None
        self.net = TargetQNet(n_inputs, opts.hidden, opts.dueling, prior)
        if prior:
            self.net.prior_weights.copy_(torch.tensor([FEATURE_PRIOR[c] for c in PRIOR]))
        self.target = copy.deepcopy(self.net)
        self.optim = torch.optim.Adam(self.net.parameters(), lr=opts.lr)
        self.updates = 0

    def set_prior(self, weights: torch.Tensor) -> None:
        self.net.prior_weights.copy_(weights)
        self.target.prior_weights.copy_(weights)

    def loss(self, batch: Batch, cql_alpha: float = 0.0) -> torch.Tensor:
        """Huber TD loss against the double-DQN n-step target, plus alpha * (logsumexp Q - Q(s, a_data))."""
        q_all = self.net(batch.x, batch.mask)
        q = q_all.gather(1, batch.action.view(-1, 1)).view(-1)
        with torch.no_grad():
            best = masked_argmax(self.net(batch.next_x, batch.next_mask), batch.next_mask)
            q_next = self.target(batch.next_x, batch.next_mask).gather(1, best.view(-1, 1)).view(-1)
            q_next = torch.where(batch.bootstrap, q_next, torch.zeros_like(q_next))
            y = batch.ret + batch.discount * q_next
        loss = nn.functional.smooth_l1_loss(q, y)
        if cql_alpha > 0:
            loss = loss + cql_alpha * (torch.logsumexp(q_all, dim=1) - q).mean()
        return loss

    def update(self, batch: Batch, cql_alpha: float = 0.0) -> float:
        loss = self.loss(batch, cql_alpha)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), 10.0)
        self.optim.step()
        self.updates += 1
        if self.updates % self.opts.target_every == 0:
            self.target.load_state_dict(self.net.state_dict())
        return float(loss.detach())

    def state(self) -> dict[str, Any]:
        return {"network": self.net.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optim.state_dict(), "updates": self.updates}

    def restore(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["network"])
        self.target.load_state_dict(state["target"])
        self.optim.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


class OnlineTrainer:
    """Trains a DQNAgent on simulated nights, episode by episode; its `payload()` is a complete checkpoint."""

    def __init__(self, sim_options: dict[str, Any], opts: TrainOptions, resume: dict[str, Any] | None = None):
        self.sim_options, self.opts = dict(sim_options), opts
        self.env = TelescopeEnv.build(self.sim_options, opts.nights, episode_seed(opts.seed, 0))
        self.eval_env = TelescopeEnv.build(self.sim_options, opts.eval_nights, episode_seed(opts.seed, 0, held_out=True))
        self.agent = DQNAgent(opts)
        self.replay = NightReplay(opts.replay_steps, opts.nights, self.env.batch.n_fields, len(ENCODED))
        self.generator = torch.Generator().manual_seed(opts.seed)
        self.guide = {"greedy": greedy_scorer, "feature": feature_scorer}.get(opts.guide)
        self.episode, self.steps, self.evaluations, self.seconds = 0, 0, [], 0.0
        self.generations = opts.search_generations if opts.start == "feature" else 0
        self.generation = 0
        self.search: dict[str, torch.Tensor] = {}
        self.best: dict[str, Any] | None = None
        self.best_reward = -float("inf")
        self.replay_restored = 0
        if resume is not None:
            self.seconds = float(resume.get("seconds", 0.0))
            self.agent.restore(resume)
            self.episode, self.steps = int(resume["episode"]), int(resume["steps"])
            self.evaluations = list(resume["evaluations"])
            self.generator.set_state(resume["generator"])
            self.generation = int(resume.get("generation", 0))
            self.search = dict(resume.get("search", {}))
            self.best = resume.get("best_network")
            self.best_reward = float(resume.get("best_reward", -float("inf")))
            replay = resume.get("replay")
            if replay is not None:
                self.replay.load_state(replay)
                self.replay_restored = len(self.replay)

    @property
    def finished(self) -> bool:
        return self.generation >= self.generations and self.episode >= self.opts.episodes

    @property
    def searching(self) -> bool:
        return self.generation < self.generations

    def search_generation(self) -> dict[str, float]:
        """One generation of the cross-entropy search of the prior's weights: the current mean and
        `search_population` perturbations of it each schedule the same `search_nights` fresh nights (true
        reward); the mean moves to the best third. The network's prior is the mean after each generation."""
        t0 = time.perf_counter()
        o = self.opts
        mean = self.search.get("mean", self.agent.net.prior_weights.clone())
        std = self.search.get("std", torch.full_like(mean, o.search_sigma))
        cand = torch.cat([mean[None], mean + std * torch.randn(o.search_population, len(mean), generator=self.generator)])
        sim = TelescopeSimulator(**{**self.sim_options, "images": False, "nights": o.search_nights,
                                    "seed": episode_seed(o.seed, self.generation, search=True)})
        env = TelescopeEnv(sim, [n for _ in range(len(cand)) for n in range(o.search_nights)])
        rows = cand.repeat_interleave(o.search_nights, 0)
        net = self.agent.net
        score = run_nights(env, lambda obs: net.prior_score(obs.x, rows).masked_fill(~obs.mask, -torch.inf))
        totals = torch.tensor(score.night_totals).view(len(cand), o.search_nights).mean(1)
        elite = totals.argsort(descending=True)[: max(2, len(cand) // 3)]
        self.search = {"mean": cand[elite].mean(0), "std": (0.5 * cand[elite].std(0) + 0.5 * std).clamp(min=0.02)}
        self.agent.set_prior(self.search["mean"])
        self.generation += 1
        self.steps += int(score.decisions_per_night * score.nights)
        self.seconds += time.perf_counter() - t0
        return {"generation": self.generation, "reward_mean": float(totals[0]), "reward_best": float(totals.max())}

    def epsilon(self) -> float:
        frac = min(1.0, self.episode / max(1.0, self.opts.epsilon_fraction * self.opts.episodes))
        return self.opts.epsilon_start + frac * (self.opts.epsilon_end - self.opts.epsilon_start)

    def run_episode(self, on_step: Any = None) -> dict[str, float]:
        """One search generation while the search lasts, then one DQN episode: simulate fresh weather and
        transients while learning; returns its mean night reward."""
        if self.searching:
            return self.search_generation()
        t0 = time.perf_counter()
        self.env.reseed(episode_seed(self.opts.seed, self.episode))
        eps, total, losses = self.epsilon(), torch.zeros(self.env.size, dtype=torch.float64), []
        while not bool(self.env.done.all()):
            obs = self.env.observe()
            live = ~self.env.done
            with torch.no_grad():
                greedy = masked_argmax(self.agent.net(obs.x, obs.mask), obs.mask)
            noise = torch.rand(obs.mask.shape, generator=self.generator).masked_fill(~obs.mask, -1.0)
            explore = torch.rand(self.env.size, generator=self.generator) < eps
            action = torch.where(explore, noise.argmax(-1), greedy)
            if self.guide is not None:
                guided = explore & (torch.rand(self.env.size, generator=self.generator) < 0.5)
                action = torch.where(guided, masked_argmax(self.guide(self.env.sim)(obs), obs.mask), action)
            took = step_duration(self.env, obs, action) if self.opts.time_discount else None
            reward, _ = self.env.step(action, obs)
            total += reward
            self.replay.add(obs.x, obs.mask, action, reward, live, live & self.env.done, took)
            self.steps += int(live.sum())
            for _ in range(self.opts.updates_per_step):
                batch = self.replay.sample(self.opts.batch_size, self.opts.n_step, self.opts.gamma, self.generator)
                if batch is not None:
                    losses.append(self.agent.update(batch))
            if on_step is not None:
                on_step()
        self.episode += 1
        self.seconds += time.perf_counter() - t0
        return {"episode": self.episode, "reward_mean": float(total.mean()), "epsilon": eps,
                "loss": float(np.mean(losses)) if losses else float("nan")}

    def evaluate(self) -> NightScore:
        """Greedy on the Q-values over the held-out nights."""
        self.eval_env.reseed(episode_seed(self.opts.seed, 0, held_out=True))
        score = run_nights(self.eval_env, q_scorer(self.agent.net))
        self.evaluations.append({"episode": self.episode, "generation": self.generation, "steps": self.steps,
                                 **score.to_json()})
        if score.total_reward_mean > self.best_reward:
            self.best_reward = score.total_reward_mean
            self.best = copy.deepcopy(self.agent.net.state_dict())
        return score

    def payload(self) -> dict[str, Any]:
        out = {**self.agent.state(), "episode": self.episode, "steps": self.steps, "evaluations": self.evaluations,
               "seconds": self.seconds, "generator": self.generator.get_state(), "generation": self.generation,
               "search": self.search, "config": model_config(self.sim_options, self.opts)}
        if self.best is not None:  # the network the policy uses: the best one on the held-out evaluation nights
            out.update(best_network=self.best, best_reward=self.best_reward)
        return out


def model_config(sim_options: dict[str, Any], opts: TrainOptions) -> dict[str, Any]:
    """What a checkpoint must say to be used: the feature encoding, the network's shape, the simulator trained on."""
    return {"encoding": ENCODING, "inputs": list(ENCODED), "hidden": opts.hidden, "dueling": opts.dueling,
            "prior": list(PRIOR) if opts.start == "feature" else [],
            "simulator": dict(sim_options),
            "train": opts.model_dump()}


def network_from(payload: dict[str, Any]) -> TargetQNet:
    """The online network of a checkpoint payload; CheckpointError-like ValueError if its encoding is not ours."""
    cfg = payload.get("config", {})
    if cfg.get("encoding") != ENCODING or list(cfg.get("inputs", [])) != list(ENCODED):
        raise ValueError(f"checkpoint {payload.get('path')}: feature encoding {cfg.get('encoding')!r} is not "
                         f"{ENCODING!r}; retrain with this version of aec")
    prior = [ENCODED.index(c) for c in cfg.get("prior", [])]
    net = TargetQNet(len(ENCODED), int(cfg["hidden"]), bool(cfg.get("dueling", False)), prior)
    net.load_state_dict(payload.get("best_network") or payload["network"])
    net.eval()
    return net
