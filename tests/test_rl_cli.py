"""The RL scheduler through aec's edges: `aec validate`, `aec train-rl` (resumable after kill -9, offline from a
campaign's store) and `policy: {kind: rl | greedy}` scheduling a campaign from its history alone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from controller.cli import main
from controller.store import Store
from policies.rl import checkpoint as ckpt
from policies.rl.env import TelescopeEnv
from policies.rl.scorers import greedy_scorer
from simulators.telescope import TelescopeSimulator

ROOT = Path(__file__).resolve().parent.parent
SKY = {"catalogue": {"spacing": 12.0, "ra_min": 40.0, "ra_max": 220.0, "dec_min": -80.0, "dec_max": 10.0},
       "n_transients": 200, "exposure": 300.0, "cutout_size": 16, "seed": 11}
TRAIN = {"episodes": 2, "nights": 2, "eval_nights": 2, "eval_every": 1, "hidden": 16, "batch_size": 32,
         "replay_steps": 400, "offline_updates": 60, "search_generations": 1, "search_population": 2,
         "search_nights": 1}


def campaign(tmp_path: Path, name: str, policy: dict, trials: int = 6) -> Path:
    data = {"name": name, "seed": 5, "space": {"pool": {"simulator": True, "columns": ["ra", "dec"]}},
            "objectives": [{"metric": "reward", "goal": "maximize"}],
            "instrument": {"kind": "simulator", "name": "telescope", "options": dict(SKY)},
            "policy": policy, "budget": {"trials": trials}, "store": str(tmp_path / f"{name}.db")}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A campaign file with kind rl and its training store after `aec train-rl`."""
    tmp = tmp_path_factory.mktemp("rl")
    store = tmp / "agent.db"
    path = campaign(tmp, "rl-night", {"kind": "rl", "checkpoint": str(store), "train": TRAIN})
    assert main(["train-rl", str(path), "--quiet"]) == 0
    return path, store


def test_validate_accepts_kind_rl_and_names_a_missing_checkpoint(trained, tmp_path, capsys):
    path, _ = trained
    assert main(["validate", str(path)]) == 0
    missing = campaign(tmp_path, "no-agent", {"kind": "rl", "checkpoint": str(tmp_path / "nowhere.db")})
    capsys.readouterr()
    assert main(["validate", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {missing}: policy.checkpoint: {tmp_path / 'nowhere.db'}: no such checkpoint file or "
                   "training store; train it with `aec train-rl FILE`"]
    assert main(["run", str(missing)]) == 2
    bad = campaign(tmp_path, "bad-train", {"kind": "rl", "checkpoint": "x.db", "train": {"episodes": 0}})
    assert main(["validate", str(bad)]) == 2
    assert "policy.train.episodes" in capsys.readouterr().err


def test_rl_policy_schedules_a_campaign_with_q_values_in_its_reasons(trained, tmp_path):
    path, store = trained
    data = yaml.safe_load(path.read_text())
    data["store"] = str(tmp_path / "night.db")
    night = tmp_path / "night.yaml"
    night.write_text(yaml.safe_dump(data))
    assert main(["run", str(night), "--quiet"]) == 0
    with Store(tmp_path / "night.db") as st:
        trials = st.trials()
    assert [t.status for t in trials] == ["completed"] * 6
    latest = str(ckpt.resolve(store))
    for t in trials:
        r = t.reason
        assert r["policy"] == "rl" and r["checkpoint"] == latest and r["floor"] == 0.9
        assert "q_runner_up" not in r or (r["q_chosen"] >= r["q_runner_up"] and r["runner_up_pool_index"] != t.pool_index)
    assert len({t.pool_index for t in trials}) == 6  # a fresh night: no field is worth observing twice so soon


def test_greedy_campaign_rebuilt_from_its_history_matches_the_environment(tmp_path):
    """The policy sees only the store's history (and pending trials); the schedule it makes must be the one the
    batched environment makes with the same scorer on the same simulated night, reward for reward."""
    path = campaign(tmp_path, "greedy", {"kind": "greedy", "simulator": dict(SKY)}, trials=8)
    assert main(["run", str(path), "--quiet"]) == 0
    with Store(tmp_path / "greedy.db") as st:
        trials = sorted(st.trials(), key=lambda t: t.id)
    sim = TelescopeSimulator(**{**SKY, "images": False, "nights": 1})
    env = TelescopeEnv(sim, [0])
    scorer = greedy_scorer(sim)
    for t in trials:
        obs = env.observe()
        row = int(scorer(obs)[0].argmax())
        reward, _ = env.step(torch.tensor([row]), obs)
        assert t.pool_index == row
        assert t.metrics["reward"] == pytest.approx(float(reward[0]), rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_train_rl_resumes_after_kill_9_from_its_latest_checkpoint(tmp_path):
    store = tmp_path / "agent.db"
    train = {**TRAIN, "episodes": 3, "eval_every": 2}
    path = campaign(tmp_path, "resume", {"kind": "rl", "checkpoint": str(store), "train": train})
    cmd = [sys.executable, "-m", "controller.cli", "train-rl", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.list_checkpoints(store) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = ckpt.list_checkpoints(store)
    assert first, "no checkpoint before the kill"
    done = ckpt.load(first[-1])["episode"]
    assert done < 3
    out = subprocess.run(cmd + ["--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = yaml.safe_load(out.stdout)
    final = ckpt.load(store)
    assert result["episodes"] == 3 and final["episode"] == 3
    assert [e["episode"] for e in final["evaluations"]] == [0, 2, 3]  # 0: after the prior's search
    assert final["steps"] > ckpt.load(first[-1])["steps"] and final["generation"] == 1
    memory = ckpt.load(ckpt.checkpoint_dir(store) / "replay.pt")  # the replay memory, checkpointed with it
    assert memory["steps"] == final["steps"] and int(memory["replay"]["written"]) > 0


def test_offline_training_learns_from_a_store_made_by_a_campaign(tmp_path, capsys):
    recorded = campaign(tmp_path, "logged", {"kind": "random"}, trials=12)
    assert main(["run", str(recorded), "--quiet"]) == 0
    store = tmp_path / "offline-agent.db"
    path = campaign(tmp_path, "offline", {"kind": "rl", "checkpoint": str(store), "train": TRAIN})
    capsys.readouterr()
    assert main(["train-rl", str(path), "--offline", str(tmp_path / "logged.db"), "--json"]) == 0
    result = yaml.safe_load(capsys.readouterr().out)
    assert result["steps"] == 12
    payload = ckpt.load(store)
    assert payload["config"]["offline_transitions"] == 12
    evaluation = payload["evaluations"][0]
    assert evaluation["offline"] and evaluation["nights"] == 2 and evaluation["total_reward_mean"] > 0
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["train-rl", str(path), "--store", str(tmp_path / "logged.db")]) == 2
    assert "not an RL training store" in capsys.readouterr().err


@pytest.mark.slow
def test_the_example_trains_and_schedules_a_night(tmp_path, capsys):
    """examples/telescope_rl.yaml as the README runs it (train-rl, then run), with a one-night training round."""
    data = yaml.safe_load((ROOT / "examples" / "telescope_rl.yaml").read_text())
    data["policy"]["checkpoint"] = str(tmp_path / "agent.db")
    data["policy"]["train"].update(nights=1, eval_nights=1, replay_steps=300, search_generations=1,
                                   search_population=2, search_nights=1)
    data["store"] = str(tmp_path / "night.db")
    path = tmp_path / "telescope_rl.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train-rl", str(path), "--episodes", "1", "--quiet"]) == 0
    assert main(["validate", str(path), "--quiet"]) == 0
    assert main(["run", str(path), "--trials", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == 4, summary


def test_validate_names_a_damaged_checkpoint(trained, tmp_path, capsys):
    path, store = trained
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.resolve(store).read_bytes()[:100])
    broken = campaign(tmp_path, "broken", {"kind": "rl", "checkpoint": str(bad)})
    capsys.readouterr()
    assert main(["validate", str(broken)]) == 2
    assert f"policy.checkpoint: {bad}: not a readable checkpoint" in capsys.readouterr().err


def test_a_damaged_replay_memory_is_one_line_error_when_resuming(trained, tmp_path, capsys):
    import shutil

    path, store = trained
    copy = tmp_path / "agent.db"
    shutil.copy(store, copy)
    shutil.copytree(ckpt.checkpoint_dir(store), ckpt.checkpoint_dir(copy))
    assert (ckpt.checkpoint_dir(copy) / "replay.pt").is_file()  # checkpointed with the agent
    (ckpt.checkpoint_dir(copy) / "replay.pt").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["train-rl", str(path), "--store", str(copy), "--episodes", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "replay.pt: not a readable checkpoint" in err[0]
    assert "delete it" in err[0]
