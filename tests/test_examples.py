"""Every example file validates and runs a few trials from the README's command line."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from controller.cli import main

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates_and_runs(path: Path, tmp_path: Path, capsys):
    assert main(["validate", str(path), "--quiet"]) == 0
    store = tmp_path / "e.db"
    assert main(["run", str(path), "--trials", "3", "--store", str(store), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == 3, summary
    assert all(Path(f).exists() for f in summary["figures"])


def test_python_api_example_runs(capsys):
    runpy.run_path(str(Path(__file__).parent.parent / "examples" / "api_quickstart.py"), run_name="__main__")
    assert "after resume: 20 trials" in capsys.readouterr().out
