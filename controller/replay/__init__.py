"""Simulated campaign replay: policies compared on recorded data sets and on recorded campaigns' problems.

`replay(spec, out)` is the Python API behind `aec replay`; `controller.replay.metrics` holds the
definitions (Top%, EF and AF as Liang et al. 2021 define them, regret, hypervolume). Nothing heavy is
imported here, so that `aec --help` (which imports the command module) stays quick.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.replay.runner import Progress, ReplayOutcome
    from controller.replay.spec import ReplaySpec


def replay(spec: "ReplaySpec", out: str | Path, *, base_dir: str | Path = ".", workers: int | None = None,
           progress: "Progress | None" = None) -> tuple["ReplayOutcome", dict[str, Any]]:
    """Run (or resume) a replay into `out`; returns what each run did and the results written to out/results.json."""
    from controller.replay.plan import make_plan
    from controller.replay.runner import check_reuse, execute
    from controller.replay.summary import write_results

    out = Path(out)
    plan = make_plan(spec, out, Path(base_dir))
    check_reuse(plan)  # a folder made by a different replay is refused before anything in it is written
    (out / "data").mkdir(parents=True, exist_ok=True)
    plan.write()
    outcome = execute(plan, workers or spec.workers, progress, ray=spec.ray)
    return outcome, write_results(plan)


__all__ = ["replay"]
