"""Offline selection (`aec triage`): keep the novel, most novel first, then a stratified sample, within a budget."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policies.selection.errors import SelectionError


@dataclass(frozen=True)
class Budget:
    """What may be kept: at most floor(fraction * n) samples and/or at most `bytes` bytes."""

    fraction: float | None = None
    bytes: int | None = None

    def max_count(self, n: int) -> int:
        return n if self.fraction is None else int(math.floor(self.fraction * n + 1e-9))


def select(
    pvalues: np.ndarray,
    budget: Budget,
    *,
    level: float = 0.05,
    scores: np.ndarray | None = None,
    nbytes: np.ndarray | int | None = None,
    strata: np.ndarray | None = None,
    sample_rate: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Keep mask (n,) of bool: the novel (p < level), most novel first, then a stratified sample.

    Novel samples are taken in order of p-value (ties broken by higher `scores`) while the budget
    holds. Of the rest, each stratum (label in `strata`, one stratum when None) contributes about
    `sample_rate` of its members, drawn at random; if the budget cannot hold the whole sample the
    strata are cut in proportion. The budget is never exceeded: at most budget.max_count(n) kept,
    and their `nbytes` (per sample, or one size for all) sum to at most budget.bytes.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    n = len(p)
    keep = np.zeros(n, dtype=bool)
    if budget.bytes is not None and nbytes is None:
        raise SelectionError("a byte budget needs the size of each sample (nbytes)")
    size = np.broadcast_to(np.asarray(0 if nbytes is None else nbytes, dtype=np.int64), (n,))
    room_count = budget.max_count(n)
    room_bytes = math.inf if budget.bytes is None else int(budget.bytes)

    def take(order: np.ndarray) -> None:
        nonlocal room_count, room_bytes
        for i in order:
            if room_count <= 0:
                return
            if size[i] <= room_bytes:
                keep[i] = True
                room_count -= 1
                room_bytes -= size[i]

    novel = np.flatnonzero(p < level)
    tie = -np.asarray(scores, dtype=float).ravel()[novel] if scores is not None else np.zeros(len(novel))
    take(novel[np.lexsort((tie, p[novel]))])
    rest = np.flatnonzero(p >= level)
    if sample_rate > 0 and len(rest) and room_count > 0:
        rng = np.random.default_rng(seed)
        labels = np.zeros(len(rest), dtype=np.int64) if strata is None else np.asarray(strata).ravel()[rest]
        picked, rank = [], []
        for c in np.unique(labels):
            members = rest[labels == c]
            quota = int(math.floor(sample_rate * len(members) + rng.random()))
            chosen = rng.permutation(members)[:quota]
            picked.append(chosen)
            rank.append((np.arange(len(chosen)) + rng.random()) / max(quota, 1))  # interleaves strata
        if picked:
            chosen, rank = np.concatenate(picked), np.concatenate(rank)
            take(chosen[np.argsort(rank, kind="stable")])
    return keep
