"""The daemon's states and allowed transitions, every transition journaled in the campaign's store.

The journal is a `daemon_states` table in the store's SQLite file, written through the daemon's own
connection, so an operator's pause is on disk before the API answers, whatever the campaign thread is
doing. A restart comes back in the last steady state it left (a paused campaign stays paused).
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class State(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHED = "finished"


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.STARTING: frozenset({S.RUNNING, S.PAUSED, S.UNHEALTHY, S.STOPPING}),
    S.RUNNING: frozenset({S.PAUSED, S.UNHEALTHY, S.FINISHED, S.STOPPING}),
    S.PAUSED: frozenset({S.RUNNING, S.FINISHED, S.STOPPING}),
    S.UNHEALTHY: frozenset({S.RUNNING, S.PAUSED, S.FINISHED, S.STOPPING}),
    S.FINISHED: frozenset({S.RUNNING, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
}
STEADY = (S.RUNNING, S.PAUSED, S.UNHEALTHY, S.FINISHED)
"""States a restart returns to; starting, stopping and stopped only say that a process came or went."""

_SCHEMA = ("CREATE TABLE IF NOT EXISTS daemon_states "
           "(seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL)")


class InvalidTransition(Exception):
    """A move the state table does not allow (e.g. resume a stopping daemon)."""


@dataclass(frozen=True)
class Transition:
    state: State
    reason: str
    time: float


class StateJournal:
    """The `daemon_states` table of a store, written by the process that holds the store's writer lock."""

    def __init__(self, path: str | Path):
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def append(self, t: Transition) -> None:
        with self._lock:
            self.db.execute("INSERT INTO daemon_states (time, state, reason) VALUES (?, ?, ?)",
                            (t.time, t.state.value, t.reason))

    def last_steady(self) -> Transition | None:
        """The last running/paused/unhealthy/finished state journaled, or None for a new campaign."""
        marks = ",".join("?" * len(STEADY))
        with self._lock:
            row = self.db.execute(f"SELECT state, reason, time FROM daemon_states WHERE state IN ({marks}) "
                                  "ORDER BY seq DESC LIMIT 1", [s.value for s in STEADY]).fetchone()
        return None if row is None else Transition(State(row[0]), row[1], row[2])

    def history(self, limit: int = 100) -> list[Transition]:
        with self._lock:
            rows = self.db.execute("SELECT state, reason, time FROM daemon_states ORDER BY seq DESC LIMIT ?",
                                   (limit,)).fetchall()
        return [Transition(State(s), r, t) for s, r, t in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            self.db.close()


class StateMachine:
    """The current state, moved only along TRANSITIONS, each move journaled before it is visible."""

    def __init__(self, journal: StateJournal):
        self.journal = journal
        self._lock = threading.RLock()
        self._current = Transition(S.STARTING, "process started", time.time())
        journal.append(self._current)

    @property
    def current(self) -> Transition:
        return self._current

    @property
    def state(self) -> State:
        return self._current.state

    @property
    def lock(self) -> threading.RLock:
        """Held while a caller checks the state and acts on it, so the two cannot interleave with a move."""
        return self._lock

    def move(self, to: State, reason: str) -> Transition:
        with self._lock:
            if to not in TRANSITIONS[self._current.state]:
                raise InvalidTransition(f"cannot go from {self._current.state.value} to {to.value}")
            t = Transition(to, reason, time.time())
            self.journal.append(t)
            self._current = t
            return t
