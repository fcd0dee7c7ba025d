"""Fraction of the maximum achievable reward per step, for replays of sequential simulators (the telescope).

The definition is the RL benchmark's (benchmarks/rl_telescope.py, policies/rl/evaluate.py; Terranova et al.
2023), computed with the simulator's own sequential interface (`simulators.telescope.batch.NightBatch`): before
each completed measurement, the maximum achievable reward is the best allowed field's reward in the state the
campaign had reached (`NightBatch.preview(...).max()`, at least 0: a closed dome or an empty sky offers 0).
The run's measurements are then stepped through the same simulator (same options and seed as the run's
instrument), so the state follows what the campaign did, transients' detections included. Over the first n
measurements:

    reward_fraction(n) = sum of the rewards received / sum of the maximum achievable rewards

(1 while nothing could have been gained yet). A scheduler that always takes the best allowed field has 1 at
every step; at the budget it is the benchmark's `fraction_of_max_reward`. Failed trials (a field below the
altitude limit) take no telescope time and are not steps. A recorded reward that the simulator does not
reproduce is counted and reported in the problem's notes, never hidden.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

SEQUENTIAL_SIMULATORS = ("telescope",)
_LOOKAHEAD_NIGHTS = 3  # as policies.rl.policy.rebuild_night: a finished night moves on to the next (at most 3)
_TOLERANCE = 1e-6


def applies(config: dict[str, Any]) -> str | None:
    """Why a campaign's reward fraction cannot be computed (None: it can). Only sequential simulators have one."""
    inst = config.get("instrument") or {}
    if inst.get("kind") != "simulator" or inst.get("name") not in SEQUENTIAL_SIMULATORS:
        return "not a sequential simulator"
    if (inst.get("options") or {}).get("exposure_range") is not None:
        return ("the telescope's exposure_range makes exposures a parameter; the maximum achievable reward per step "
                "is defined for the default exposure only")
    return None


def fraction_curve(rewards: np.ndarray, best: np.ndarray) -> np.ndarray:
    """reward_fraction(n) = cumsum(rewards)[n] / cumsum(best)[n], 1 while the achievable sum is still 0."""
    got, most = np.cumsum(np.asarray(rewards, dtype=float)), np.cumsum(np.asarray(best, dtype=float))
    out = np.ones(len(got))
    nz = most > 0
    out[nz] = got[nz] / most[nz]
    return out


def simulator_for(config: dict[str, Any]):
    """The run's telescope as its instrument built it (options, and the campaign's seed unless the options give
    one), without images, on the CPU."""
    from simulators import create

    inst = config["instrument"]
    options = {**(inst.get("options") or {}), "images": False, "device": "cpu"}
    options.setdefault("seed", int(config.get("seed", 0)))
    return create(inst["name"], **options)


def completed_steps(store: Path) -> list[dict[str, Any]]:
    """The run's completed measurements in history order: field_id, reward, end MJD offset (hours), dome, detections."""
    from controller.store import Store

    meta: dict[int, dict[str, Any]] = {}
    with Store(store) as st:
        for _seq, tid, kind, _attempt, _t, payload in st.events():
            if kind == "completed":
                meta[tid] = payload.get("metadata") or {}
        records = [r for r in st.trials() if r.status == "completed"]
    records.sort(key=lambda r: (r.finished_seq or 0, r.id))
    return [{"id": r.id, "field_id": meta.get(r.id, {}).get("field_id"), "reward": r.metrics.get("reward"),
             "time": r.metrics.get("time"), "depth": r.metrics.get("depth", 0.0),
             "n_detected": r.metrics.get("n_detected", 0.0)} for r in records]


def reward_steps(sim, steps: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, int]:
    """(rewards received, maximum achievable rewards, steps the simulator did not reproduce) of a run's steps."""
    import torch

    from simulators.telescope.batch import NightBatch

    row_of = {int(v): i for i, v in enumerate(sim.fields.field_id)}
    batch = NightBatch(sim, [0])
    night = 0
    got, best, mismatched = [], [], 0
    for s in steps:
        if s["reward"] is None or s["time"] is None or s["field_id"] is None or int(s["field_id"]) not in row_of:
            raise ValueError(f"trial {s['id']} lacks its field, reward or time")
        for _ in range(_LOOKAHEAD_NIGHTS):
            if not bool(batch.done.all()):
                break
            night += 1
            batch.move_to([night])
        plan = batch.plan()
        best.append(max(float(batch.preview(plan).max()), 0.0))
        got.append(float(s["reward"]))
        row, end = row_of[int(s["field_id"])], sim.start_mjd + float(s["time"]) / 24.0
        k = sim.calendar.index(end)
        if k != night:  # the chosen field was observed on a later night (the rest of this one was skipped)
            night = k
            batch.move_to([night])
            plan = batch.plan()
        if bool(plan.allowed[0, row]):
            reward, _ = batch.step(torch.tensor([row]), plan)
            r = float(reward[0])
            if not math.isclose(r, got[-1], rel_tol=_TOLERANCE, abs_tol=_TOLERANCE):
                mismatched += 1
        else:  # the simulator would not take this field now: follow the record instead
            batch.log(row, end, float(s["depth"]) > 0.0, float(s["n_detected"]))
            mismatched += 1
    return np.array(got), np.array(best), mismatched


def run_reward_fraction(store: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """A run's per-step rewards, maxima, fraction curve and mismatches; None when it has no completed step."""
    steps = completed_steps(store)
    if not steps:
        return None
    rewards, best, mismatched = reward_steps(simulator_for(config), steps)
    return {"rewards": rewards, "best": best, "fraction": fraction_curve(rewards, best), "mismatched": mismatched}
