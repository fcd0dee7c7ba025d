"""Campaign files: every malformed file gets its own one-line message with a field path and exit 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.preflight import load_config
from controller.errors import UserError
from tests.conftest import campaign_dict


def _mutate(path: str, value):
    def apply(d: dict) -> dict:
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if value is _DELETE:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
        return d
    return apply


_DELETE = object()

MALFORMED = {
    "low_not_below_high": (_mutate("space.parameters.0.high", -1.0), "space.parameters[0]", "low must be < high"),
    "unknown_top_key": (_mutate("budgte", {"trials": 3}), "budgte", "unknown key"),
    "unknown_param_type": (_mutate("space.parameters.1.type", "float"), "space.parameters[1].type", "real"),
    "bad_goal": (_mutate("objectives.0.goal", "smallest"), "objectives[0].goal", "minimize"),
    "missing_objectives": (_mutate("objectives", _DELETE), "objectives", "required"),
    "empty_objectives": (_mutate("objectives", []), "objectives", "at least 1"),
    "bad_target": (_mutate("instrument.target", "no_colon_here"), "instrument.target", "module:function"),
    "unknown_instrument": (_mutate("instrument", {"kind": "telepathy"}), "instrument", "telepathy"),
    "negative_trials": (_mutate("budget.trials", -4), "budget.trials", "greater than or equal to 1"),
    "bad_wall_time": (_mutate("budget", {"wall_time": "soon"}), "budget.wall_time", "not a duration"),
    "log_low_zero": (_mutate("space.parameters.0", {"name": "lr", "type": "real", "low": 0.0, "high": 1.0, "log": True}),
                     "space.parameters[0]", "low > 0"),
    "choice_without_values": (_mutate("space.parameters.1", {"name": "m", "type": "choice"}), "space.parameters[1]", "values"),
    "nonlinear_constraint": (_mutate("space.constraints", ["x0 * x1 <= 1"]), "space.constraints[0]", "not linear"),
    "constraint_unknown_param": (_mutate("space.constraints", ["x0 + x9 <= 1"]), "space.constraints[0]", "x9"),
    "bad_constraint_op": (_mutate("constraints", [{"metric": "c", "op": "<", "bound": 1}]), "constraints[0].op", "<="),
    "unknown_policy": (_mutate("policy", {"kind": "oracle"}), "policy.kind", "oracle"),
    "bad_policy_option": (_mutate("policy", {"kind": "sobol", "batch": 4}), "policy.batch", "unknown key"),
    "duplicate_params": (_mutate("space.parameters.1.name", "x0"), "space", "unique"),
    "bad_workers": (_mutate("executor", {"workers": 0}), "executor.workers", "greater than or equal to 1"),
    "no_budget": (_mutate("budget", {}), "budget", "at least one"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_names_field_and_exits_2(case, tmp_path: Path, capsys):
    mutate, field, phrase = MALFORMED[case]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(mutate(campaign_dict())))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert field in err, err
    assert phrase.lower() in err.lower(), err


def test_each_malformed_file_gets_its_own_message(tmp_path: Path, capsys):
    messages = set()
    for case, (mutate, _, _) in MALFORMED.items():
        path = tmp_path / f"{case}.yaml"
        path.write_text(yaml.safe_dump(mutate(campaign_dict())))
        main(["validate", str(path)])
        messages.add(capsys.readouterr().err.replace(str(path), ""))
    assert len(messages) == len(MALFORMED)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nspace: {parameters: [\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and "YAML" in err


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_valid_file_and_json_config(workdir: Path, capsys):
    import json

    path = workdir / "ok.json"
    path.write_text(json.dumps(campaign_dict()))
    assert main(["validate", str(path)]) == 0
    cfg = load_config(path)
    assert cfg.name == "t" and cfg.base_dir == workdir.resolve()


def test_overrides_and_durations(workdir: Path):
    path = workdir / "c.yaml"
    path.write_text(yaml.safe_dump(campaign_dict(budget={"trials": 5, "wall_time": "1h30m"})))
    cfg = load_config(path, {"seed": 11, "budget.trials": 9})
    assert cfg.seed == 11 and cfg.budget.trials == 9 and cfg.budget.wall_time == 5400.0


def test_the_design_documents_example_file_is_valid(tmp_path: Path):
    text = """
name: hartmann-demo
seed: 7
space:
  parameters:
    - {name: x1, type: real, low: 0.0, high: 1.0}
    - {name: x2, type: real, low: 0.0, high: 1.0}
    - {name: lr, type: real, low: 1e-4, high: 1e-1, log: true}
    - {name: layers, type: integer, low: 3, high: 8}
    - {name: material, type: choice, values: [silicon, diamond]}
  constraints: ["x1 + x2 <= 1.5"]
objectives:
  - {metric: y, goal: minimize}
  - {metric: cost, goal: minimize, threshold: 100.0}
constraints:
  - {metric: efficiency, op: ">=", bound: 0.9}
instrument: {kind: function, target: "mypkg.sim:evaluate"}
policy: {kind: sobol}
executor: {kind: local, workers: 4}
budget: {trials: 200, wall_time: 2h, stop_when: {metric: y, below: 0.01}}
store: runs/hartmann-demo.db
"""
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "sim.py").write_text("def evaluate(p):\n    return {'y': 0.0, 'cost': 1.0, 'efficiency': 1.0}\n")
    cfg = load_config(path)
    assert [p.type for p in cfg.space.parameters] == ["real", "real", "real", "integer", "choice"]


def test_validate_in_a_subprocess_prints_no_traceback(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_mutate("space.parameters.0.low", 5.0)(campaign_dict())))
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "space.parameters[0]" in proc.stderr


def test_user_error_lists_all_problems(tmp_path: Path):
    data = campaign_dict()
    data["space"]["parameters"][0]["high"] = -1
    data["objectives"][0]["goal"] = "up"
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as info:
        load_config(path)
    assert len(info.value.problems) == 2
