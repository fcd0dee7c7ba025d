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
