"""Campaigns on Ray workers end to end (`aec run`, `aec resume`), on a real local Ray with 2 CPUs and one
GPU declared to Ray (Ray's own resource accounting; with a CPU-only torch a worker given that GPU
genuinely cannot use it): exact counts, the same results as the local executor, a dying worker's trial
retried, data products recorded once, and GPU requests that fall back or cannot be met."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller import Campaign, Store, load_config
from controller.cli import main
from controller.progress import SilentReporter
from tests.ray_helpers import ray_fixture

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

DIES_ONCE = '''
import os

def dies_once(p):
    """The first call kills its whole worker process, as the OOM killer or a lost node would."""
    marker = os.path.join(os.path.dirname(__file__), "died")
    try:  # atomic, so two workers measuring at once cannot both die
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return {"y": (p["x0"] - 0.3) ** 2 + p["x1"]}
    os._exit(1)
'''

RAY = {"kind": "ray", "workers": 4, "cpus_per_worker": 0.25}


local_ray = ray_fixture(num_gpus=1)


def _run(argv: list[str], capsys) -> tuple[int, dict, str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def test_aec_run_on_four_ray_workers_matches_the_local_executor_and_resumes(write_campaign, capsys):
    local = write_campaign("local", trials=12)
    remote = write_campaign("remote", trials=12, executor=RAY)
    assert _run(["run", str(local)], capsys)[0] == 0
    code, summary, err = _run(["run", str(remote)], capsys)
    assert code == 0, err
    assert summary["completed"] == 12 and summary["failed"] == 0
    with Store(load_config(local).store_path()) as a, Store(load_config(remote).store_path()) as b:
        expect = {r.id: (r.params, r.metrics) for r in a.trials()}
        got = {r.id: (r.params, r.metrics) for r in b.trials()}
        workers = {r.worker for r in b.trials()}
    assert got == expect
    assert workers <= {f"ray-{i}" for i in range(4)} and len(workers) > 1
    code, summary, err = _run(["resume", summary["store"], "--trials", "16"], capsys)
    assert code == 0, err
    assert summary["completed"] == 16
    with Store(summary["store"]) as s:
        assert sorted(r.id for r in s.trials() if r.status == "completed") == list(range(16))


def test_a_worker_that_dies_mid_trial_is_journaled_failed_and_retried_on_a_fresh_actor(write_campaign, workdir):
    (workdir / "dying.py").write_text(DIES_ONCE)
    path = write_campaign("dies", trials=4, target="dying:dies_once", executor={**RAY, "workers": 2})
    c = Campaign(load_config(path), reporter=SilentReporter())
    try:
        summary = c.run()
        events = [(tid, kind, attempt, payload) for _, tid, kind, attempt, _, payload in c.store.events()]
    finally:
        c.close()
    assert summary.completed == 4 and summary.failed == 0
    (death,) = [e for e in events if e[1] == "failed"]
    tid, _, attempt, payload = death
    assert attempt == 1 and payload["final"] is False and "ray worker died" in payload["error"]
    assert (tid, "completed", 2) in [(t, k, a) for t, k, a, _ in events]


def test_data_products_come_back_through_ray_and_are_written_once(write_campaign):
    path = write_campaign("data", trials=6, target="fns:with_data", executor={**RAY, "workers": 2})
    c = Campaign(load_config(path), reporter=SilentReporter())
    try:
        c.run()
        records = c.store.trials()
        files = sorted(p.name for p in c.store.data_dir.iterdir())
        arrays = {r.id: (r.params["x0"], c.store.read_data(r.data_path)) for r in records}
    finally:
        c.close()
    assert files == [f"trial-{i:06d}.npy" for i in range(6)], "one file per trial and no temp file left"
    for x0, data in arrays.values():
        np.testing.assert_array_equal(data, np.full(8, x0))


def _simulated(workdir: Path, name: str, executor: dict) -> Path:
    data = {"name": name, "seed": 2, "objectives": [{"metric": "y", "goal": "minimize"}],
            "instrument": {"kind": "simulator", "name": "branin"}, "policy": {"kind": "sobol"},
            "executor": executor, "budget": {"trials": 4}, "store": str(workdir / f"{name}.db")}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_simulator_on_a_ray_gpu_is_placed_there_or_measures_on_the_cpu_and_counts_it(workdir, capsys):
    """Ray's GPU is declared, not probed: with a torch that can use CUDA the simulator goes there; with one that
    cannot (a CPU-only build, no driver), every measurement is on the CPU and counted as a fallback."""
    import torch

    path = _simulated(workdir, "gpu", {**RAY, "workers": 2, "gpus_per_worker": 0.25})
    code, summary, err = _run(["run", str(path)], capsys)
    assert code == 0, err
    assert summary["completed"] == 4
    if torch.cuda.is_available():
        assert not (summary.get("fallbacks") or {}).get("count"), summary.get("fallbacks")
        return
    assert summary["fallbacks"]["count"] == 4
    (reason,) = summary["fallbacks"]["reasons"]
    assert "the Ray worker was given GPU" in reason["reason"] and "CUDA_VISIBLE_DEVICES=" in reason["reason"]
    assert "measured on the CPU" in reason["reason"]
    assert "warning: 4 " in err


def test_more_gpu_than_the_cluster_has_is_one_line_and_exit_2(workdir, capsys):
    path = _simulated(workdir, "greedy", {**RAY, "gpus_per_worker": 0.5})
    code, _, err = _run(["run", str(path)], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1
    assert "1 GPU" in lines[0] and "gpus_per_worker: 0.25" in lines[0]


@pytest.mark.parametrize("executor, says", [
    ({"kind": "ray", "address": "nope"}, "executor.address: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'"),
    ({"kind": "ray", "gpus_per_worker": 1.5}, "above 1 it must be a whole number"),
    ({"kind": "local", "runtime_env": {"pip": ["numpy"]}}, "need 'kind: ray'"),
    ({"kind": "ray", "start_timeout": "soon"}, "executor.start_timeout"),
    ({"kind": "ray", "gpus_per_worker": 0.00001}, "executor.gpus_per_worker: expected 0 or at least 0.0001"),
    ({"kind": "ray", "cpus_per_worker": 0.00001}, "executor.cpus_per_worker: expected at least 0.0001"),
    ({"kind": "ray", "runtime_env": {"pip": 5}}, "executor.runtime_env: runtime_env['pip'] must be of type str"),
])
def test_ray_settings_that_cannot_work_are_refused_by_validate(write_campaign, capsys, executor, says):
    assert main(["validate", str(write_campaign(executor=executor))]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and says in line
