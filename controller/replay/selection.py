"""Selection replay: what other novelty budgets or levels would have kept, from a campaign's stored p-values.

Uses the offline selector (`policies.selection.select`, the one `aec triage` uses) on the novelty scores and
p-values every completed trial journaled, so no model is retrained and the answer is exact for those scores.
The campaign's `selection.sample_rate` (the stratified sample of the not-novel) is honoured, from one stratum:
the latent-code strata the campaign sampled from are not stored (the result's `notes` say so).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from controller.errors import UserError


def selection_replay(store: Path, keep_fractions: list[float], levels: list[float], seed: int = 0) -> dict[str, Any]:
    """For each (keep fraction, level): how many trials would be kept, which, and the overlap with what was kept."""
    from controller.store import Store
    from policies.selection import Budget, select

    with Store(store) as st:
        done = sorted((r for r in st.trials() if r.status == "completed"), key=lambda r: r.completed_seq or 0)
        selection = (st.config() or {}).get("selection") or {}
    sample_rate, notes = _sample_rate(selection)
    scored = [r for r in done if r.pvalue is not None]
    if not scored:
        raise UserError(f"{store}: --keep-fractions: no completed trial has a novelty p-value "
                        "(the campaign ran without selection.kind: autoencoder)")
    p = np.array([r.pvalue for r in scored], dtype=float)
    s = np.array([r.novelty if r.novelty is not None else 0.0 for r in scored], dtype=float)
    was = np.array([bool(r.kept) for r in scored])
    ids = [r.id for r in scored]
    rows = []
    for frac in keep_fractions:
        for level in levels:
            keep = select(p, Budget(fraction=frac), level=level, scores=s, sample_rate=sample_rate, seed=seed)
            rows.append({"keep_fraction": frac, "level": level, "kept": int(keep.sum()),
                         "novel": int((p < level).sum()), "also_kept_by_campaign": int((keep & was).sum()),
                         "trials": [i for i, k in zip(ids, keep) if k]})
    return {"store": str(store), "scored": len(scored), "kept_by_campaign": int(was.sum()),
            "kept_over_time": [int(v) for v in np.cumsum(was)], "sample_rate": sample_rate, "notes": notes,
            "alternatives": rows}


def _sample_rate(selection: dict[str, Any]) -> tuple[float, list[str]]:
    """The campaign selector's sample_rate (its default when unset), and what the replay does with it."""
    rate = selection.get("sample_rate")
    if rate is None and selection.get("kind", "autoencoder") == "autoencoder":
        try:
            from policies.selection.selector import NoveltySelector

            rate = NoveltySelector.Options.model_fields["sample_rate"].default
        except (ImportError, AttributeError, KeyError):
            rate = 0.0
    rate = float(rate or 0.0)
    if rate <= 0:
        return 0.0, []
    return rate, [f"the campaign's sample_rate {rate:g} is honoured: besides the novel, about {rate:g} of the "
                  "rest is kept as a random sample within each keep fraction, from one stratum (the campaign's "
                  "latent-code strata are not stored)"]
