"""Store: the journal is the truth; the derived table and the history are rebuilt from it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.errors import UserError
from controller.store import Store


def _fill(store: Store) -> None:
    store.append(0, "proposed", 1, {"params": {"x": 0.1}, "x": [0.1], "reason": {"policy": "t"}})
    store.append(0, "started", 1, {})
    store.append(0, "completed", 1, {"metrics": {"y": 1.5}, "worker": "w0"})
    store.append(1, "proposed", 1, {"params": {"x": 0.2}, "x": [0.2]})
    store.append(1, "started", 1, {})
    store.append(1, "failed", 1, {"error": "boom", "final": False})
    store.append(1, "started", 2, {})
    store.append(1, "failed", 2, {"error": "boom again", "final": True})
    store.append(2, "proposed", 1, {"params": {"x": 0.3}, "x": [0.3]})
    store.append(2, "started", 1, {})


def test_rebuild_from_the_journal_equals_the_live_state(tmp_path: Path):
    store = Store(tmp_path / "s.db", create=True)
    _fill(store)
    live = {r.id: r for r in store.trials()}
    fresh = Store(tmp_path / "s.db")
    assert fresh.replay() == live
    assert [r.status for r in fresh.trials()] == ["completed", "failed", "started"]
    assert live[1].attempts == 2 and live[1].error == "boom again"
    before = store.trials_table()
    store.close()  # one writer at a time: the rebuild takes the lock
    fresh.close()
    writer = Store(tmp_path / "s.db", writer=True)
    writer.rebuild_trials_table()
    assert writer.trials_table() == before


def test_the_journal_is_append_only_and_ordered(tmp_path: Path):
    store = Store(tmp_path / "s.db", create=True)
    _fill(store)
    seqs = [e[0] for e in store.events()]
    assert seqs == sorted(seqs) and len(seqs) == 10
    with pytest.raises(ValueError):
        store.append(0, "teleported", 1, {})


@pytest.mark.parametrize("fails", ["np.save", "os.replace"])
def test_data_products_are_written_atomically(tmp_path: Path, monkeypatch, fails: str):
    """A write that fails midway (half the bytes written, or the rename refused) leaves neither a
    partial product nor a temp file, and an earlier product of that trial untouched."""
    import controller.store as store_module

    store = Store(tmp_path / "s.db", create=True)
    rel = store.write_data(7, np.arange(5.0))
    assert np.array_equal(store.read_data(rel), np.arange(5.0))

    def half_then_fail(fh, array, allow_pickle=False):
        fh.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    def refuse(src, dst):
        raise OSError("rename refused")

    if fails == "np.save":
        monkeypatch.setattr(store_module.np, "save", half_then_fail)
    else:
        monkeypatch.setattr(store_module.os, "replace", refuse)
    with pytest.raises(OSError):
        store.write_data(7, np.full(5, -1.0))
    with pytest.raises(OSError):
        store.write_data(8, np.full(5, -1.0))
    monkeypatch.undo()
    assert sorted(p.name for p in store.data_dir.iterdir()) == [Path(rel).name]  # no temp file, no trial 8
    assert np.array_equal(store.read_data(rel), np.arange(5.0))


def test_wal_mode_and_checkpoints(tmp_path: Path):
    store = Store(tmp_path / "s.db", create=True)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.save_checkpoint("selector", b"\x00\x01")
    assert Store(tmp_path / "s.db").load_checkpoint("selector") == b"\x00\x01"


def test_opening_something_else_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="no such store"):
        Store(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_text("not sqlite at all" * 100)
    with pytest.raises(UserError, match="not an aec store"):
        Store(tmp_path / "junk.db")


def test_a_writer_holds_only_unfinished_trials_in_memory_and_reads_a_finished_one_back_for_a_late_event(tmp_path: Path):
    store = Store(tmp_path / "s.db", create=True)
    _fill(store)
    for tid in range(3, 200):
        store.append(tid, "proposed", 1, {"params": {"x": tid / 200}, "x": [tid / 200]})
        store.append(tid, "started", 1, {})
        store.append(tid, "completed", 1, {"metrics": {"y": float(tid)}, "sem": {"y": 0.1}, "novelty": 0.5,
                                           "kept": tid % 2 == 0, "decision": "novel"})
    assert sorted(store._cache()) == [2]  # a daemon's memory does not grow with the trials it has finished
    store.append(1, "started", 3, {})  # an event for a finished (failed) trial: read back from the table
    assert sorted(store._cache()) == [1, 2]
    store.append(1, "completed", 3, {"metrics": {"y": 0.5}})
    assert sorted(store._cache()) == [2]
    reader = Store(tmp_path / "s.db")
    assert store.trials() == sorted(reader.replay().values(), key=lambda r: r.id)  # every field equals the fold
    assert store.trials()[1].attempts == 3 and store.trials()[1].metrics == {"y": 0.5}
    assert store.next_trial_id() == 200
    reader.close()
    store.close()


def test_a_store_from_before_the_finished_seq_column_gets_it_from_the_journal(tmp_path: Path):
    import sqlite3

    store = Store(tmp_path / "s.db", create=True)
    _fill(store)
    folded = store.trials()
    store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("ALTER TABLE trials DROP COLUMN finished_seq")  # the table as aec wrote it before
    db.commit()
    db.close()
    assert Store(tmp_path / "s.db").trials() == folded  # a reader folds the journal
    writer = Store(tmp_path / "s.db", writer=True)
    assert writer.trials() == folded and [r.finished_seq for r in folded] == [3, 8, None]
    writer.close()
