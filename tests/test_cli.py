"""The `aec` command as people and scripts use it (issue 15): progress off a terminal, --quiet/--json,
figures on demand, running the same file twice, a quick --help, CSV columns, errors without tracebacks,
and exit 3 when a campaign measured nothing."""
from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from controller.cli import EXIT_FAILED, _print_summary, _to_csv, main
from controller.preflight import load_config
from controller.progress import LogReporter

WARNS = '''
import warnings
from fns import branin

def warns(p):
    warnings.warn("Optimization failed in `gen_candidates_scipy` with status ABNORMAL", RuntimeWarning)
    return branin(p)
'''


def _store(path: Path) -> str:
    return str(load_config(path).store_path())


def _ran(write_campaign, capsys, **kwargs) -> str:
    path = write_campaign(**kwargs)
    assert main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    return _store(path)


# 1. progress and logging -------------------------------------------------------------------------


def test_run_off_a_terminal_prints_plain_progress_lines_on_stderr(write_campaign, capsys):
    assert main(["run", str(write_campaign(trials=3))]) == 0
    err = capsys.readouterr().err
    assert "t: 3/3 done, 0 failed, fallbacks: 0, best " in err and "trials/s, ETA" in err
    assert "━" not in err  # not a rich bar frozen into the log


def test_log_reporter_prints_at_an_interval_and_the_last_state_at_the_end():
    buf = io.StringIO()
    r = LogReporter(every=3600, stream=buf)
    r.start("c", 10, 0)
    for done in range(1, 5):
        r.update(done, 1, 0.5, fallbacks=2)
    assert len(buf.getvalue().splitlines()) == 1  # only the start line inside the interval
    r.finish()
    last = buf.getvalue().splitlines()[-1]
    assert "c: 4/10 done, 1 failed, fallbacks: 2, best 0.5" in last and "ETA" in last


def test_verbose_shows_aec_debug_but_not_other_libraries(tmp_path):
    code = ("import logging, sys\nfrom controller import cli\n"
            "cli.cmd_validate = lambda a: print(logging.getLogger('matplotlib.font_manager').isEnabledFor(10),"
            " logging.getLogger('controller.store').isEnabledFor(10), logging.getLogger('policies.x').isEnabledFor(10)) or 0\n"
            "sys.exit(cli.main(['validate', 'x', '--verbose']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]


def test_library_warnings_are_counted_not_printed(workdir: Path, write_campaign, capsys):
    (workdir / "warny.py").write_text(WARNS)
    assert main(["run", str(write_campaign(trials=3, target="warny:warns")), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["library_warnings"] >= 1
    assert "ABNORMAL" not in err


# 2. --quiet and --json ---------------------------------------------------------------------------


def test_export_out_json_says_what_was_written(write_campaign, capsys, tmp_path):
    store = _ran(write_campaign, capsys, trials=2)
    target = tmp_path / "t.csv"
    assert main(["export", store, "--format", "csv", "--out", str(target), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"wrote": str(target), "format": "csv", "trials": 2} and err == ""
    assert len(target.read_text().splitlines()) == 3


def test_export_quiet_still_prints_the_requested_data(write_campaign, capsys):
    store = _ran(write_campaign, capsys, trials=2)
    assert main(["export", store, "--quiet"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_failed_validate_json_prints_valid_false_and_the_problems(workdir: Path, capsys):
    bad = workdir / "bad.yaml"
    bad.write_text("name: x\nobjectives: []\n")
    assert main(["validate", str(bad), "--json"]) == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["valid"] is False and doc["problems"] and all(isinstance(p, str) for p in doc["problems"])
    assert err.startswith("error: ")


# 3. figures on demand ----------------------------------------------------------------------------


def test_run_draws_no_figures_unless_asked(write_campaign, capsys):
    path = write_campaign(trials=3)
    assert main(["run", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["figures"] == []
    assert not Path(_store(path) + ".report").exists()
    path2 = write_campaign("u", trials=3)
    assert main(["run", str(path2), "--json", "--figures"]) == 0
    figures = json.loads(capsys.readouterr().out)["figures"]
    assert figures and all(Path(f).exists() for f in figures)


# 4. the same file twice --------------------------------------------------------------------------


def test_running_a_finished_campaign_again_shows_it(write_campaign, capsys):
    path = write_campaign(trials=2)
    assert main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "already done" in err and "aec resume" in err and "2 trials" in out
    assert main(["run", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["already_done"] is True


def test_running_into_a_store_of_another_campaign_still_refuses(write_campaign, capsys):
    path = write_campaign(trials=2)
    assert main(["run", str(path), "--quiet", "--trials", "1"]) == 0  # a different (stored) config
    capsys.readouterr()
    assert main(["run", str(path), "--quiet"]) == 2
    assert "aec resume" in capsys.readouterr().err


# 5. a quick --help -------------------------------------------------------------------------------


def test_cli_imports_neither_torch_nor_the_campaign(tmp_path):
    code = "import sys, controller.cli; print(sorted(m for m in ('torch', 'controller.campaign') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == "[]", out.stderr
    import controller

    assert controller.Campaign.__name__ == "Campaign"


# 6. CSV columns and the Pareto set ---------------------------------------------------------------


def test_csv_columns_are_unique_and_times_iso_8601():
    rows = [{"id": 0, "status": "completed", "attempts": 1, "params": {"x": 0.5, "status": 1},
             "metrics": {"y": 1.0, "novelty": 0.25}, "novelty": 0.25, "pvalue": 0.1,
             "proposed_at": 1796137445.1234, "started_at": None, "finished_at": 0.0}]
    lines = _to_csv(rows).splitlines()
    header = lines[0].split(",")
    assert len(header) == len(set(header))
    assert {"metric.novelty", "novelty", "param.status", "x", "y"} <= set(header)
    row = dict(zip(header, lines[1].split(",")))
    assert row["proposed_at"] == "2026-12-01T15:04:05.123Z" and row["finished_at"] == "1970-01-01T00:00:00.000Z"
    assert row["started_at"] == ""


def test_multi_objective_summary_shows_the_pareto_table():
    from rich.console import Console

    pareto = [{"id": 3, "params": {"x0": 0.1, "x1": 0.9}, "metrics": {"f0": 2.0, "f1": 5.0}},
              {"id": 7, "params": {"x0": 0.4, "x1": 0.2}, "metrics": {"f0": 1.0, "f1": 8.0}}]
    summary = SimpleNamespace(name="mo", stopped="budget reached", completed=10, failed=0, best=None, pareto=pareto,
                              hypervolume=12.5, fallbacks={"count": 0, "reasons": []}, store="s.db", figures=[],
                              library_warnings=0)
    campaign = SimpleNamespace(objectives=[SimpleNamespace(metric="f0"), SimpleNamespace(metric="f1")])
    console = Console(file=io.StringIO(), width=120)
    _print_summary(summary, campaign, console)
    text = console.file.getvalue()
    assert "Pareto set: 2 trials, hypervolume 12.5" in text
    header = next(line for line in text.splitlines() if "x0" in line)
    assert all(col in header for col in ("id", "x0", "x1", "f0", "f1"))
    rows = [line for line in text.splitlines() if "0.9" in line or "0.2" in line]
    assert len(rows) == 2 and "7" in rows[0] and "3" in rows[1]  # best first objective first


@pytest.mark.parametrize("waited, pace, hint", [(0.12, 0.05, "lookahead"), (0.01, 0.05, None), (0.9, 0.2, "pace")])
def test_summary_says_how_long_the_workers_waited_for_the_policy_and_what_would_help(waited, pace, hint):
    from rich.console import Console

    workers = {"workers": 8, "measured": 64, "busy_s": 32.0, "span_s": 4.4, "utilisation": 0.82,
               "waited_for_policy_s": waited * 8 * 4.4, "waited_for_policy": waited, "lookahead": 8,
               "policy_s_per_point": pace}
    summary = SimpleNamespace(name="w", stopped="budget reached", completed=64, failed=0, best=None, pareto=[],
                              hypervolume=None, fallbacks={"count": 0, "reasons": []}, store="s.db", figures=[],
                              library_warnings=0, workers=workers)
    console = Console(file=io.StringIO(), width=400)
    _print_summary(summary, SimpleNamespace(objectives=[SimpleNamespace(metric="y")]), console)
    text = console.file.getvalue()
    assert f"8 busy 82.0% of 4.4 s; {waited * 8 * 4.4:.1f} worker-s ({waited:.1%}) waiting for the policy" in text
    # 0.5 s a measurement on 8 workers: one needed every 62.5 ms; a policy at 50 ms a point keeps pace on average
    assert ("a larger executor.lookahead (now 8)" in text) is (hint == "lookahead")
    assert ("the policy makes a point in 200 ms and the workers use one every 62.5 ms" in text) is (hint == "pace")


# 7. errors, never tracebacks ---------------------------------------------------------------------


def _fails(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_export_and_triage_out_mistakes_are_errors(write_campaign, capsys, tmp_path):
    store = _ran(write_campaign, capsys, trials=2)
    assert "does not exist" in _fails(capsys, "export", store, "--out", str(tmp_path / "missing" / "t.json"))
    assert "is a folder" in _fails(capsys, "export", store, "--out", str(tmp_path))
    if Path("/dev/full").exists():
        assert "No space left" in _fails(capsys, "export", store, "--out", "/dev/full")
    afile = tmp_path / "afile"
    afile.write_text("")
    assert "is a file" in _fails(capsys, "triage", "--reference", str(afile), "--input", str(afile), "--keep", "0.1",
                                 "--out", str(afile))


def _damage(store: str, how: str) -> None:
    db = sqlite3.connect(store)
    if how == "payload":
        db.execute("UPDATE events SET payload='{not json' WHERE seq=2")
    elif how == "unknown":
        db.execute("INSERT INTO events (trial_id, kind, attempt, time, payload) VALUES (99, 'started', 1, 0, '{}')")
    elif how == "config":
        db.execute("DELETE FROM meta WHERE key='config'")
    db.commit()
    db.close()


@pytest.mark.parametrize("how", ["payload", "unknown", "config", "pages"])
def test_a_damaged_store_is_an_error_naming_it(write_campaign, capsys, how):
    store = _ran(write_campaign, capsys, trials=12)
    if how == "pages":
        data = bytearray(Path(store).read_bytes())
        lo, hi = len(data) // 4, 3 * len(data) // 4  # the middle half of the file: journal pages among them
        data[lo:hi] = bytes((i * 37 + 11) % 256 for i in range(hi - lo))
        Path(store).write_bytes(bytes(data))
    else:
        _damage(store, how)
    for argv in (["show", store], ["export", store, "--format", "csv"], ["report", store], ["resume", store]):
        err = _fails(capsys, *argv)
        assert store in err, (argv, err)
        if how in ("payload", "unknown"):
            assert "event seq" in err


# 8. a campaign that measured nothing -------------------------------------------------------------


def test_every_trial_failed_exits_3_with_a_reason_even_when_quiet(write_campaign, capsys):
    assert main(["run", str(write_campaign(trials=4, target="fns:wrong_metric")), "--quiet"]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "all 10 trials failed" in err and "no 'y'" in err  # budget.max_failures defaults to max(trials, 10)


def test_stopping_on_max_failures_exits_3(write_campaign, capsys):
    path = write_campaign(target="fns:flaky", budget={"trials": 20, "max_failures": 2},
                          executor={"kind": "local", "attempts": 1})
    assert main(["run", str(path), "--json"]) == EXIT_FAILED
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["completed"] > 0 and "max_failures" in summary["stopped"]
    assert "budget.max_failures=2" in err and "stage did not reach" in err
