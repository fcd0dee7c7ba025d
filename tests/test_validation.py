"""`aec validate` says ok only when `aec run` will start: both refuse the same files, with a field and exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from controller.cli import main
from tests.conftest import campaign_dict

Edit = Callable[[dict[str, Any], Path], None]


def _set(dotted: str, value: Any) -> Edit:
    def apply(d: dict[str, Any], folder: Path) -> None:
        node: Any = d
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node[int(k)] if k.isdigit() else node[k]
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return apply


def _both(*edits: Edit) -> Edit:
    def apply(d: dict[str, Any], folder: Path) -> None:
        for e in edits:
            e(d, folder)
    return apply


def _write(name: str, text: str, mode: int = 0o644) -> Edit:
    def apply(d: dict[str, Any], folder: Path) -> None:
        (folder / name).write_text(text)
        (folder / name).chmod(mode)
    return apply


_SIM_SPACE = _set("space", None)

# case: (edit of the conftest campaign, field the error names, phrase in the message)
BAD: dict[str, tuple[Edit, str, str]] = {
    "unknown_simulator": (_both(_SIM_SPACE, _set("instrument", {"kind": "simulator", "name": "nosuch"})),
                          "instrument", "nosuch"),
    "unknown_simulator_option": (
        _both(_SIM_SPACE, _set("instrument", {"kind": "simulator", "name": "branin", "options": {"bogus": 1}})),
        "instrument.options", "bogus"),
    "objective_simulator_lacks": (
        _both(_SIM_SPACE, _set("instrument", {"kind": "simulator", "name": "branin"}),
              _set("objectives", [{"metric": "z"}])), "objectives[0].metric", "'z'"),
    "constraint_metric_simulator_lacks": (
        _both(_SIM_SPACE, _set("instrument", {"kind": "simulator", "name": "branin"}),
              _set("constraints", [{"metric": "w", "op": "<=", "bound": 1.0}])), "constraints[0].metric", "'w'"),
    "missing_module": (_set("instrument.target", "nomodule_xyz:f"), "instrument.target", "nomodule_xyz"),
    "missing_function": (_set("instrument.target", "fns:nope"), "instrument.target", "nope"),
    "file_not_module": (_set("instrument.target", "fns.py:branin"), "instrument.target", "'fns:branin'"),
    "module_raises_at_import": (_both(_write("boom.py", "raise RuntimeError('no licence server')\n"),
                                      _set("instrument.target", "boom:f")), "instrument.target", "no licence server"),
    "missing_pool_file": (_set("space", {"pool": {"file": "nope.csv"}}), "space.pool.file", "nope.csv"),
    "missing_recorded_file": (_both(_write("pool.csv", "x0,x1\n0,0\n1,1\n"), _set("space", {"pool": {"file": "pool.csv"}}),
                                    _set("instrument", {"kind": "recorded", "file": "runs.csv"})),
                              "instrument.file", "runs.csv"),
    "command_not_on_path": (_set("instrument", {"kind": "command", "argv": ["no-such-program-xyz"]}),
                            "instrument.argv[0]", "PATH"),
    "command_file_missing": (_set("instrument", {"kind": "command", "argv": ["./run.sh"]}),
                             "instrument.argv[0]", "not found"),
    "command_not_executable": (_both(_write("run.sh", "#!/bin/sh\necho '{\"y\": 1}'\n", 0o644),
                                     _set("instrument", {"kind": "command", "argv": ["./run.sh"]})),
                               "instrument.argv[0]", "not executable"),
    "high_inf": (_set("space.parameters.0.high", float("inf")), "space.parameters[0].high", "finite"),
    "range_overflows": (_both(_set("space.parameters.0.low", -1e308), _set("space.parameters.0.high", 1e308)),
                        "space.parameters[0]", "finite"),
    "constraint_overflows": (_set("space.constraints", ["x0 + 1e999 * x1 <= 1"]), "space.constraints[0]", "finite"),
    "constraint_infeasible": (_set("space.constraints", ["x0 >= 2"]), "space.constraints", "empty"),
    "grid_constraint_unknown_axis": (_set("space", {"pool": {"grid": {"x0": [0, 1, 5], "x1": [0, 1, 5]},
                                                             }, "constraints": ["x0 + x9 <= 1"]}),
                                     "space.constraints[0]", "x9"),
    "pool_file_no_row_allowed": (_both(_write("pool.csv", "x0,x1\n0,0\n1,1\n"),
                                       _set("space", {"pool": {"file": "pool.csv"}, "constraints": ["x0 + x1 >= 3"]})),
                                 "space.constraints", "no row"),
    "selection_reference_missing": (_set("selection", {"kind": "autoencoder", "reference": "known.npy"}),
                                    "selection.reference", "known.npy"),
    "threshold_nan": (_set("objectives.0.threshold", float("nan")), "objectives[0].threshold", "finite"),
    "bound_inf": (_set("constraints", [{"metric": "y", "op": "<=", "bound": float("-inf")}]),
                  "constraints[0].bound", "finite"),
    "stop_when_nan": (_set("budget", {"trials": 2, "stop_when": {"metric": "y", "below": float("nan")}}),
                      "budget.stop_when.below", "finite"),
    "wall_time_nan": (_set("budget", {"trials": 2, "wall_time": float("nan")}), "budget.wall_time", "finite"),
    "seed_too_big": (_set("seed", 2**70), "seed", "less than"),
    "seed_negative": (_set("seed", -1), "seed", "greater than or equal to 0"),
    "trials_bool": (_set("budget.trials", True), "budget.trials", "not true/false"),
    "workers_bool": (_set("executor", {"workers": True}), "executor.workers", "not true/false"),
    "grid_too_big": (_set("space", {"pool": {"grid": {"x0": [0, 1, 200000], "x1": [0, 1, 200000]}}}),
                     "space.pool", "200000 x 200000"),
    "metric_control_character": (_set("objectives.0.metric", "y\tz"), "objectives[0].metric", "control characters"),
    "metric_empty": (_set("objectives.0.metric", ""), "objectives[0].metric", "non-empty"),
}


def _campaign(workdir: Path, edit: Edit) -> Path:
    data = campaign_dict(trials=2)
    data["policy"] = {"kind": "random"}
    edit(data, workdir)
    data = {k: v for k, v in data.items() if v is not None}
    path = workdir / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _refused(argv: list[str], field: str, phrase: str, capsys) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f": {field}:" in err and phrase.lower() in err.lower(), err
    assert all(line.startswith(f"error: {argv[1]}") for line in err.splitlines()), err


@pytest.mark.parametrize("case", sorted(BAD))
def test_validate_and_run_refuse_alike(case: str, workdir: Path, capsys) -> None:
    edit, field, phrase = BAD[case]
    path = _campaign(workdir, edit)
    _refused(["validate", str(path)], field, phrase, capsys)
    _refused(["run", str(path), "--quiet", "--store", str(workdir / "s.db")], field, phrase, capsys)
    assert not (workdir / "s.db").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_module_that_exits_at_import_is_reported(command: str, workdir: Path) -> None:
    (workdir / "quits.py").write_text("import sys\nsys.exit(7)\n")
    path = _campaign(workdir, _set("instrument.target", "quits:f"))
    extra = ["--quiet", "--store", str(workdir / "s.db")] if command == "run" else []
    proc = subprocess.run([sys.executable, "-m", "controller.cli", command, str(path), *extra],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {path}: instrument.target:" in proc.stderr and "sys.exit(7)" in proc.stderr


def test_duplicate_yaml_key_names_key_and_line(workdir: Path, capsys) -> None:
    path = workdir / "dup.yaml"
    path.write_text(yaml.safe_dump(campaign_dict()) + "seed: 9\n")
    for argv in (["validate", str(path)], ["run", str(path), "--quiet", "--store", str(workdir / "s.db")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "duplicate key 'seed'" in err and "line" in err, err


def test_duplicate_json_key_is_refused(workdir: Path, capsys) -> None:
    path = workdir / "dup.json"
    text = json.dumps(campaign_dict())
    path.write_text(text[:-1] + ', "seed": 9}')
    assert main(["validate", str(path)]) == 2
    assert "duplicate key 'seed'" in capsys.readouterr().err


def test_alias_bomb_is_refused(workdir: Path, capsys) -> None:
    rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        rows.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    path = workdir / "bomb.yaml"
    path.write_text("\n".join(rows) + "\n")
    assert len(path.read_bytes()) < 1000
    assert main(["validate", str(path)]) == 2
    assert "aliases" in capsys.readouterr().err


def test_yaml_uses_the_c_loader_when_present() -> None:
    from controller.config import CampaignLoader

    if hasattr(yaml, "CSafeLoader"):
        assert issubclass(CampaignLoader, yaml.CSafeLoader)


def test_a_constraint_of_thousands_of_terms_parses(workdir: Path, capsys) -> None:
    text = " + ".join(["x0"] * 3000) + " <= 2999.5"
    path = _campaign(workdir, _set("space.constraints", [text]))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    from controller.space import parse_linear_constraint

    assert parse_linear_constraint(text, {"x0": object()}) == ({"x0": 3000.0}, "<=", 2999.5)
    deep = "(" * 500 + "x0" + ")" * 500 + " <= 1"
    path = _campaign(workdir, _set("space.constraints", [deep]))
    assert main(["validate", str(path)]) == 2
    assert "space.constraints[0]" in capsys.readouterr().err


def test_metric_names_with_spaces_and_parentheses_run_end_to_end(workdir: Path, capsys) -> None:
    (workdir / "lab.py").write_text(textwrap.dedent('''
        def measure(p):
            return {"Conductivity (measured) (S/cm)": p["x0"], "Instability index": p["x1"]}
    '''))
    data = campaign_dict(target="lab:measure", trials=3)
    data["objectives"] = [{"metric": "Conductivity (measured) (S/cm)", "goal": "maximize"}]
    data["constraints"] = [{"metric": "Instability index", "op": "<=", "bound": 0.9}]
    path = workdir / "lab.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 0
    store = workdir / "lab.db"
    assert main(["run", str(path), "--quiet", "--store", str(store)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["export", str(store), "--format", "json"]) == 0
    trials = json.loads(capsys.readouterr().out)
    done = [t for t in trials if t["status"] == "completed"]
    assert len(done) == 3
    assert all({"Conductivity (measured) (S/cm)", "Instability index"} <= set(t["metrics"]) for t in done)


def test_simulator_objectives_must_be_its_metrics(workdir: Path, capsys) -> None:
    sim = _both(_SIM_SPACE, _set("instrument", {"kind": "simulator", "name": "branin"}))
    assert main(["validate", str(_campaign(workdir, _both(sim, _set("objectives", [{"metric": "z"}]))))]) == 2
    capsys.readouterr()
    assert main(["validate", str(_campaign(workdir, sim))]) == 0, capsys.readouterr().err


def test_a_command_must_be_executable(workdir: Path, capsys) -> None:
    script = workdir / "run.sh"
    script.write_text("#!/bin/sh\necho '{\"y\": 1}'\n")
    path = _campaign(workdir, _set("instrument", {"kind": "command", "argv": ["./run.sh"]}))
    assert main(["validate", str(path)]) == 2
    capsys.readouterr()
    os.chmod(script, 0o755)
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
