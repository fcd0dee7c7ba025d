"""The campaign store: one SQLite file (WAL) holding an append-only journal of trial events,
a `trials` table derived from it in the same transaction, checkpoints, the operator's queue of points
(taken in the transaction that journals each as a trial), and data products as .npy files written
atomically beside it. Every state of a campaign is rebuilt from the journal.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sqlite3
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from controller.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EVENT_KINDS = ("proposed", "started", "completed", "failed", "abandoned")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trial_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('proposed','started','completed','failed','abandoned')),
    attempt INTEGER NOT NULL,
    time REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_trial ON events (trial_id);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    params TEXT NOT NULL,
    x TEXT NOT NULL,
    pool_index INTEGER,
    reason TEXT,
    metrics TEXT,
    sem TEXT,
    novelty REAL,
    pvalue REAL,
    kept INTEGER,
    decision TEXT,
    data_path TEXT,
    worker TEXT,
    error TEXT,
    proposed_at REAL,
    started_at REAL,
    finished_at REAL,
    completed_seq INTEGER,
    finished_seq INTEGER
);
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, time REAL NOT NULL, blob BLOB NOT NULL);
"""
# Points an operator asked for (the daemon's POST /trials), on disk before the request is answered; `trial_id`
# is set in the transaction that journals the point's trial 'proposed', so a crash neither loses nor repeats one.
_QUEUE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS operator_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, "
    "params TEXT NOT NULL, x TEXT NOT NULL, pool_index INTEGER, note TEXT NOT NULL, trial_id INTEGER)"
)
# A trial is proposed once and completed once, whatever a buggy or concurrent writer tries.
_UNIQUE_EVENTS = (
    "CREATE UNIQUE INDEX IF NOT EXISTS events_once ON events (trial_id, kind) WHERE kind IN ('proposed', 'completed')"
)


class WriterLock:
    """A store's single-writer lock (`STORE.lock`, flock'd; the OS drops it when the holder dies, SIGKILL included),
    with who holds it written inside. `Store` takes it to write; a replay's driver holds it while a run is away."""

    def __init__(self, store: Path):
        self.path = Path(store).with_name(Path(store).name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """None when taken; else who holds it (pid, host, since when), in words. OSError when it cannot be made."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            deadline = time.monotonic() + 1.0  # the holder writes who it is just after taking the lock
            holder = os.pread(fd, 512, 0).decode(errors="replace").split()
            while len(holder) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
                holder = os.pread(fd, 512, 0).decode(errors="replace").split()
            os.close(fd)
            return (f"pid {holder[0]} on {holder[1]} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(holder[2])))}"
                    if len(holder) >= 3 and _is_number(holder[2]) else "another process")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.time():.3f}\n".encode(), 0)
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class StoreBusy(UserError):
    """Another process is the store's writer (run, resume or daemon)."""


@dataclass
class TrialRecord:
    """One trial as the journal leaves it: its latest status and everything measured."""

    id: int
    status: str
    params: dict[str, Any]
    x: list[float]
    attempts: int = 1
    pool_index: int | None = None
    reason: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    sem: dict[str, float] = field(default_factory=dict)
    novelty: float | None = None
    pvalue: float | None = None
    kept: bool | None = None
    decision: str | None = None
    data_path: str | None = None
    worker: str | None = None
    error: str | None = None
    proposed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    completed_seq: int | None = None
    finished_seq: int | None = None  # journal position of the completed or final failed event (history order)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "status": self.status, "params": self.params, "metrics": self.metrics,
            "attempts": self.attempts,
        }
        if self.sem:
            out["sem"] = self.sem
        if self.pool_index is not None:
            out["pool_index"] = self.pool_index
        if self.novelty is not None:
            out["novelty"] = self.novelty
            out["pvalue"] = self.pvalue
        if self.kept is not None:
            out["kept"] = self.kept
            out["decision"] = self.decision
        if self.data_path:
            out["data"] = self.data_path
        if self.error:
            out["error"] = self.error
        out.update({"worker": self.worker, "proposed_at": self.proposed_at, "started_at": self.started_at,
                    "finished_at": self.finished_at, "reason": self.reason})
        return out


FINISHED = ("completed", "failed")
"""The statuses a trial ends in: a writer keeps such trials in its table only, and reads one back for a later event."""
TRIAL_COLUMNS = ("id, status, attempts, params, x, pool_index, reason, metrics, sem, novelty, pvalue, kept, decision, "
                 "data_path, worker, error, proposed_at, started_at, finished_at, completed_seq, finished_seq")
"""The trials table's columns in the order trial_from_row reads them."""


def trial_from_row(row: Any) -> TrialRecord:
    """A TrialRecord from a row of `SELECT TRIAL_COLUMNS FROM trials` (the derived table holds every field)."""
    (tid, status, attempts, params, x, pool_index, reason, metrics, sem, novelty, pvalue, kept, decision,
     data_path, worker, error, proposed_at, started_at, finished_at, completed_seq, finished_seq) = row
    return TrialRecord(
        id=tid, status=status, params=json.loads(params), x=json.loads(x), attempts=attempts, pool_index=pool_index,
        reason=json.loads(reason or "{}"), metrics=json.loads(metrics or "{}"), sem=json.loads(sem or "{}"),
        novelty=novelty, pvalue=pvalue, kept=None if kept is None else bool(kept), decision=decision,
        data_path=data_path, worker=worker, error=error, proposed_at=proposed_at, started_at=started_at,
        finished_at=finished_at, completed_seq=completed_seq, finished_seq=finished_seq)


def apply_event(trials: dict[int, TrialRecord], trial_id: int, kind: str, attempt: int, t: float,
                payload: dict[str, Any], seq: int) -> TrialRecord:
    """Fold one journal event into the trial states; the single definition of what events mean."""
    if kind == "proposed":
        rec = TrialRecord(
            id=trial_id, status="proposed", params=payload["params"], x=payload["x"], attempts=attempt,
            pool_index=payload.get("pool_index"), reason=payload.get("reason", {}), proposed_at=t,
        )
        trials[trial_id] = rec
        return rec
    rec = trials[trial_id]
    rec.attempts = attempt
    if kind == "started":
        rec.status, rec.started_at, rec.error = "started", t, None
        rec.worker = payload.get("worker", rec.worker)
    elif kind == "completed":
        rec.status, rec.finished_at, rec.completed_seq, rec.finished_seq = "completed", t, seq, seq
        rec.metrics = payload.get("metrics", {})
        rec.sem = payload.get("sem", {})
        rec.novelty, rec.pvalue = payload.get("novelty"), payload.get("pvalue")
        rec.kept, rec.decision = payload.get("kept"), payload.get("decision")
        rec.data_path = payload.get("data_path")
        rec.worker = payload.get("worker", rec.worker)
    elif kind == "failed":
        rec.error = payload.get("error")
        rec.worker = payload.get("worker", rec.worker)
        if payload.get("final", True):
            rec.status, rec.finished_at, rec.finished_seq = "failed", t, seq
        else:
            rec.status = "retrying"
    elif kind == "abandoned":
        rec.status, rec.error = "abandoned", payload.get("reason")
    return rec


class Store:
    """A campaign's SQLite journal and data folder. Use from one thread (the controller's).

    A writer (`create=True` or `writer=True`) holds an exclusive `flock` on `STORE.lock` for as long as
    it is open, so one process at a time journals into a store; the OS releases the lock when the
    process dies, SIGKILL included. A reader opens the database read-only and takes no lock, so
    `show`, `export` and `report` work beside a running campaign and on read-only media.
    """

    def __init__(self, path: str | Path, create: bool = False, meta: dict[str, Any] | None = None,
                 writer: bool = False):
        """Open a store; with `create`, make its schema and write `meta` in one transaction."""
        self.path = Path(path)
        self.writer = writer or create
        self._writer_lock: WriterLock | None = None
        if not create and not self.path.exists():
            raise UserError(f"{self.path}: no such store")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.writer:
            self._lock()
        try:
            self.db = self._connect()
            if create:
                self.db.execute("BEGIN IMMEDIATE")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self.db.execute(statement)
                for key, value in (meta or {}).items():
                    self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
                self.db.execute("COMMIT")
            tables = self._tables(wait=0.0 if self.writer else 2.0)
        except sqlite3.DatabaseError as exc:
            self._unlock()
            raise UserError(f"{self.path}: not an aec store ({exc})") from None
        if not {"meta", "events", "trials"} <= tables:
            self._unlock()
            raise UserError(f"{self.path}: not an aec store (tables missing)")
        if self.writer:
            self._unique_events()
            self._create_queue()
            self._add_finished_seq()
        self.data_dir = self.path.with_name(self.path.name + ".data")
        try:
            self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()  # reads the journal's pages: a damage probe
        except sqlite3.DatabaseError as exc:
            self.close()
            raise UserError(f"{self.path}: the store is damaged ({exc})") from None
        self._trials: dict[int, TrialRecord] | None = None

    def _tables(self, wait: float) -> set[str]:
        """The store's tables; a reader waits up to `wait` s for a writer that is creating them right now."""
        deadline = time.monotonic() + wait
        while True:
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if {"meta", "events", "trials"} <= tables or time.monotonic() >= deadline:
                return tables
            time.sleep(0.05)

    @property
    def lock_path(self) -> Path:
        return WriterLock(self.path).path

    def _lock(self) -> None:
        """Take the writer's lock or raise StoreBusy naming the holder (pid, host, since when)."""
        lock = WriterLock(self.path)
        try:
            holder = lock.acquire()
        except OSError as exc:
            raise UserError(f"{self.path}: cannot write beside the store ({exc.strerror}: {self.lock_path})") from None
        if holder is not None:
            raise StoreBusy(f"{self.path} is in use by {holder}")
        self._writer_lock = lock

    def _unlock(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

    def _connect(self) -> sqlite3.Connection:
        """A writer's WAL connection, or a read-only one (immutable where even the WAL index cannot be made)."""
        if self.writer:
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=10000")
            return db
        uri = "file:" + urllib.parse.quote(str(self.path.resolve()))
        for flags in ("?mode=ro", "?mode=ro&immutable=1"):
            db = sqlite3.connect(uri + flags, uri=True, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA busy_timeout=10000")
                db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return db
            except sqlite3.OperationalError:
                db.close()
                if flags.endswith("immutable=1"):
                    raise
        raise AssertionError("unreachable")

    def _unique_events(self) -> None:
        try:
            self.db.execute(_UNIQUE_EVENTS)
        except sqlite3.IntegrityError:  # a store journaled before the index, by two writers at once
            log.warning("%s: some trials were journaled proposed or completed twice (before aec enforced one writer); "
                        "`aec export` shows the last of each", self.path)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise UserError(f"{self.path}: the store is damaged ({exc})") from None

    def _add_finished_seq(self) -> None:
        """Stores made before the trials table held finished_seq get the column, filled from the journal."""
        try:
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(trials)")}
            if "finished_seq" not in columns:
                self.db.execute("ALTER TABLE trials ADD COLUMN finished_seq INTEGER")
                self.rebuild_trials_table()
        except UserError:
            self.close()
            raise
        except sqlite3.DatabaseError as exc:
            self.close()
            raise UserError(f"{self.path}: the store is damaged ({exc})") from None

    def _create_queue(self) -> None:
        try:
            self.db.execute(_QUEUE_SCHEMA)  # stores made before the operator queue get it from their next writer
        except sqlite3.DatabaseError as exc:
            self.close()
            raise UserError(f"{self.path}: the store is damaged ({exc})") from None

    # meta and checkpoints -------------------------------------------------------------------

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return default if row is None else json.loads(row[0])
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: the store is damaged ({exc}) reading meta {key!r}") from None
        except json.JSONDecodeError:
            raise UserError(f"{self.path}: the store is damaged (meta {key!r} is not JSON)") from None

    def config(self) -> dict[str, Any]:
        """The stored campaign configuration; a UserError naming the store when it is missing (a damaged store)."""
        config = self.get_meta("config")
        if not isinstance(config, dict):
            raise UserError(f"{self.path}: holds no campaign configuration (meta 'config' is missing); "
                            "the store is damaged or was not written by aec")
        return config

    def save_checkpoint(self, name: str, blob: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (name, time.time(), sqlite3.Binary(blob)))

    def load_checkpoint(self, name: str) -> bytes | None:
        row = self.db.execute("SELECT blob FROM checkpoints WHERE name=?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    # the journal ------------------------------------------------------------------------------

    def next_trial_id(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(trial_id), -1) + 1 FROM events").fetchone()[0])

    def new_trial(self, payload: dict[str, Any], queue_id: int | None = None) -> TrialRecord:
        """Journal a new trial 'proposed', its id allocated inside the write transaction.

        With `queue_id`, the operator_queue row of that id is marked taken by this trial in the same
        transaction (ValueError, nothing written, when it is already taken).
        """
        t = time.time()
        trials = self._cache()
        with self._transaction():
            tid = self.db.execute("SELECT COALESCE(MAX(trial_id), -1) + 1 FROM events").fetchone()[0]
            if queue_id is not None:
                cur = self.db.execute("UPDATE operator_queue SET trial_id=? WHERE id=? AND trial_id IS NULL",
                                      (tid, queue_id))
                if cur.rowcount != 1:
                    raise ValueError(f"operator point {queue_id} is not waiting in the queue")
            rec = self._insert(trials, tid, "proposed", 1, t, payload)
        return rec

    def queued_points(self) -> list[dict[str, Any]]:
        """Operator points not yet journaled as trials, oldest first: {id, params, x, pool_index, note}."""
        try:
            rows = self.db.execute("SELECT id, params, x, pool_index, note FROM operator_queue "
                                   "WHERE trial_id IS NULL ORDER BY id").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a store read-only from before the queue existed
                return []
            raise UserError(f"{self.path}: the store is damaged ({exc})") from None
        return [{"id": i, "params": json.loads(p), "x": json.loads(x), "pool_index": pi, "note": n}
                for i, p, x, pi, n in rows]

    def append(self, trial_id: int, kind: str, attempt: int, payload: dict[str, Any]) -> TrialRecord:
        """Journal one event and update the derived trial row, in one transaction."""
        return self.append_many([(trial_id, kind, attempt, payload)])[-1]

    def append_many(self, events: list[tuple[int, str, int, dict[str, Any]]]) -> list[TrialRecord]:
        """Journal several events (trial_id, kind, attempt, payload) atomically: all or none."""
        for _, kind, _, _ in events:
            if kind not in EVENT_KINDS:
                raise ValueError(f"unknown event kind {kind!r}")
        t = time.time()
        trials = self._cache()
        out = []
        with self._transaction():
            for trial_id, kind, attempt, payload in events:
                out.append(self._insert(trials, trial_id, kind, attempt, t, payload))
        return out

    def _insert(self, trials: dict[int, TrialRecord], trial_id: int, kind: str, attempt: int, t: float,
                payload: dict[str, Any]) -> TrialRecord:
        """One event as strict JSON, folded into the trial states and the derived row (inside a transaction)."""
        text = json.dumps(json_safe(payload), default=_json_default, allow_nan=False)
        cur = self.db.execute(
            "INSERT INTO events (trial_id, kind, attempt, time, payload) VALUES (?, ?, ?, ?, ?)",
            (trial_id, kind, attempt, t, text),
        )
        if kind != "proposed" and trial_id not in trials:  # a writer keeps finished trials in the table only
            row = self._table_records("WHERE id=?", (trial_id,))
            if row:
                trials[trial_id] = row[0]
        rec = apply_event(trials, trial_id, kind, attempt, t, json.loads(text), cur.lastrowid)
        self._write_trial(rec)
        if self.writer and rec.status in FINISHED:
            trials.pop(trial_id, None)
        return rec

    def events(self) -> Iterator[tuple[int, int, str, int, float, dict[str, Any]]]:
        """The journal in order; a damaged file or a non-JSON payload is a UserError naming the store and seq."""
        seq = None
        try:
            for seq, tid, kind, attempt, t, payload in self.db.execute(
                "SELECT seq, trial_id, kind, attempt, time, payload FROM events ORDER BY seq"
            ):
                try:
                    data = json.loads(payload)
                except (json.JSONDecodeError, TypeError):
                    raise UserError(f"{self.path}: the store is damaged (event seq {seq}: payload is not JSON)") from None
                yield seq, tid, kind, attempt, t, data
        except sqlite3.DatabaseError as exc:
            where = "before the first event" if seq is None else f"after event seq {seq}"
            raise UserError(f"{self.path}: the store is damaged ({exc}, {where})") from None

    def replay(self) -> dict[int, TrialRecord]:
        """Trial states rebuilt from the journal alone; an event that cannot be folded is a UserError."""
        trials: dict[int, TrialRecord] = {}
        for seq, tid, kind, attempt, t, payload in self.events():
            try:
                apply_event(trials, tid, kind, attempt, t, payload, seq)
            except KeyError as exc:
                what = f"unknown trial id {tid}" if tid not in trials else f"missing field {exc}"
                raise UserError(f"{self.path}: the store is damaged (event seq {seq}, {kind}: {what})") from None
            except (TypeError, AttributeError) as exc:
                raise UserError(f"{self.path}: the store is damaged (event seq {seq}, {kind}: {exc})") from None
        return trials

    def trials(self) -> list[TrialRecord]:
        """All trials in id order: a reader folds the journal; a writer reads the derived table, which it
        writes in the transaction of each event, so that it equals the journal's fold."""
        if self.writer:
            self._cache()
            return self._table_records("ORDER BY id")
        return [self._cache()[k] for k in sorted(self._cache())]

    def rebuild_trials_table(self) -> None:
        """Recreate the derived table from the journal (e.g. after a schema change)."""
        folded = self.replay()
        with self._transaction():
            self.db.execute("DELETE FROM trials")
            for rec in folded.values():
                self._write_trial(rec)
        self._trials = None

    def _cache(self) -> dict[int, TrialRecord]:
        """The trials events are folded into: every trial for a reader; for a writer only the unfinished ones
        (a daemon's memory stays flat over its run; a finished trial that gets an event is read back)."""
        if self._trials is None:
            folded = self.replay()
            self._trials = {k: r for k, r in folded.items() if r.status not in FINISHED} if self.writer else folded
        return self._trials

    def _table_records(self, where: str, args: tuple = ()) -> list[TrialRecord]:
        """Trials from the derived table, e.g. `_table_records("WHERE id=?", (3,))`."""
        return [trial_from_row(row) for row in self.db.execute(f"SELECT {TRIAL_COLUMNS} FROM trials {where}", args)]

    def _write_trial(self, r: TrialRecord) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO trials ({TRIAL_COLUMNS}) VALUES ({','.join('?' * 21)})",
            (r.id, r.status, r.attempts, json.dumps(r.params, default=_json_default), json.dumps(r.x),
             r.pool_index, json.dumps(r.reason, default=_json_default), json.dumps(r.metrics), json.dumps(r.sem),
             r.novelty, r.pvalue, None if r.kept is None else int(r.kept), r.decision, r.data_path,
             r.worker, r.error, r.proposed_at, r.started_at, r.finished_at, r.completed_seq, r.finished_seq),
        )

    def trials_table(self) -> list[dict[str, Any]]:
        """The derived table as stored, for checking it against the journal."""
        cols = [d[1] for d in self.db.execute("PRAGMA table_info(trials)")]
        return [dict(zip(cols, row)) for row in self.db.execute("SELECT * FROM trials ORDER BY id")]

    class _Tx:
        def __init__(self, store: "Store"):
            self.store, self.db = store, store.db

        def __enter__(self) -> None:
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type, exc, tb) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
            if exc_type:
                self.store._trials = None

    def _transaction(self) -> "_Tx":
        return Store._Tx(self)

    # data products ----------------------------------------------------------------------------

    def write_data(self, trial_id: int, array: np.ndarray) -> str:
        """Write a data product atomically (temp file, fsync, rename); returns its path relative to the store."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        name = f"trial-{trial_id:06d}.npy"
        fd, tmp = tempfile.mkstemp(dir=self.data_dir, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(array), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.data_dir / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return f"{self.data_dir.name}/{name}"

    def read_data(self, relative: str) -> np.ndarray:
        return np.load(self.path.parent / relative, allow_pickle=False)

    def close(self) -> None:
        try:
            self.db.close()
        except (sqlite3.Error, AttributeError):
            pass
        self._unlock()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class OperatorQueue:
    """Writes operator points into a store's `operator_queue` through its own connection (any thread).

    `put` returns only once its points are committed (synchronous=FULL: in the WAL on disk), so a point that
    an API has accepted survives a crash of the process at any later moment. Used by the store's writer
    process only (the daemon), beside the campaign thread's own connection.
    """

    def __init__(self, path: str | Path):
        import threading

        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(_QUEUE_SCHEMA)
        self._lock = threading.Lock()

    def put(self, points: list[tuple[dict[str, Any], list[float], int | None]], note: str = "") -> list[int]:
        """Queue (params, encoded x, pool index) points, all or none, in order; their queue ids."""
        t = time.time()
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                ids = [self.db.execute(
                    "INSERT INTO operator_queue (time, params, x, pool_index, note) VALUES (?, ?, ?, ?, ?)",
                    (t, json.dumps(json_safe(params), default=_json_default, allow_nan=False),
                     json.dumps([float(v) for v in x]), pool_index, note)).lastrowid
                    for params, x, pool_index in points]
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        return ids

    def close(self) -> None:
        with self._lock:
            self.db.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so the journal and all JSON output are strict JSON."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, (np.floating,)):
        return json_safe(float(value))
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return value
