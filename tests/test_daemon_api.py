"""The daemon's control API against a real `aec daemon` (uvicorn on a free loopback port, a subprocess):
every endpoint, the bearer token, 422 (never 500) for malformed bodies, a schema fuzz, a clean stop."""
from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller import Store
from daemon_helpers import TOKEN, Daemon, write_campaign

MUTATING = [("POST", "/pause", None), ("POST", "/resume", None), ("POST", "/stop", None),
            ("PATCH", "/budget", {"trials": 5}), ("POST", "/trials", {"points": [{"x0": 0.5, "x1": 0.5}]}),
            ("POST", "/policy", {"kind": "sobol"})]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("daemon-api")
    path = write_campaign(folder, "api", target="dfns:spectrum", budget={"open_ended": True},
                          objectives=[{"metric": "y", "goal": "minimize"}, {"metric": "cost", "goal": "minimize"}],
                          executor={"workers": 1, "lookahead": 0})
    d = Daemon(str(path), cwd=folder, env={"AEC_TEST_SLEEP": "0.02"})
    yield d
    if d.proc.poll() is None:
        d.kill()


def _wait(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_openapi_schema_is_served_and_names_every_endpoint(daemon):
    schema = daemon.get("/openapi.json").json()
    ops = {(m.upper(), p) for p, item in schema["paths"].items() for m in item}
    assert ops >= {("GET", "/health"), ("GET", "/status"), ("GET", "/trials"), ("GET", "/trials/{trial_id}"),
                   ("GET", "/metrics"), ("POST", "/pause"), ("POST", "/resume"), ("POST", "/stop"),
                   ("PATCH", "/budget"), ("POST", "/trials"), ("POST", "/policy")}
    assert "401" in schema["paths"]["/pause"]["post"]["responses"]
    assert daemon.get("/docs").status_code == 200


def test_read_endpoints_show_status_trials_and_metrics(daemon):
    st = _wait(lambda: (s := daemon.status())["counts"].get("completed", 0) >= 6 and s, what="6 completions")
    assert daemon.get("/health").json() == {"status": "ok", "state": "running"}
    assert st["state"] == "running" and st["budget"]["open_ended"] is True
    assert st["pareto"] and st["hypervolume"] is not None and st["hypervolume"] > 0
    assert st["rate"] > 0 and st["fallbacks"] == 0
    front = {tuple(t["metrics"][m] for m in ("y", "cost")) for t in st["pareto"]}
    assert all(not (a[0] <= b[0] and a[1] <= b[1] and a != b) for a in front for b in front), "a dominated point"

    page = daemon.get("/trials", params={"since": -1, "limit": 2}).json()
    assert [t["id"] for t in page["trials"]] == [0, 1] and page["next_since"] == 1
    nxt = daemon.get("/trials", params={"since": page["next_since"], "limit": 2}).json()
    assert [t["id"] for t in nxt["trials"]] == [2, 3]
    one = daemon.get("/trials/0").json()
    assert one["status"] == "completed" and one["kept"] is True
    assert one["data_shape"] == [16] and one["data_dtype"] == "float32"
    assert daemon.get("/trials/999999").status_code == 404

    text = daemon.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"aec_trials", "aec_measurement_seconds", "aec_proposal_seconds", "aec_instrument_idle_fraction",
            "aec_novelty_decisions", "aec_store_bytes", "aec_fallbacks", "aec_daemon_state"} <= set(families)
    completed = next(s.value for s in families["aec_trials"].samples if s.labels.get("status") == "completed")
    assert completed >= 6
    count = next(s.value for s in families["aec_measurement_seconds"].samples
                 if s.name.endswith("_count") and s.labels.get("outcome") == "completed")
    assert count >= 6
    assert 0.0 <= families["aec_instrument_idle_fraction"].samples[0].value <= 1.0
    assert families["aec_store_bytes"].samples[0].value > 0


@pytest.mark.parametrize("method,path,body", MUTATING)
@pytest.mark.parametrize("token", [None, "wrong-token", "ünïcode"])
def test_mutating_calls_without_the_token_are_401(daemon, method, path, body, token):
    before = daemon.status()["state"]
    r = daemon.call(method, path, body, token=None) if token is None else _raw_bearer(daemon, method, path, body, token)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert daemon.status()["state"] == before


def _raw_bearer(daemon, method, path, body, token):
    import httpx

    return httpx.request(method, daemon.url + path, json=body, timeout=10,
                         headers=[(b"Authorization", b"Bearer " + token.encode())])


def test_pause_stops_new_trials_and_resume_restarts_them(daemon):
    r = daemon.call("POST", "/pause")
    assert r.status_code == 200 and r.json()["state"] == "paused"
    time.sleep(0.6)  # the trial in flight finishes
    n = sum(daemon.status()["counts"].values())
    time.sleep(1.0)
    assert sum(daemon.status()["counts"].values()) == n, "a trial started while paused"
    assert daemon.call("POST", "/pause").json()["state"] == "paused"  # idempotent
    assert daemon.call("POST", "/resume").json()["state"] == "running"
    _wait(lambda: sum(daemon.status()["counts"].values()) > n, what="a trial after resume")
    with sqlite3.connect(f"file:{daemon_store(daemon)}?mode=ro", uri=True) as db:
        states = [s for (s,) in db.execute("SELECT state FROM daemon_states ORDER BY seq")]
    assert states[:2] == ["starting", "running"] and states[-2:] == ["paused", "running"]


def daemon_store(daemon) -> Path:
    return Path(daemon.status()["store"])


def test_operator_points_are_measured_next_and_journaled_operator(daemon):
    r = daemon.call("POST", "/trials", {"points": [{"x0": 0.125, "x1": 0.25}, {"x0": 0.875, "x1": 0.5}],
                                        "note": "check the edge"})
    assert r.status_code == 202 and r.json()["queued"] == 2

    def measured():
        trials = daemon.get("/trials", params={"limit": 1000}).json()["trials"]
        ops = [t for t in trials if t["reason"].get("policy") == "operator"]
        return ops if len(ops) == 2 and all(t["status"] == "completed" for t in ops) else None

    ops = _wait(measured, what="the operator's points")
    assert [t["params"] for t in ops] == [{"x0": 0.125, "x1": 0.25}, {"x0": 0.875, "x1": 0.5}]
    assert all(t["reason"]["note"] == "check the edge" for t in ops)
    assert ops[1]["id"] == ops[0]["id"] + 1


@pytest.mark.parametrize("method,path,body,field", [
    ("POST", "/trials", {"points": [{"x0": 1.5, "x1": 0.5}]}, "outside"),
    ("POST", "/trials", {"points": [{"x0": 0.5}]}, "missing"),
    ("POST", "/trials", {"points": [{"x0": 0.5, "x1": 0.5, "z": 1}]}, "unknown"),
    ("POST", "/trials", {"points": [{"x0": 0.95, "x1": 0.95}]}, "constraint"),
    ("POST", "/trials", {"points": [{"x0": "left", "x1": 0.5}]}, "number"),
    ("POST", "/trials", {"points": [{"x0": True, "x1": 0.5}]}, "number"),
    ("POST", "/trials", {"points": []}, "at least 1"),
    ("POST", "/trials", {"points": [{"x0": 0.5, "x1": 0.5}], "extra": 1}, "extra"),
    ("POST", "/trials", "not an object", "dict"),
    ("PATCH", "/budget", {"trials": 0}, "greater than or equal"),
    ("PATCH", "/budget", {"trials": "many"}, "integer"),
    ("PATCH", "/budget", {"wall_time": "soon"}, "duration"),
    ("PATCH", "/budget", {"open_ended": False}, "open_ended"),
    ("POST", "/policy", {"kind": "magic"}, "unknown policy"),
    ("POST", "/policy", {"kind": "botorch", "options": {"acquisition": "nope"}}, "acquisition"),
    ("POST", "/policy", {}, "required"),
])
def test_malformed_bodies_are_422_with_a_message(daemon, method, path, body, field):
    r = daemon.call(method, path, body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail and all(d["msg"] for d in detail)
    assert field.lower() in r.text.lower(), r.text


def test_a_body_that_is_not_json_is_422(daemon):
    import httpx

    r = httpx.post(daemon.url + "/trials", content=b"{points: [", timeout=10,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 422


def test_policy_switch_and_budget_change_are_stored_with_history(daemon):
    r = daemon.call("POST", "/policy", {"kind": "sobol"})
    assert r.status_code == 200 and r.json()["policy"]["kind"] == "sobol"
    _wait(lambda: daemon.status()["policy"]["kind"] == "sobol", what="the switch")
    first = _wait(lambda: next((t for t in daemon.get("/trials", params={"limit": 1000}).json()["trials"]
                                if t["reason"].get("policy") == "sobol"), None), what="a sobol trial")
    done = daemon.status()["completed"]
    r = daemon.call("PATCH", "/budget", {"trials": done + 3, "open_ended": False})
    assert r.status_code == 200 and r.json()["budget"]["trials"] == done + 3
    st = daemon.wait_state("finished", timeout=60)
    assert st["completed"] == done + 3 and st["reason"] == "budget reached"
    with Store(daemon_store(daemon)) as store:
        config, history = store.config(), store.get_meta("policy_history")
    assert config["policy"]["kind"] == "sobol" and config["budget"]["trials"] == done + 3
    assert history[-1]["from"]["kind"] == "random" and history[-1]["to"]["kind"] == "sobol"
    assert history[-1]["next_trial"] <= first["id"]
    assert daemon.call("POST", "/resume").status_code == 409
    assert daemon.call("POST", "/trials", {"points": [{"x0": 0.5, "x1": 0.5}]}).status_code == 409
    r = daemon.call("PATCH", "/budget", {"trials": done + 5})
    assert r.status_code == 200
    st = daemon.wait_state("finished", timeout=60)
    assert st["completed"] == done + 5


def test_fuzzing_the_served_openapi_schema_finds_no_server_error(daemon):
    """schemathesis draws valid and invalid requests for every operation but /stop (tested next) from the
    served schema; every response must be below 500 and match the schema."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(daemon.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    requests_made, server_errors, nonconforming, codes = 0, [], [], Counter()
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) == ("POST", "/stop"):
            continue
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def exercise(case):
                nonlocal requests_made
                response = case.call(base_url=daemon.url, headers=headers)
                requests_made += 1
                codes[response.status_code] += 1
                if response.status_code >= 500:
                    server_errors.append((op.label, case.body, response.status_code, response.text[:200]))
                elif not op.is_valid_response(response):
                    nonconforming.append((op.label, response.status_code, response.text[:200]))

            try:
                exercise()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                assert mode == schemathesis.GenerationMode.NEGATIVE
    print(f"schema fuzz: {requests_made} requests, {len(server_errors)} server errors (5xx), "
          f"{len(nonconforming)} responses off the schema; status codes {dict(sorted(codes.items()))}")
    assert requests_made >= 200
    assert server_errors == []
    assert codes[422] >= 50, "the fuzz hardly reached the validation of bodies"
    assert nonconforming == []
    assert daemon.get("/health").status_code == 200


def test_stop_finishes_and_exits_zero(daemon):
    r = daemon.call("POST", "/stop")
    assert r.status_code == 200 and r.json()["state"] == "stopping"
    assert daemon.wait(timeout=30) == 0
    with Store(Path(daemon.log_path).parent / "api.db") as store:
        assert {r.status for r in store.trials()} == {"completed"}
    assert [line.get("state") for line in daemon.lines() if line.get("event") == "state"][-2:] == ["stopping", "stopped"]
