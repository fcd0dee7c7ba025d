"""`aec replay`: the metrics as Liang et al. 2021 define them, data-set loading, reproducibility, campaign replay."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.cli import main
from controller.errors import UserError
from controller.replay import metrics as M
from controller.replay.datasets import load_dataset
from controller.replay.plan import Plan

Y20 = [5, 3, 9, 0, 7, 1, 12, 8, 6, 4, 10, 11, 2, 13, 14, 15, 16, 17, 18, 19]


def _csv(path: Path, header: list[str], rows: list[list[object]], sep: str = ",") -> Path:
    path.write_text("\n".join([sep.join(header)] + [sep.join(map(str, r)) for r in rows]) + "\n")
    return path


def _aec(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


# metrics ----------------------------------------------------------------------------------------


def test_top_ef_af_on_a_hand_checkable_pool():
    values = np.array(Y20, dtype=float)
    top = M.top_set(values, 0.1, maximize=False)
    assert sorted(top.tolist()) == [3, 5]  # ceil(0.1 * 20) = 2 rows: y = 0 and y = 1
    curve = M.top_fraction([0, 1, 2, 3, 4, 5], top)
    assert curve.tolist() == [0, 0, 0, 0.5, 0.5, 1.0]
    ef = M.enhancement_factor(curve, 20)
    assert ef[3] == pytest.approx(0.5 / (4 / 20)) and ef[5] == pytest.approx(1.0 / (6 / 20))
    af = M.acceleration_factor(curve, 20, 2)
    assert af["top"] == [0.5, 1.0] and af["picks"] == [4, 6]
    assert af["af"] == pytest.approx([10 / 4, 20 / 6])  # random needs ceil(a N) picks on average
    assert M.top_set(values, 0.05, maximize=True).tolist() == [19]  # ceil(0.05 * 20) = 1, the largest


def test_hypervolume_curve_and_bands_by_hand():
    Y = np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.9]])
    hv = M.hypervolume_curve(Y, [False, False], [1.0, 1.0])
    assert hv == pytest.approx([0.25, 0.25 + 0.1875 - 0.125, 0.3125])  # a dominated point adds nothing
    band = M.Band.of([np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0])])  # a short run keeps its last value
    assert band.mean == [2.0, 3.0, 3.5] and band.median == [2.0, 3.0, 3.5]
    assert M.regret(M.best_so_far([3.0, 1.0, 2.0], maximize=False), 0.5, maximize=False).tolist() == [2.5, 0.5, 0.5]


def test_replay_of_a_raster_scan_gives_the_hand_computed_top_ef_af(tmp_path):
    data = _csv(tmp_path / "pool.csv", ["x", "y"], [[i, y] for i, y in enumerate(Y20)])
    rc = main(["replay", "--data", str(data), "--inputs", "x", "--objective", "y:min", "--policies", "grid",
               "--seeds", "2", "--budget", "8", "--top", "0.1", "--out", str(tmp_path / "r"), "--quiet"])
    assert rc == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    grid = res["policies"]["grid"]  # the raster visits x = 0, 1, 2, ... in order
    assert grid["top_fraction_mean"] == [0, 0, 0, 0.5, 0.5, 1, 1, 1]
    assert grid["enhancement_factor"]["at_budget"] == pytest.approx(1.0 / (8 / 20))
    assert grid["acceleration_factor"]["af"] == pytest.approx([10 / 4, 20 / 6])
    assert grid["best_so_far_median"][:4] == [5, 3, 3, 0] and grid["regret_median"][-1] == 0
    assert res["problems"]["pool"]["pool_size"] == 20 and res["problems"]["pool"]["top_count"] == 2
    assert grid["seconds_per_decision_median"] >= 0


def test_random_enhancement_factor_is_one_within_a_bernstein_bound(tmp_path):
    """Random picks without replacement: over S seeds of n picks the top-set hits H have mean S n p (p = M/N)
    and, by Hoeffding's reduction of sampling without replacement to sampling with it, Bernstein's bound
    P(|H/(S n) - p| >= t) <= 2 exp(-S n t^2 / (2 p (1 - p) + 2 t / 3)). With S n = 1600, p = 0.2 and
    2 exp(...) = 1e-4 this gives t = 0.047, so EF = (H / (S n)) / p lies in 1 +- 0.24."""
    rng = np.random.default_rng(11)
    X = rng.random((1000, 3))
    data = _csv(tmp_path / "big.csv", ["a", "b", "c", "y"], [[*x, float(np.sin(7 * x).sum())] for x in X])
    S, n, p = 16, 100, 0.2
    rc = main(["replay", "--data", str(data), "--inputs", "a,b,c", "--objective", "y", "--policies", "random",
               "--seeds", str(S), "--budget", str(n), "--top", str(p), "--out", str(tmp_path / "r"), "--quiet"])
    assert rc == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    log_term = math.log(2 / 1e-4)
    a, b, c = S * n, -2 * log_term / 3, -2 * p * (1 - p) * log_term
    t = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    ef = res["policies"]["random"]["enhancement_factor"]["at_budget"]
    assert abs(ef - 1) <= t / p, (ef, t / p)
    assert res["problems"]["big"]["top_count"] == 200


def test_fixed_seeds_give_identical_replays(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.random((60, 2))
    data = _csv(tmp_path / "d.csv", ["a", "b"] + ["y"], [[*x, float((x - 0.3) @ (x - 0.3))] for x in X])
    out = []
    for k in range(2):
        rc = main(["replay", "--data", str(data), "--inputs", "a,b", "--objective", "y", "--policies", "random,botorch",
                   "--seeds", "2", "--budget", "8", "--out", str(tmp_path / f"r{k}"), "--quiet"])
        assert rc == 0
        plan = Plan.read(tmp_path / f"r{k}")
        from controller.replay.summary import run_trace

        out.append({r.key: run_trace(r)["picks"] for r in plan.runs})
    assert out[0] == out[1]
    assert out[0]["d.random.s0"] != out[0]["d.random.s1"]  # seeds matter


# data sets -------------------------------------------------------------------------------------


def test_bom_semicolons_decimal_commas_and_quoted_headers_are_read(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff\"temp\";\" time \";\"yield\"\n1,5;10;0,25\n2,5;20;0,75\n".encode("utf-8"))
    d = load_dataset(path, ["temp", "time"], ["yield"])
    assert d.X.tolist() == [[1.5, 10.0], [2.5, 20.0]] and d.Y["yield"].tolist() == [0.25, 0.75]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=12),
       st.sampled_from([",", ";", "\t"]))
def test_any_finite_numbers_survive_every_separator(tmp_path, values, sep):
    """European files (`;`, decimal commas), tab-separated and plain CSV give back the same floats."""
    suffix = ".tsv" if sep == "\t" else ".csv"
    cell = (lambda v: repr(v).replace(".", ",")) if sep == ";" else repr
    path = tmp_path / f"t{suffix}"
    path.write_text("\n".join([sep.join(["i", "y"])] + [sep.join([str(i), cell(v)]) for i, v in enumerate(values)]))
    d = load_dataset(path, ["i"], ["y"])
    assert d.Y["y"].tolist() == values and d.X[:, 0].tolist() == list(range(len(values)))


def test_duplicates_grouped_by_mean_of_unique_values_kept_or_first(tmp_path):
    path = _csv(tmp_path / "dup.csv", ["x", "y"], [[1, 1], [2, 5], [1, 1], [1, 4]])
    mean = load_dataset(path, ["x"], ["y"])
    assert mean.X[:, 0].tolist() == [1, 2] and mean.Y["y"].tolist() == [2.5, 5]  # unique {1, 4} -> 2.5
    assert mean.grouped == 2
    assert load_dataset(path, ["x"], ["y"], duplicates="first").Y["y"].tolist() == [1, 5]
    keep = load_dataset(path, ["x"], ["y"], duplicates="keep")
    assert keep.inputs == ["x", "replicate"] and keep.X[:, 1].tolist() == [0, 0, 1, 2]


def test_missing_values_are_reported_by_line_and_dropped_or_refused(tmp_path):
    path = _csv(tmp_path / "gaps.csv", ["x", "y"], [[1, 1], [2, ""], [3, 3], ["", 4]])
    d = load_dataset(path, ["x"], ["y"])
    assert d.dropped_lines == [3, 5] and d.rows == 2
    assert "lines 3, 5" in d.notes()[0]
    with pytest.raises(UserError, match="lines 3, 5"):
        load_dataset(path, ["x"], ["y"], missing="refuse")


@pytest.mark.parametrize("content, args, expected", [
    ("x,y\n1,2\n", ["--inputs", "x,z"], "no column 'z'"),
    ("x,y\n1,2\nabc,3\n", ["--inputs", "x"], "column 'x' is not numeric (line 3: 'abc')"),
    ("", ["--inputs", "x"], "the file is empty"),
    ("x,y\n", ["--inputs", "x"], "no data rows"),
    (b"\xff\xfex\x00,\x00y\x00\n\x001\x00,\x002\x00\n\x00", ["--inputs", "x"], "UTF-16"),
])
def test_bad_data_files_give_one_line_errors_and_exit_2(tmp_path, capsys, content, args, expected):
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = ["replay", "--data", str(path), *args, "--objective", "y", "--policies", "random", "--out", str(tmp_path / "r")]
    if expected == "UTF-16":  # once as the installed command does, in a process of its own
        proc = _aec(*argv, cwd=tmp_path)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = main(argv), capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and expected in lines[0], err


def test_replay_file_mistakes_are_one_line_errors(tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", ["x", "y"], [[i, i] for i in range(10)])
    spec = {"datasets": [{"file": str(data), "inputs": ["x"], "objectives": ["y:max"]}],
            "policies": [{"kind": "botorch", "acquisiton": "ucb"}], "sedes": 3}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["replay", str(path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {path}: sedes: unknown key (check its spelling and the "
                                               "campaign file reference in the README)")
    del spec["sedes"]
    path.write_text(yaml.safe_dump(spec))
    assert main(["replay", str(path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: policies[0].acquisiton: unknown key")


# campaign replay -------------------------------------------------------------------------------


def test_campaign_store_is_rerun_against_its_function_with_other_policies(workdir, write_campaign):
    cfg = write_campaign("orig", trials=4)
    assert main(["run", str(cfg), "--quiet"]) == 0
    out = workdir / "r"
    assert main(["replay", "--store", str(workdir / "orig.db"), "--policies", "random,botorch", "--seeds", "2",
                 "--budget", "6", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    prob = res["problems"]["orig"]
    assert prob["kind"] == "campaign" and "pool_size" not in prob  # a function: measured again, no pool
    for pol in ("random", "botorch"):
        assert res["policies"][pol]["finished"] == 2 and len(res["policies"][pol]["best_so_far_median"]) == 6


def test_recorded_campaign_is_replayed_on_its_own_measurements(tmp_path):
    rng = np.random.default_rng(5)
    rows = [[*x, float(((x - 0.5) ** 2).sum())] for x in rng.random((40, 2))]
    table = _csv(tmp_path / "runs.csv", ["x0", "x1", "y"], rows)
    camp = {"name": "rec", "space": {"pool": {"file": str(table), "columns": ["x0", "x1"]}},
            "objectives": [{"metric": "y"}], "instrument": {"kind": "recorded", "file": str(table), "metrics": ["y"]},
            "policy": {"kind": "random"}, "budget": {"trials": 25}, "store": str(tmp_path / "rec.db")}
    (tmp_path / "rec.yaml").write_text(yaml.safe_dump(camp))
    assert main(["run", str(tmp_path / "rec.yaml"), "--quiet"]) == 0
    assert main(["replay", "--store", str(tmp_path / "rec.db"), "--policies", "sobol", "--seeds", "1",
                 "--budget", "30", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    prob = json.loads((tmp_path / "r" / "results.json").read_text())["problems"]["rec"]
    assert prob["kind"] == "store-pool" and prob["pool_size"] == 25 and prob["budget"] == 25
    assert prob["policies"]["sobol"]["top_fraction_mean"][-1] == 1.0  # the whole pool measured


@pytest.mark.parametrize("name", ["replay_materials", "replay_campaign"])
def test_replay_examples_run_and_report(name, tmp_path):
    example = Path(__file__).parent.parent / "examples" / f"{name}.yaml"
    out = tmp_path / "r"
    assert main(["replay", str(example), "--seeds", "1", "--budget", "4", "--workers", "1", "--out", str(out),
                 "--quiet"]) == 0
    assert main(["report", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert all(r["finished"] == 1 and r["fallbacks"] == 0 for r in res["policies"].values())
    assert (out / "index.html").stat().st_size > 10_000


# reuse of a replay folder ----------------------------------------------------------------------


def _pool_csv(path: Path, shift: float = 0.0) -> Path:
    rng = np.random.default_rng(9)
    return _csv(path, ["a", "b", "y"], [[*x, float(np.sin(5 * x[0]) + x[1] + shift)] for x in rng.random((30, 2))])


def _replay_argv(data: Path, out: Path, *extra: str, budget: int = 5, objective: str = "y") -> list[str]:
    return ["replay", "--data", str(data), "--inputs", "a,b", "--objective", objective, "--policies", "random,sobol",
            "--seeds", "2", "--budget", str(budget), "--out", str(out), "--quiet", *extra]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and (p.parent.name == "data" or p.name in ("replay.json", "results.json"))}


def test_a_folder_made_by_another_replay_is_refused_and_left_alone(tmp_path, capsys):
    data, out = _pool_csv(tmp_path / "good.csv"), tmp_path / "r1"
    assert main(_replay_argv(data, out)) == 0
    before = _snapshot(out)
    other = tmp_path / "other"
    other.mkdir()
    policy_file = tmp_path / "pols.yaml"
    policy_file.write_text(yaml.safe_dump({"policies": [{"kind": "random"}, {"kind": "grid", "name": "sobol",
                                                                         "points_per_dim": 3}]}))
    capsys.readouterr()
    cases = [
        (_replay_argv(data, out, budget=10), "(budget 5 vs 10)"),
        (_replay_argv(data, out, objective="y:max"), "goal minimize vs maximize"),
        (_replay_argv(_pool_csv(other / "good.csv", 1.0), out), f"data {data} vs {other / 'good.csv'}"),
        (["replay", "--data", str(data), "--inputs", "a,b", "--objective", "y", "--policy-file", str(policy_file),
          "--seeds", "2", "--budget", "5", "--out", str(out), "--quiet"], "policy.kind sobol vs grid"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {out} was made by a different replay (")
        assert expected in err[0] and err[0].endswith("; use a new --out"), err
    _pool_csv(data, 1.0)  # the same file, other contents
    assert main(_replay_argv(data, out)) == 2
    assert f"contents of {data}" in capsys.readouterr().err
    assert _snapshot(out) == before  # no data, plan or result of the first replay overwritten
    res = json.loads((out / "results.json").read_text())
    assert all(len(r["best_so_far_median"]) == 5 for r in res["policies"].values())


def test_an_interrupted_run_of_another_replay_is_refused_and_the_same_replay_reuses_its_runs(tmp_path, capsys):
    import sqlite3

    from controller.replay.runner import FINISHED_META, run_state

    data, out = _pool_csv(tmp_path / "good.csv"), tmp_path / "r"
    assert main(_replay_argv(data, out)) == 0
    store = Plan.read(out).runs[0].store
    with sqlite3.connect(store) as db:  # as if killed before it finished
        db.execute("DELETE FROM meta WHERE key = ?", (FINISHED_META,))
    assert run_state(Path(store)) == (False, 5)
    (out / "replay.json").unlink()  # the stores alone say which replay made them
    capsys.readouterr()
    assert main(_replay_argv(data, out, budget=10)) == 2
    assert "(budget 5 vs 10)" in capsys.readouterr().err
    assert main(_replay_argv(data, out, "--json")[:-2] + ["--json"]) == 0
    calls = json.loads(capsys.readouterr().out)["this_call"]
    assert calls == {"finished": 1, "skipped": 3, "failed": 0}


@pytest.mark.parametrize("content, expected", [
    ('{"name": 1}', "top: missing"),
    ("garbage{", "not readable as JSON"),
    ("[1, 2]", "damaged"),
    ('{"name": "x", "top": 0.05, "problems": {"p": {"bogus": 1}}, "runs": []}', "damaged"),
])
def test_a_damaged_replay_json_is_a_one_line_error(tmp_path, capsys, content, expected):
    out = tmp_path / "r"
    out.mkdir()
    (out / "replay.json").write_text(content)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out / 'replay.json'}: ") and expected in err[0], err


# ties, fallbacks, levels, known optima, temp files -----------------------------------------------


def test_rows_tied_with_the_cut_off_are_all_top():
    values = np.array([3, 0, 1, 1, 1, 5, 6, 7, 8, 9] * 2, dtype=float)  # ceil(0.1 * 20) = 2: cut-off value 0
    assert M.top_set(values, 0.1, maximize=False).tolist() == [1, 11]
    assert M.top_set(values, 0.15, maximize=False).tolist() == [1, 2, 3, 4, 11, 12, 13, 14]  # 3rd best is a 1
    flat = np.full(20, 2.5)
    top = M.top_set(flat, 0.05, maximize=True)
    assert len(top) == 20  # a constant objective: every row is as good as the best
    curve = M.top_fraction([4, 9, 0], top)
    assert curve.tolist() == pytest.approx([1 / 20, 2 / 20, 3 / 20])
    assert M.enhancement_factor(curve, 20).tolist() == pytest.approx([1.0, 1.0, 1.0])  # no policy beats random


def test_a_constant_objective_gives_every_policy_ef_one(tmp_path):
    data = _csv(tmp_path / "flat.csv", ["x", "y"], [[i, 1.0] for i in range(20)])
    assert main(["replay", "--data", str(data), "--inputs", "x", "--objective", "y", "--policies", "grid,random",
                 "--seeds", "2", "--budget", "6", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["problems"]["flat"]["top_count"] == 20
    for r in res["policies"].values():
        assert r["enhancement_factor"]["at_budget"] == pytest.approx(1.0)
        assert r["top_fraction_mean"][-1] == pytest.approx(6 / 20)


def test_fallbacks_show_in_the_table_and_warn_on_stderr(tmp_path, capsys, monkeypatch):
    from controller.replay import summary

    real = summary.run_trace

    def with_fallbacks(run):
        trace = real(run)
        if trace is not None and run.policy == "sobol":
            trace["fallbacks"] = 2
        return trace

    monkeypatch.setattr(summary, "run_trace", with_fallbacks)
    data = _pool_csv(tmp_path / "d.csv")
    argv = [a for a in _replay_argv(data, tmp_path / "r") if a != "--quiet"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "fallbacks" in cap.out
    row = next(line for line in cap.out.splitlines() if " sobol " in line)
    assert row.split("│")[3].strip() == "4", row  # policy, runs, fallbacks
    warn = [line for line in cap.err.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "sobol 4 time(s)" in warn[0] and "random" not in warn[0]


@pytest.mark.parametrize("levels", ["5", "0", "0.05,1", "abc"])
def test_levels_outside_zero_one_are_refused(tmp_path, capsys, levels):
    store = tmp_path / "s.db"
    store.write_bytes(b"")
    assert main(["replay", "--store", str(store), "--keep-fractions", "0.1", "--levels", levels,
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --levels: expected "), err
    assert not (tmp_path / "o").exists()


def test_the_selection_replay_honours_the_campaigns_sample_rate():
    from controller.replay.selection import _sample_rate

    assert _sample_rate({"kind": "autoencoder", "sample_rate": 0.0}) == (0.0, [])
    rate, notes = _sample_rate({"kind": "autoencoder", "sample_rate": 0.25})
    assert rate == 0.25 and "sample_rate 0.25 is honoured" in notes[0]
    assert _sample_rate({"kind": "autoencoder"})[0] == pytest.approx(0.02)  # the selector's default


def _branin_campaign(tmp_path: Path, **space) -> Path:
    camp = {"name": "br", "objectives": [{"metric": "y", "goal": space.pop("goal", "minimize")}],
            "instrument": {"kind": "simulator", "name": "branin"}, "policy": {"kind": "random"},
            "budget": {"trials": 4}, **space}
    path = tmp_path / "br.yaml"
    path.write_text(yaml.safe_dump(camp))
    return path


def test_a_known_optimum_is_used_only_for_its_goal_and_full_bounds(tmp_path, capsys):
    from controller.replay.plan import _known_optimum

    full = {"instrument": {"kind": "simulator", "name": "branin"}, "objectives": [{"metric": "y", "goal": "minimize"}]}
    value, why = _known_optimum(full)
    assert value == pytest.approx(0.397887, rel=1e-4) and why is None
    assert _known_optimum({**full, "objectives": [{"metric": "y", "goal": "maximize"}]})[1].startswith(
        "the simulator's known optimum 0.397887 is for goal minimize")
    narrow = {**full, "space": {"parameters": [{"name": "x0", "type": "real", "low": 0.0, "high": 1.0},
                                               {"name": "x1", "type": "real", "low": 0.0, "high": 15.0}]}}
    assert "parameter x0 is [0.0, 1.0], not the simulator's full [-5.0, 10.0]" in _known_optimum(narrow)[1]

    _branin_campaign(tmp_path, goal="maximize")
    (tmp_path / "rp.yaml").write_text(yaml.safe_dump({"campaigns": [{"file": "br.yaml"}], "policies": ["random"],
                                                      "seeds": 1, "budget": 4}))
    capsys.readouterr()
    assert main(["replay", str(tmp_path / "rp.yaml"), "--out", str(tmp_path / "r")]) == 0
    prob = json.loads((tmp_path / "r" / "results.json").read_text())["problems"]["br"]
    assert "optimum" not in prob and "regret_median" not in prob["policies"]["random"]
    assert len(prob["policies"]["random"]["best_so_far_median"]) == 4
    assert "no regret curve (best so far only)" in capsys.readouterr().out


def test_stale_temp_names_do_not_block_writing_the_plan_results_or_page(tmp_path):
    data, out = _pool_csv(tmp_path / "d.csv"), tmp_path / "r"
    out.mkdir()
    for name in (".index.html.tmp", "replay.json.tmp", "results.json.tmp"):  # the old fixed temp names
        (out / name).mkdir()
    assert main(_replay_argv(data, out)) == 0
    assert main(["report", str(out), "--quiet"]) == 0
    assert (out / "index.html").is_file() and json.loads((out / "replay.json").read_text())["runs"]
    assert not [p for p in out.iterdir() if p.is_file() and p.name.endswith(".tmp")]
