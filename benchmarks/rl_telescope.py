"""The RL telescope scheduler against its baselines on held-out simulated nights.

Per policy (rl: the trained Q-network as `policy: {kind: rl}` schedules by default, among the targets worth at
least its `floor` of the best known value; rl@0: the network alone; greedy: highest expected immediate reward;
feature: the Rubin-like weighted sum; random): fraction of the maximum achievable reward per step, twice (policies/rl/evaluate.py):
oracle (the reward summed over every step divided by the best allowed target's full reward, undetected
transients included, summed over the same states, Terranova et al. 2023) and fair (what a scheduler can
know before looking, per exposure-length of telescope time, slews included); total reward per night and
where it came from (first detections of transients, new epochs of detected ones, depth), fields visited
and revisits per night, transients caught with at least 3 epochs, slew-time fraction and decision latency
(batched over the nights, per night-decision). The nights are those of the checkpoint's simulator options
with weather and transients drawn from `--seed`, which no training run uses for its held-out nights unless
told to. `--bayesian-trials K` also runs the cost-aware BoTorch policy (a campaign) for the first K
decisions of `--bayesian-nights` nights, and compares every policy over those same first K decisions.

    python benchmarks/rl_telescope.py --checkpoint runs/telescope_rl_agent.db --nights 20 --seed 101 --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policies.rl import checkpoint as ckpt  # noqa: E402
from policies.rl.agent import network_from  # noqa: E402
from policies.rl.env import TelescopeEnv  # noqa: E402
from policies.rl.evaluate import run_nights  # noqa: E402
from policies.rl.scorers import feature_scorer, greedy_scorer, q_scorer, random_scorer  # noqa: E402
from policies.rl.policy import RLPolicy  # noqa: E402
from policies.rl.values import floored  # noqa: E402
from simulators.telescope import TelescopeSimulator  # noqa: E402

DEFAULT_FLOOR = RLPolicy.Options.model_fields["floor"].default


def held_out(options: dict[str, Any], nights: int, seed: int) -> TelescopeEnv:
    sim = TelescopeSimulator(**{**options, "images": False, "nights": nights, "seed": seed})
    return TelescopeEnv(sim, list(range(nights)))


def compare(payload: dict[str, Any], nights: int, seed: int, floors: list[float] = ()) -> dict[str, Any]:
    """Every policy over the same held-out nights (rebuilt from the seed before each one). `rl` is the agent as
    `policy: {kind: rl}` schedules by default (its floor, DEFAULT_FLOOR); `rl@F` the agent with floor F, choosing
    only among targets worth at least F x the best known value of the state (`rl@0`: the agent alone)."""
    options = dict(payload["config"]["simulator"])
    net = network_from(payload)
    env = held_out(options, nights, seed)
    q = q_scorer(net)
    scorers = {"rl": floored(q, env, DEFAULT_FLOOR), "greedy": greedy_scorer(env.sim), "feature": feature_scorer(env.sim),
               "random": random_scorer(seed)}
    for floor in dict.fromkeys([0.0, *floors]):
        if floor != DEFAULT_FLOOR:
            scorers[f"rl@{floor:g}"] = floored(q, env, floor)
    out = {}
    for name, scorer in scorers.items():
        env.reseed(seed)
        t0 = time.perf_counter()
        score = run_nights(env, scorer).to_json()
        out[name] = {**score, "seconds": round(time.perf_counter() - t0, 2)}
    return out


def paired(policies: dict[str, Any], against: str = "rl") -> dict[str, Any]:
    """Per-night differences `against` - each other policy over the same nights (same weather and transients):
    mean, standard error, the interval mean +- 2 SE, and on how many nights `against` was ahead."""
    mine = torch.tensor(policies[against]["night_totals"], dtype=torch.float64)
    out = {}
    for name, score in policies.items():
        if name == against:
            continue
        d = mine - torch.tensor(score["night_totals"], dtype=torch.float64)
        se = float(d.std() / len(d) ** 0.5) if len(d) > 1 else None  # strict JSON: null, never NaN
        mean = float(d.mean())
        out[name] = {"mean": mean, "se": se, "low": None if se is None else mean - 2 * se,
                     "high": None if se is None else mean + 2 * se,
                     "relative": mean / max(float(torch.tensor(score["night_totals"]).mean()), 1e-12),
                     "ahead": int((d > 0).sum()), "nights": len(d)}
    return out


def bayesian(payload: dict[str, Any], trials: int, nights: int, seed: int) -> dict[str, Any]:
    """The cost-aware BoTorch policy (as in examples/telescope_night_bo.yaml) for the first `trials` decisions of
    each of `nights` nights, each a campaign, and every other policy over the same first decisions."""
    import tempfile

    import numpy as np

    from controller.campaign import Campaign
    from controller.config import validate_config
    from controller.store import Store
    from policies import History, Observation
    from policies.rl.policy import rebuild_night

    options = {**payload["config"]["simulator"]}
    results: dict[str, list[tuple[float, float]]] = {}
    net = network_from(payload)
    for k in range(nights):
        night_seed = seed + 1000 * (k + 1)
        sim_opts = {**options, "seed": night_seed, "nights": 1}
        with tempfile.TemporaryDirectory() as tmp:
            data = {"name": f"bo-night-{k}", "seed": night_seed,
                    "space": {"pool": {"simulator": True, "columns": ["ra", "dec"]}},
                    "objectives": [{"metric": "reward", "goal": "maximize"}],
                    "instrument": {"kind": "simulator", "name": "telescope", "options": {**sim_opts, "images": False}},
                    "policy": {"kind": "botorch", "acquisition": "ucb", "beta": 2.0, "initial": 8,
                               "cost_aware": "divide", "dwell": float(options.get("exposure", 30.0)) + 8.0},
                    "budget": {"trials": trials}, "store": f"{tmp}/bo.db"}
            cfg = validate_config(data, base_dir=Path(tmp), source="bayesian benchmark")
            Campaign(cfg).run()
            with Store(f"{tmp}/bo.db") as st:
                done = sorted((t for t in st.trials() if t.status == "completed"), key=lambda t: t.finished_seq or 0)
        sim = TelescopeSimulator(**{**sim_opts, "images": False})
        got = best = 0.0
        history = History()
        for t in done:
            best += float(rebuild_night(sim, history).batch.preview().max().clamp(min=0.0))
            got += float(t.metrics["reward"])
            history.append(Observation(t.id, np.asarray(t.x), dict(t.metrics), pool_index=t.pool_index))
        results.setdefault("bayesian", []).append((got, best))
        for name, make in {"rl": lambda s: q_scorer(net), "greedy": greedy_scorer, "feature": feature_scorer}.items():
            env = TelescopeEnv(TelescopeSimulator(**{**sim_opts, "images": False}), [0])
            scorer = make(env.sim)
            got = best = 0.0
            for _ in range(len(done)):
                obs = env.observe()
                best += float(env.batch.preview(obs.plan).max().clamp(min=0.0))
                got += float(env.step(scorer(obs).argmax(-1), obs)[0][0])
            results.setdefault(name, []).append((got, best))
    return {name: {"fraction_of_max_reward": sum(g for g, _ in v) / max(sum(b for _, b in v), 1e-12),
                   "reward_first_decisions_mean": sum(g for g, _ in v) / len(v), "nights": len(v),
                   "decisions": trials} for name, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a training store (its latest checkpoint) or a .pt file")
    p.add_argument("--nights", type=int, default=20, help="held-out nights")
    p.add_argument("--seed", type=int, default=101, help="weather and transient seed of the held-out nights")
    p.add_argument("--bayesian-trials", type=int, default=0, help="also run the BoTorch policy for this many decisions")
    p.add_argument("--bayesian-nights", type=int, default=2)
    p.add_argument("--floor", type=float, nargs="*", default=[],
                   help="also run the agent with these floors (rl@F: only targets worth >= F x the best known value); "
                   "'rl' is the policy's default floor, 'rl@0' the agent without one, both always run")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    try:
        payload = ckpt.load(args.checkpoint)
    except ckpt.CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "benchmark": "rl_telescope", "nights": args.nights, "seed": args.seed, "checkpoint": payload["path"],
        "training": {"steps": payload.get("steps"), "episodes": payload.get("episode"),
                     "seconds": payload.get("seconds"), "train": payload["config"].get("train"),
                     "simulator": payload["config"]["simulator"]},
        "policies": compare(payload, args.nights, args.seed, args.floor),
    }
    result["paired"] = {"against": "rl", "differences": paired(result["policies"])}
    if args.bayesian_trials > 0:
        result["first_decisions"] = bayesian(payload, args.bayesian_trials, args.bayesian_nights, args.seed)
    text = json.dumps(result, indent=None if args.json else 2)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(text)
    else:
        for name, s in result["policies"].items():
            src = s["reward_by_source"]
            print(f"{name:8s} {100 * s['fraction_of_max_reward']:5.1f}% of max/step (oracle), "
                  f"{100 * s['fraction_of_max_reward_fair']:5.1f}% (fair)  reward/night "
                  f"{s['total_reward_mean']:8.1f} +- {s['total_reward_std']:6.1f}  3-epoch transients "
                  f"{s['transients_3_epochs_mean']:6.1f}  slew {100 * s['slew_fraction']:4.1f}%  "
                  f"{s['decision_latency_ms']:.3f} ms/decision")
            print(f"{'':8s} reward by source: new transients {src['transient_new']:.1f}, new epochs "
                  f"{src['transient_repeat']:.1f}, depth {src['depth']:.1f}; fields visited "
                  f"{s['fields_visited_mean']:.1f}, revisits {s['revisits_mean']:.1f} per night")
        for name, d in result["paired"]["differences"].items():
            spread = "n/a" if d["se"] is None else f"{2 * d['se']:.1f}"
            print(f"rl - {name:8s} per night: {d['mean']:+8.1f} +- {spread} (2 SE; {100 * d['relative']:+.1f}%), "
                  f"ahead on {d['ahead']} of {d['nights']} nights")
        for name, s in result.get("first_decisions", {}).items():
            print(f"first {s['decisions']} decisions of {s['nights']} night(s): {name:8s} "
                  f"{100 * s['fraction_of_max_reward']:5.1f}% of max/step, reward {s['reward_first_decisions_mean']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
