"""The RL telescope scheduler's parts: the batched environment (masks, the simulator's reward), checkpoints,
and a short training run that beats random scheduling by more than chance allows."""
from __future__ import annotations

import math

import pytest
import torch

from policies.rl import checkpoint as ckpt
from policies.rl.agent import DQNAgent, OnlineTrainer, TrainOptions, network_from
from policies.rl.env import ENCODED, ENCODING, PRIOR, TelescopeEnv
from policies.rl.evaluate import run_nights
from policies.rl.values import best_value, fair_values, floored, known_reward, near_best
from policies.rl.scorers import feature_scorer, greedy_scorer, q_scorer, random_scorer
from simulators import SimulatorError
from simulators.telescope import TelescopeSimulator
from simulators.telescope.batch import REWARD_SOURCES, NightBatch

# ~90 fields over the sky the site reaches in the evening, 5-minute exposures: ~100 decisions a night
TINY = {"catalogue": {"spacing": 12.0, "ra_min": 40.0, "ra_max": 220.0, "dec_min": -80.0, "dec_max": 10.0},
        "n_transients": 200, "exposure": 300.0}


def test_environment_masks_targets_below_the_limit_during_their_exposure_and_refuses_them():
    env = TelescopeEnv.build({**TINY, "dtype": "float64"}, nights=3, seed=5)
    sim, g = env.sim, torch.Generator().manual_seed(0)
    checked = 0
    while not bool(env.done.all()):
        obs = env.observe()
        plan = obs.plan
        alt_start = sim.conditions(plan.start)["altitude"]
        alt_end = sim.conditions(plan.end)["altitude"]
        ok = (torch.minimum(alt_start, alt_end) >= sim.altitude_limit) & (plan.end <= env.batch.morning.view(-1, 1))
        live = ~env.done
        assert torch.equal(obs.mask[live], ok[live])
        assert not bool(obs.mask[~live].any())
        assert bool((~obs.mask[live]).any())  # part of the catalogue is always below the limit
        if checked == 3:
            masked = torch.nonzero(~obs.mask[0])[0]
            with pytest.raises(SimulatorError, match="masked"):
                env.step(torch.cat([masked, torch.zeros(env.size - 1, dtype=torch.long)]), obs)
        pick = torch.where(obs.mask, torch.rand(obs.mask.shape, generator=g), torch.tensor(-1.0)).argmax(-1)
        env.step(pick, obs)
        checked += 1
    assert checked > 50
    assert bool((env.batch.clock <= env.batch.morning).all())


def test_batched_nights_give_the_simulators_own_reward_and_clock():
    opts = {**TINY, "exposure": 60.0, "n_transients": 600, "images": False, "seed": 3, "nights": 2}
    sim = TelescopeSimulator(**opts)
    batch = NightBatch(TelescopeSimulator(**opts), [0])
    g = torch.Generator().manual_seed(1)
    rewards = []
    for _ in range(40):
        plan = batch.plan()
        allowed = torch.nonzero(plan.allowed[0]).view(-1)
        row = int(allowed[torch.randint(len(allowed), (1,), generator=g)])
        preview = batch.preview(plan)[0, row]
        reward, detected = batch.step(torch.tensor([row]), plan)
        _, expected, _, info = sim.step(row)
        assert float(reward[0]) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert float(preview) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert float(detected[0]) == info["metrics"]["n_detected"]
        assert float(batch.clock[0]) == pytest.approx(sim.clock, abs=1e-9)
        rewards.append(expected)
    assert sum(r > 0 for r in rewards) > 20
    assert torch.allclose(batch.features()[0], sim.features(), atol=1e-6)


def test_checkpoints_round_trip_and_are_written_atomically(tmp_path):
    agent = DQNAgent(TrainOptions(hidden=16, seed=4))
    payload = {**agent.state(), "episode": 2, "steps": 77, "evaluations": [{"episode": 2, "total_reward_mean": 1.5}],
               "generator": torch.Generator().manual_seed(0).get_state(),
               "config": {"encoding": ENCODING, "inputs": list(ENCODED), "hidden": 16, "prior": list(PRIOR),
                          "simulator": dict(TINY), "train": {}}}
    store = tmp_path / "agent.db"
    first = ckpt.save(ckpt.checkpoint_dir(store) / ckpt.checkpoint_name(77), payload)
    second = ckpt.save(ckpt.checkpoint_dir(store) / ckpt.checkpoint_name(150), {**payload, "steps": 150})
    assert ckpt.resolve(store) == second and ckpt.resolve(first) == first
    loaded = ckpt.load(store)
    assert loaded["steps"] == 150 and loaded["evaluations"] == payload["evaluations"]
    net = network_from(loaded)
    x, mask = torch.randn(3, 11, len(ENCODED)), torch.rand(3, 11) > 0.3
    assert torch.equal(net(x, mask), agent.net(x, mask))
    with pytest.raises(Exception):
        ckpt.save(second, {"not a tensor": lambda: None})  # fails while writing: the old file must survive
    assert ckpt.load(second)["steps"] == 150
    assert not list(ckpt.checkpoint_dir(store).glob(".tmp-*"))
    second.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint") as info:
        ckpt.load(second)
    assert "\n" not in str(info.value)  # one line for `error: ...`, not torch's whole explanation
    with pytest.raises(ckpt.CheckpointError, match="no such"):
        ckpt.load(tmp_path / "missing.db")


@pytest.mark.slow
def test_a_short_training_run_beats_random_by_more_than_chance():
    """Held-out nights (their own weather and transient seed): the trained agent's total reward over K nights is
    compared with R random schedules of the same nights. If the agent were no better than random, its total would
    be one more draw from the random schedules' distribution; we ask for a total above their mean by more than
    3.5 standard deviations of that distribution (one-sided p < 3e-4 for a Gaussian) and above every one of
    the R = 16 random draws (p = 1/17 by exchangeability alone, whatever the distribution). The agent is
    measured at about 4.8 standard deviations (greedy scheduling reaches about the same)."""
    opts = TrainOptions(episodes=5, nights=4, eval_nights=4, hidden=32, batch_size=64, gamma=0.95,
                        epsilon_fraction=0.6, seed=1, start="none")  # plain DQN: no prior, no search
    trainer = OnlineTrainer({**TINY, "dtype": "float32"}, opts)
    for _ in range(opts.episodes):
        trainer.run_episode()
    k, r = 4, 16
    sim = TelescopeSimulator(**{**TINY, "dtype": "float32", "images": False, "nights": k, "seed": 4321})
    trained = run_nights(TelescopeEnv(sim, list(range(k))), q_scorer(trainer.agent.net))
    sim.reset(4321)
    scheduled = run_nights(TelescopeEnv(sim, [n for _ in range(r) for n in range(k)]), random_scorer(7))
    totals = torch.tensor(scheduled.night_totals).view(r, k).sum(1)
    rl_total = sum(trained.night_totals)
    mean, sd = float(totals.mean()), float(totals.std())
    assert rl_total > mean + 3.5 * sd, (rl_total, mean, sd)
    assert rl_total > float(totals.max())
    assert trained.fraction_of_max_reward > scheduled.fraction_of_max_reward


def _paired(k: int, seed: int, *scorers) -> list[torch.Tensor]:
    """Night totals of each scorer over the same k held-out nights (weather and transients from `seed`)."""
    sim = TelescopeSimulator(**{**TINY, "dtype": "float32", "images": False, "nights": k, "seed": seed})
    env, out = TelescopeEnv(sim, list(range(k))), []
    for make in scorers:
        env.reseed(seed)
        out.append(torch.tensor(run_nights(env, make(sim)).night_totals))
    return out


@pytest.mark.slow
def test_the_default_agent_beats_the_feature_scheduler_on_held_out_nights():
    """The default agent starts from the feature-based scheduler (its prior) and improves it by policy search on
    training nights; on 8 held-out nights (a seed no training used) it must win by the paired per-night difference
    (mean > 2 standard errors) and in total. The issue-18 agent (plain DQN) lost to it on 19 of 20 nights."""
    opts = TrainOptions(episodes=1, nights=2, eval_nights=2, hidden=16, search_generations=6, search_population=8,
                        search_nights=2, seed=1)
    trainer = OnlineTrainer({**TINY, "dtype": "float32"}, opts)
    while trainer.searching:
        trainer.run_episode()
    trainer.evaluate()
    net = network_from(trainer.payload())
    rl, feature = _paired(8, 4321, lambda sim: q_scorer(net), feature_scorer)
    d = rl - feature
    assert float(rl.sum()) > float(feature.sum()), (rl, feature)
    assert float(d.mean()) > 2 * float(d.std()) / len(d) ** 0.5, (rl, feature)
    assert int((d > 0).sum()) > int((d < 0).sum())


def test_the_prior_starts_as_the_feature_scheduler_and_the_residual_at_zero():
    """Before any training the default agent schedules as the feature scheduler does (the search starts there)."""
    net = DQNAgent(TrainOptions(hidden=16, seed=3)).net
    rl, feature = _paired(2, 77, lambda sim: q_scorer(net), feature_scorer)
    assert torch.allclose(rl, feature, rtol=0.1), (rl, feature)


def test_the_replay_memory_is_restored_on_resume(tmp_path):
    """A resumed trainer continues with the replay memory it had (it used to start empty after a resume)."""
    opts = TrainOptions(episodes=2, nights=2, eval_nights=1, hidden=16, batch_size=16, replay_steps=400,
                        start="none", seed=2)
    first = OnlineTrainer({**TINY, "dtype": "float32"}, opts)
    first.run_episode()
    ckpt.save(tmp_path / "replay.pt", {"steps": first.steps, "replay": first.replay.state()})
    path = ckpt.save(tmp_path / "rl-step-00000001.pt", first.payload())
    resume = ckpt.load(path)
    resume["replay"] = ckpt.load(tmp_path / "replay.pt")["replay"]
    second = OnlineTrainer({**TINY, "dtype": "float32"}, opts, resume=resume)
    assert len(first.replay) > 0 and len(second.replay) == len(first.replay) == second.replay_restored
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = first.replay.sample(16, 3, 0.9, g1), second.replay.sample(16, 3, 0.9, g2)
    assert torch.equal(a.x, b.x) and torch.equal(a.ret, b.ret) and torch.equal(a.action, b.action)
    with pytest.raises(ValueError, match="shape"):
        OnlineTrainer({**TINY, "dtype": "float32"}, opts.model_copy(update={"nights": 3}), resume=resume)


def test_greedy_scores_only_observable_fields_and_prefers_unvisited_deep_ones():
    env = TelescopeEnv.build({**TINY, "dtype": "float64"}, nights=1, seed=2)
    obs = env.observe()
    scores = greedy_scorer(env.sim)(obs)
    assert bool(torch.isinf(scores[~obs.mask]).all()) and bool(torch.isfinite(scores[obs.mask]).all())
    best = int(scores[0].argmax())
    env.step(torch.tensor([best]), obs)
    again = greedy_scorer(env.sim)(env.observe())
    assert float(again[0, best]) < 0.05 * float(scores[0, best])
    assert not math.isnan(float(again[0].max()))


def test_fair_max_reward_per_step_counts_only_known_reward_and_charges_the_overhead():
    # target 0: 60 s away, depth 1.5 plus a new epoch (0.5) of a transient seen before; target 1: deeper (3.0)
    # but 120 s away; target 2: no overhead, depth 1.0, and a transient nobody has detected yet (4.0)
    t = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
    parts = {"transient_new": t([[0.0, 0.0, 4.0]]), "transient_repeat": t([[0.5, 0.0, 0.0]]),
             "depth": t([[1.5, 3.0, 1.0]])}
    overhead, exposure, allowed = t([[60.0, 120.0, 0.0]]), 120.0, torch.ones(1, 3, dtype=torch.bool)
    values = fair_values(known_reward(parts), overhead, exposure, allowed)
    assert values[0].tolist() == pytest.approx([2.0 * 120 / 180, 3.0 * 120 / 240, 1.0])
    assert float(best_value(values)[0]) == pytest.approx(1.5)
    oracle = sum(parts.values())
    assert float(best_value(oracle)[0]) == pytest.approx(5.0)
    # choosing target 0: 40% of the oracle's best, 89% of the best a scheduler could know of
    assert float(oracle[0, 0] / best_value(oracle)[0]) == pytest.approx(0.4)
    assert float(values[0, 0] / best_value(values)[0]) == pytest.approx((4.0 / 3.0) / 1.5)
    masked = fair_values(known_reward(parts), overhead, exposure, t([[1, 0, 1]]).bool())
    assert float(best_value(masked)[0]) == pytest.approx(4.0 / 3.0) and masked[0, 1] == -math.inf
    closed = fair_values(torch.zeros(1, 3, dtype=torch.float64), overhead, exposure, allowed)
    assert float(best_value(closed)[0]) == 0.0


def test_night_scores_split_the_reward_by_source_and_the_fair_fraction_is_one_for_its_own_argmax():
    env = TelescopeEnv.build({**TINY, "dtype": "float64"}, nights=2, seed=11)
    score = run_nights(env, feature_scorer(env.sim))
    assert sum(score.reward_by_source.values()) == pytest.approx(score.total_reward_mean, rel=1e-9)
    assert set(score.reward_by_source) == set(REWARD_SOURCES)
    assert score.reward_by_source["transient_new"] > 0 and score.reward_by_source["depth"] > 0
    assert 0.0 < score.fraction_of_max_reward_fair <= 1.0 and 0.0 < score.fraction_of_max_reward <= 1.0
    visits = env.batch.n_visits.sum(-1).mean()
    assert score.fields_visited_mean + score.revisits_mean == pytest.approx(float(visits))

    def fair_argmax(obs):
        overhead = (obs.plan.start - env.batch.now.view(-1, 1)) * 86400.0
        return fair_values(known_reward(env.batch.preview_parts(obs.plan)), overhead, env.sim.exposure, obs.mask)
    env.reseed(11)
    best = run_nights(env, fair_argmax)
    assert best.fraction_of_max_reward_fair == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("floor", [0.8, 0.95])
def test_a_floor_keeps_every_step_within_that_fraction_of_the_best_known_value(floor):
    """near_best masks every target worth less than floor x the state's best known value, so the fair per-step
    fraction is at least `floor` by construction, whatever the scorer (here random, which alone reaches ~70%)."""
    env = TelescopeEnv.build({**TINY, "dtype": "float64"}, nights=2, seed=13)
    alone = run_nights(env, random_scorer(5))
    env.reseed(13)
    rand = random_scorer(5)
    held = run_nights(env, floored(rand, env, floor))
    assert alone.fraction_of_max_reward_fair < floor
    assert held.fraction_of_max_reward_fair >= floor - 1e-9
    values = torch.tensor([[4.0, 3.7, 1.0, -math.inf], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    masked = near_best(torch.zeros(2, 4, dtype=torch.float64), values, 0.9)
    assert torch.isfinite(masked).tolist() == [[True, True, False, False], [True, True, True, True]]
