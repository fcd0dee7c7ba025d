"""Read-only views of a running campaign's store for the API: trial pages, counts, best or Pareto set.

They query the derived `trials` table through one read-only connection (SQLite WAL: readers never
block the writer), so the API answers from what is journaled without touching the campaign thread.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np

from controller.results import best_trial, feasible, pareto_summary
from controller.store import TRIAL_COLUMNS, Store, TrialRecord, trial_from_row
from policies.base import Objective, OutcomeConstraint

READ_INDEXES = ("CREATE INDEX IF NOT EXISTS trials_status ON trials (status)",
                "CREATE INDEX IF NOT EXISTS trials_completed_seq ON trials (completed_seq)")
"""Indexes that keep the API's counts and its best/Pareto fold from scanning every trial."""


def add_read_indexes(path: str | Path) -> None:
    """Create READ_INDEXES in a store (by the process that holds its writer lock)."""
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        for statement in READ_INDEXES:
            db.execute(statement)
    finally:
        db.close()


def data_shape(store: Store, relative: str | None) -> tuple[list[int], str] | None:
    """(shape, dtype) of a stored data product, read from its .npy header only."""
    if not relative:
        return None
    try:
        array = np.load(store.path.parent / relative, mmap_mode="r", allow_pickle=False)
        shape, dtype = array.shape, array.dtype
        del array
    except (OSError, ValueError):
        return None
    return list(shape), str(dtype)


class StoreView:
    """Thread-safe read-only queries; the best trial or Pareto set kept up to date incrementally."""

    def __init__(self, path: str | Path, objectives: list[Objective], constraints: list[OutcomeConstraint]):
        self.store = Store(path)
        self.objectives, self.constraints = objectives, constraints
        self._lock = threading.Lock()
        self._seen_seq = 0
        self._best: TrialRecord | None = None
        self._front: list[TrialRecord] = []
        self._hypervolume: float | None = None
        self._fallbacks, self._fallback_top = 0, -1

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.store.db.execute(sql, args).fetchall()

    def counts(self) -> dict[str, int]:
        return {status: n for status, n in self._rows("SELECT status, COUNT(*) FROM trials GROUP BY status")}

    def fallbacks(self) -> int:
        """Trials proposed by a fallback; a trial's reason never changes, so only new ids are read."""
        top = self._rows("SELECT COALESCE(MAX(id), -1) FROM trials")[0][0]
        new = self._rows("SELECT COUNT(*) FROM trials WHERE id > ? AND id <= ? AND json_extract(reason, '$.fallback') "
                         "IS NOT NULL", (self._fallback_top, top))[0][0]
        with self._lock:
            if top > self._fallback_top:
                self._fallbacks, self._fallback_top = self._fallbacks + new, top
            return self._fallbacks

    def trials(self, since: int, limit: int) -> list[TrialRecord]:
        return [trial_from_row(r) for r in self._rows(f"SELECT {TRIAL_COLUMNS} FROM trials WHERE id > ? ORDER BY id LIMIT ?",
                                               (since, limit))]

    def trial(self, trial_id: int) -> TrialRecord | None:
        rows = self._rows(f"SELECT {TRIAL_COLUMNS} FROM trials WHERE id = ?", (trial_id,))
        return trial_from_row(rows[0]) if rows else None

    def store_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(f"{self.store.path}{suffix}")
            except OSError:
                pass
        return total

    def optimum(self) -> tuple[TrialRecord | None, list[TrialRecord], float | None]:
        """(best trial for one objective, Pareto set and hypervolume for several), folding in new completions."""
        new = [trial_from_row(r) for r in self._rows(
            f"SELECT {TRIAL_COLUMNS} FROM trials WHERE completed_seq > ? ORDER BY completed_seq",  # set once, when completed
            (self._seen_seq,))]
        with self._lock:
            new = [r for r in new if (r.completed_seq or 0) > self._seen_seq]
            if new:
                self._seen_seq = max(r.completed_seq or 0 for r in new)
                if len(self.objectives) == 1:
                    self._best = best_trial([*([self._best] if self._best else []), *new], self.objectives[0],
                                            self.constraints)
                else:
                    ok = [r for r in new if feasible(r, self.objectives, self.constraints)]
                    if ok:
                        ps = pareto_summary([*self._front, *ok], self.objectives, self.constraints)
                        self._front, self._hypervolume = ps.trials, ps.hypervolume
            return self._best, list(self._front), self._hypervolume

    def close(self) -> None:
        self.store.close()
