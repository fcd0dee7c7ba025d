"""Views derived from trial records: feasibility, the best trial, the Pareto set and its hypervolume."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from controller.store import TrialRecord
from policies.base import Objective, OutcomeConstraint


def feasible(rec: TrialRecord, objectives: Sequence[Objective], constraints: Sequence[OutcomeConstraint]) -> bool:
    """Completed, reports every objective, and meets every outcome constraint it can be judged on."""
    if rec.status != "completed" or any(o.metric not in rec.metrics for o in objectives):
        return False
    return all(c.metric in rec.metrics and c.satisfied(rec.metrics[c.metric]) for c in constraints)


def best_trial(records: Sequence[TrialRecord], objective: Objective,
               constraints: Sequence[OutcomeConstraint] = ()) -> TrialRecord | None:
    """The feasible completed trial with the best value of a single objective."""
    best, best_v = None, None
    for rec in records:
        if not feasible(rec, [objective], constraints):
            continue
        v = objective.sign() * rec.metrics[objective.metric]
        if best_v is None or v > best_v:
            best, best_v = rec, v
    return best


@dataclass
class ParetoSummary:
    trials: list[TrialRecord]
    hypervolume: float | None
    reference: list[float] | None
    reference_inferred: bool


def pareto_summary(records: Sequence[TrialRecord], objectives: Sequence[Objective],
                   constraints: Sequence[OutcomeConstraint] = ()) -> ParetoSummary:
    """The non-dominated feasible trials and the hypervolume they dominate above the reference point."""
    from policies.pareto import hypervolume, pareto_mask, reference_point

    ok = [r for r in records if feasible(r, objectives, constraints)]
    if not ok:
        return ParetoSummary([], None, None, False)
    Y = np.array([[r.metrics[o.metric] for o in objectives] for r in ok], dtype=float)
    maximize = [o.maximize for o in objectives]
    mask = pareto_mask(Y, maximize)
    ref, inferred = reference_point(Y, list(objectives))
    hv = hypervolume(Y, maximize, ref)
    front = sorted((r for r, m in zip(ok, mask) if m), key=lambda r: r.metrics[objectives[0].metric])
    return ParetoSummary(front, float(hv), [float(v) for v in ref], bool(inferred))


FALLBACK_REASON_CHARS = 240  # reasons are grouped on this prefix (exception texts can be long)


@dataclass
class FallbackTally:
    """Proposals that a fallback made instead of the policy asked for, grouped by reason (in first-seen order)."""

    trials: dict[str, list[int]]

    @classmethod
    def from_records(cls, records: Sequence[TrialRecord]) -> "FallbackTally":
        tally = cls({})
        for r in sorted(records, key=lambda r: r.id):
            tally.add(r.id, r.reason)
        return tally

    def add(self, trial_id: int, reason: dict | None) -> str | None:
        """Count one proposal; returns its fallback reason when this is the first proposal with it."""
        why = (reason or {}).get("fallback")
        if not why:
            return None
        key = str(why)[:FALLBACK_REASON_CHARS]
        first = key not in self.trials
        self.trials.setdefault(key, []).append(int(trial_id))
        return key if first else None

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.trials.values())

    def to_json(self) -> dict:
        return {"count": self.count, "reasons": [
            {"reason": why, "count": len(ids), "trials": _id_ranges(ids)} for why, ids in self.trials.items()
        ]}


def _id_ranges(ids: list[int]) -> str:
    """Trial ids as compact ranges: [1, 2, 3, 7] -> '1-3, 7'."""
    out: list[str] = []
    start = prev = None
    for i in sorted(set(ids)):
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    if start is not None:
        out.append(str(start) if start == prev else f"{start}-{prev}")
    return ", ".join(out)
