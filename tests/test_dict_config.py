"""A campaign given as a dict (the Python API, a resumed store's config) is refused for the same reasons as a file."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import controller
from controller.campaign import Campaign
from controller.errors import UserError
from controller.progress import SilentReporter
from tests.conftest import campaign_dict


def _problems(data: dict, base_dir: Path, source: str = "campaign") -> list[str]:
    with pytest.raises(UserError) as info:
        controller.parse_config(data, base_dir=base_dir, source=source)
    return info.value.problems


def test_a_dict_naming_a_missing_module_is_refused_with_the_field(workdir):
    problems = _problems(campaign_dict(target="no_such_module_for_aec:f"), workdir)
    assert len(problems) == 1 and problems[0].startswith("campaign: instrument.target:")
    assert "no_such_module_for_aec" in problems[0]


def test_a_dict_naming_a_missing_function_is_refused(workdir):
    problems = _problems(campaign_dict(target="fns:no_such_function"), workdir, source="api")
    assert problems[0].startswith("api: instrument.target:") and "no_such_function" in problems[0]


def test_a_module_that_exits_at_import_is_reported_not_obeyed(workdir):
    (workdir / "quits.py").write_text("import sys\nsys.exit(3)\n")
    problems = _problems(campaign_dict(target="quits:f"), workdir)
    assert "sys.exit(3)" in problems[0]
    assert "quits" not in sys.modules


def test_a_dict_naming_a_metric_the_simulator_does_not_produce_is_refused(workdir):
    data = campaign_dict(space=None, instrument={"kind": "simulator", "name": "branin"},
                         objectives=[{"metric": "not_a_metric", "goal": "minimize"}])
    problems = _problems(data, workdir)
    assert problems[0].startswith("campaign: objectives[0].metric:") and "not_a_metric" in problems[0]


def test_a_dict_that_load_config_would_accept_is_accepted(workdir):
    cfg = controller.parse_config(campaign_dict(), base_dir=workdir)
    assert cfg.instrument.target == "fns:branin" and cfg.base_dir == workdir.resolve()


def test_base_dir_may_be_a_string_as_python_users_pass_it(workdir):
    cfg = controller.parse_config(campaign_dict(), base_dir=str(workdir))
    assert cfg.base_dir == workdir.resolve()


def test_resume_refuses_a_store_whose_instrument_module_is_gone_and_writes_nothing(workdir):
    data = campaign_dict(trials=3, store=str(workdir / "gone.db"))
    campaign = Campaign(controller.parse_config(data, base_dir=workdir), reporter=SilentReporter())
    campaign.run()
    campaign.store.close()
    (workdir / "fns.py").rename(workdir / "fns_moved.py")
    sys.modules.pop("fns", None)
    with pytest.raises(UserError) as info:
        Campaign.resume(workdir / "gone.db", trials=6, reporter=SilentReporter())
    assert any("stored config" in p and "instrument.target:" in p for p in info.value.problems)
    (workdir / "fns_moved.py").rename(workdir / "fns.py")
    resumed = Campaign.resume(workdir / "gone.db", reporter=SilentReporter())
    try:
        assert resumed.config.budget.trials == 3  # the refused --trials was not written
        assert len(resumed.store.trials()) == 3
    finally:
        resumed.store.close()
