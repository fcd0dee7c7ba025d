"""The daemon's pieces in-process: the state table and its journal, backoff, the breaker, JSON-line logs,
and the campaign file's `daemon:` section and open-ended budget."""
from __future__ import annotations

import json
import logging
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import BudgetConfig, DaemonConfig, validate_config
from controller.daemon.cli import _listen, resolve_token
from controller.daemon.faults import Backoff, CircuitBreaker
from controller.daemon.logs import JsonFormatter
from controller.daemon.state import STEADY, TRANSITIONS, InvalidTransition, State, StateJournal, StateMachine
from controller.errors import UserError


def minimal(**extra) -> dict:
    return {"name": "m", "space": {"parameters": [{"name": "x", "type": "real", "low": 0, "high": 1}]},
            "objectives": [{"metric": "y"}], "instrument": {"kind": "function", "target": "m:f"},
            "budget": {"trials": 3}, **extra}


def test_every_state_but_stopped_can_stop_and_stopped_is_final():
    for state in State:
        if state in (State.STOPPING, State.STOPPED):
            continue
        assert State.STOPPING in TRANSITIONS[state], state
    assert TRANSITIONS[State.STOPPED] == frozenset()
    assert TRANSITIONS[State.STOPPING] == {State.STOPPED}


def test_machine_refuses_moves_off_the_table_and_journals_the_rest(tmp_path):
    db = tmp_path / "s.db"
    machine = StateMachine(StateJournal(db))
    machine.move(State.RUNNING, "started")
    machine.move(State.PAUSED, "operator")
    with pytest.raises(InvalidTransition):
        machine.move(State.STOPPED, "skipping stopping")
    assert machine.state == State.PAUSED
    machine.move(State.STOPPING, "SIGTERM")
    machine.move(State.STOPPED, "done")
    rows = sqlite3.connect(db).execute("SELECT state, reason FROM daemon_states ORDER BY seq").fetchall()
    assert rows == [("starting", "process started"), ("running", "started"), ("paused", "operator"),
                    ("stopping", "SIGTERM"), ("stopped", "done")]


def test_a_restart_returns_to_the_last_steady_state_not_to_stopped(tmp_path):
    db = tmp_path / "s.db"
    machine = StateMachine(StateJournal(db))
    for state in (State.RUNNING, State.PAUSED, State.STOPPING, State.STOPPED):
        machine.move(state, "x")
    again = StateJournal(db)
    assert again.last_steady().state == State.PAUSED
    assert StateJournal(tmp_path / "new.db").last_steady() is None
    assert State.STOPPED not in STEADY and State.STARTING not in STEADY


@given(base=st.floats(0.0, 10.0), ceiling=st.floats(0.0, 100.0), attempt=st.integers(1, 60))
def test_backoff_doubles_and_never_passes_its_ceiling(base, ceiling, attempt):
    b = Backoff(base, ceiling)
    assert 0.0 <= b(attempt) <= max(ceiling, 0.0)
    if base > 0 and b(attempt + 1) < ceiling:
        assert b(attempt + 1) == pytest.approx(2 * b(attempt))


def test_breaker_trips_once_at_k_consecutive_failures_and_a_success_resets_it():
    br = CircuitBreaker(3)
    assert [br.failure("e1"), br.failure("e2")] == [False, False]
    br.success()
    assert [br.failure("a"), br.failure("b"), br.failure("c"), br.failure("d")] == [False, False, True, False]
    assert br.trips == 1 and br.last_error == "d"
    br.reset()
    assert br.consecutive == 0


def test_json_lines_carry_the_trial_fields():
    record = logging.LogRecord("aec.daemon", logging.WARNING, __file__, 1, "failed trial %d", (7,), None)
    record.event, record.trial, record.attempt, record.duration, record.reason = "failed", 7, 2, 0.123456789, "NaN"
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "failed trial 7" and out["level"] == "warning"
    assert (out["event"], out["trial"], out["attempt"], out["duration"], out["reason"]) == ("failed", 7, 2, 0.123457, "NaN")


def test_open_ended_budget_is_a_budget_and_no_limit_at_all_is_not():
    assert BudgetConfig(open_ended=True).trials is None
    with pytest.raises(ValueError, match="open_ended"):
        BudgetConfig()


def test_daemon_section_defaults_to_loopback_and_refuses_bad_values():
    cfg = validate_config(minimal(daemon={"port": 9100, "backoff": "2s", "breaker": 3}))
    assert (cfg.daemon.host, cfg.daemon.port, cfg.daemon.backoff, cfg.daemon.breaker) == ("127.0.0.1", 9100, 2.0, 3)
    assert DaemonConfig().host == "127.0.0.1"
    with pytest.raises(UserError) as err:
        validate_config(minimal(daemon={"port": 70000, "breaker": 0, "colour": "red"}), source="c.yaml")
    problems = "\n".join(err.value.problems)
    assert "c.yaml: daemon.port:" in problems and "c.yaml: daemon.breaker:" in problems
    assert "c.yaml: daemon.colour: unknown key" in problems


def test_token_comes_from_the_file_then_the_environment_then_a_private_file_made_once(tmp_path, monkeypatch):
    store = tmp_path / "c.db"
    (tmp_path / "tok").write_text("from-file\n")
    monkeypatch.setenv("AEC_DAEMON_TOKEN", "from-env")
    assert resolve_token(str(tmp_path / "tok"), store)[0] == "from-file"
    assert resolve_token(None, store) == ("from-env", "$AEC_DAEMON_TOKEN")
    monkeypatch.delenv("AEC_DAEMON_TOKEN")
    made, where = resolve_token(None, store)
    assert len(made) >= 32 and where.endswith("c.db.token")
    assert (tmp_path / "c.db.token").stat().st_mode & 0o777 == 0o600
    assert resolve_token(None, store)[0] == made
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(UserError, match="is empty"):
        resolve_token(str(tmp_path / "empty"), store)


def test_a_port_in_use_is_a_one_line_error():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            _listen("127.0.0.1", taken.getsockname()[1])


def test_an_operator_point_leaves_the_queue_only_in_the_transaction_that_journals_its_trial(tmp_path):
    from controller.store import OperatorQueue, Store

    path = tmp_path / "q.db"
    store = Store(path, create=True, meta={})
    queue = OperatorQueue(path)  # the API thread's own connection
    ids = queue.put([({"x": 0.25}, [0.25], None), ({"x": 0.75}, [0.75], None)], note="n")
    with Store(path) as reader:  # committed: visible to another connection before put() returns
        assert [p["params"] for p in reader.queued_points()] == [{"x": 0.25}, {"x": 0.75}]
    payload = {"params": {"x": 0.25}, "x": [0.25], "pool_index": None, "reason": {"policy": "operator"}}
    real_insert = store._insert

    def crash(*args, **kwargs):
        raise OSError("the process dies here")

    store._insert = crash  # a failure after the queue row is marked taken, before the trial is journaled
    with pytest.raises(OSError):
        store.new_trial(payload, queue_id=ids[0])
    store._insert = real_insert
    assert [p["id"] for p in store.queued_points()] == ids and store.trials() == []  # rolled back together
    rec = store.new_trial(payload, queue_id=ids[0])
    assert [p["id"] for p in store.queued_points()] == ids[1:]
    with pytest.raises(ValueError, match="not waiting"):
        store.new_trial(payload, queue_id=ids[0])  # taken once: never journaled twice
    assert [r.id for r in store.trials()] == [rec.id]
    with pytest.raises(ValueError):  # all or none: the second point fails, the first is not queued
        queue.put([({"x": 0.5}, [0.5], None), ({"x": 0.5}, ["not a number"], None)])
    assert len(store.queued_points()) == 1
    queue.close()
    store.close()


def test_points_queued_past_the_budget_are_said_and_measured_first_when_the_campaign_continues(write_campaign):
    from controller import Campaign, Store, load_config
    from controller.progress import SilentReporter

    class Said(SilentReporter):
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    path = write_campaign(trials=3)
    c = Campaign(load_config(path), reporter=(said := Said()))
    assert c.run().completed == 3
    c.queue_points([{"x0": 0.25, "x1": 0.5}, {"x0": 0.75, "x1": 0.125}], note="late")
    c.run()  # the budget is reached: nothing is measured, and the waiting points are not silently dropped
    assert any("2 operator point(s) queued but not yet measured" in line for line in said.lines), said.lines
    store = c.store.path
    c.close()
    c = Campaign.resume(store, reporter=SilentReporter(), trials=6)
    assert c.run().completed == 6
    c.close()
    with Store(store) as s:
        recs = s.trials()
        assert s.queued_points() == []
    assert [(r.params, r.reason["policy"], r.reason["note"]) for r in recs[3:5]] == [
        ({"x0": 0.25, "x1": 0.5}, "operator", "late"), ({"x0": 0.75, "x1": 0.125}, "operator", "late")]
    assert [r.reason.get("policy") for r in recs].count("operator") == 2
