"""Reading a campaign file and checking it against the world it runs in: modules, files, programs, simulators.

`load_config` runs these after the file's own shape has been validated, so that `aec validate`
says ok only when `aec run` will start: each check does what `Campaign` will do at start-up
(import the function, build the simulator, read the tables) and reports a failure as a
`field: message` problem instead of a traceback or a silent exit.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from controller.config import CampaignConfig, parse_config, read_campaign_file
from controller.errors import UserError
from instruments.base import InstrumentError


def environment_problems(cfg: CampaignConfig) -> list[str]:
    """`field: message` lines for everything `aec run` would trip over before its first trial."""
    kind = cfg.instrument.kind
    simulator = None
    problems: list[str] = []
    if kind == "simulator":
        simulator, problems = _simulator(cfg)
        if simulator is None:
            return problems
    space, space_problems = _space(cfg, simulator)
    problems += space_problems
    if kind == "function":
        problems += _function(cfg)
    elif kind == "command":
        problems += _command(cfg)
    elif kind == "recorded" and space is not None:
        problems += _recorded(cfg, space.names)
    reference = cfg.selection.options().get("reference") if cfg.selection.kind == "autoencoder" else None
    if isinstance(reference, str) and not cfg.resolve(reference).is_file():
        problems.append(f"selection.reference: {cfg.resolve(reference)} not found")
    return problems


def _simulator(cfg: CampaignConfig) -> tuple[Any, list[str]]:
    """The simulator as `aec run` builds it, and objectives/constraints that name metrics it does not produce."""
    from instruments.registry import build_instrument

    spec = cfg.instrument.model_dump(mode="json")
    try:
        simulator = build_instrument(spec, cfg.base_dir, seed=cfg.seed).simulator  # type: ignore[attr-defined]
    except InstrumentError as exc:
        return None, [_field_message(str(exc), "instrument")]
    except Exception as exc:  # noqa: BLE001 - a simulator's constructor may raise anything on bad options
        return None, [f"instrument.options: simulator {cfg.instrument.name!r} refused its options: "  # type: ignore[union-attr]
                      f"{type(exc).__name__}: {exc}"]
    produced = set(simulator.metrics())
    if cfg.selection.kind == "autoencoder":
        produced.add("novelty")
    problems = []
    named = [("objectives", i, o.metric) for i, o in enumerate(cfg.objectives)]
    named += [("constraints", i, c.metric) for i, c in enumerate(cfg.constraints)]
    for section, i, metric in named:
        if metric not in produced:
            problems.append(f"{section}[{i}].metric: simulator {cfg.instrument.name!r} does not produce "  # type: ignore[union-attr]
                            f"{metric!r}; it produces {', '.join(sorted(produced))}")
    return simulator, problems


def _space(cfg: CampaignConfig, simulator: Any) -> tuple[Any, list[str]]:
    """The Space `aec run` builds (pool tables read, simulator constraints parsed and checked for feasibility)."""
    from controller.space import Parameter, Space, SpaceError, infeasible_constraints, parse_linear_constraint

    if cfg.space is not None and cfg.space.pool is not None and cfg.space.pool.grid is not None:
        # parse the constraints against the axes; materialising the grid here would cost memory for nothing
        axes = {n: Parameter(n, "real", a.low, a.high) for n, a in cfg.space.pool.grid.items()}
        problems, linear = [], []
        for i, text in enumerate(cfg.space.constraints):
            try:
                linear.append(parse_linear_constraint(text, axes))
            except SpaceError as exc:
                problems.append(f"space.constraints[{i}]: {exc}")
        empty = None if problems else infeasible_constraints(axes, linear)
        return None, problems + ([f"space.constraints: {empty}"] if empty else [])
    if cfg.space is not None and cfg.space.parameters is not None:  # checked in full by parse_config
        return Space([Parameter.from_config(p) for p in cfg.space.parameters], cfg.space.constraints), []
    try:
        space = Space.from_config(cfg.space, cfg.base_dir, simulator)
    except UserError as exc:
        return None, [_field_message(p, "space") for p in exc.problems]
    except SpaceError as exc:
        return None, [f"space.constraints: {exc}"]
    if space.pool is None:
        empty = infeasible_constraints(space.by_name, space.linear)
    else:
        empty = None if _pool_rows_allowed(space) else "no row of the pool meets all of these constraints"
    return space, [f"space.constraints: {empty}"] if empty else []


def _pool_rows_allowed(space: Any) -> int:
    """How many pool rows meet every linear constraint (vectorised over the table)."""
    import numpy as np

    ok = np.ones(len(space.pool), dtype=bool)
    col = {n: j for j, n in enumerate(space.names)}
    for coeffs, op, rhs in space.linear:
        lhs = sum(a * space.pool[:, col[n]] for n, a in coeffs.items())
        tol = 1e-9 * max(1.0, abs(rhs))
        ok &= (lhs <= rhs + tol) if op == "<=" else (lhs >= rhs - tol)
    return int(ok.sum())


def _function(cfg: CampaignConfig) -> list[str]:
    """Import `module:function` as the workers will; an exception or sys.exit() at import is reported, not obeyed."""
    from instruments.function import load_callable

    target: str = cfg.instrument.target  # type: ignore[union-attr]
    module_name = target.partition(":")[0]
    had = module_name in sys.modules
    try:
        load_callable(target, cfg.base_dir)
    except InstrumentError as exc:
        return [_field_message(str(exc), "instrument.target")]
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit included: importing user code must not end aec
        if not had:
            sys.modules.pop(module_name, None)
        what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"raised {type(exc).__name__}: {exc}"
        return [f"instrument.target: importing module {module_name!r} {what}; a module must import cleanly"]
    return []


def _command(cfg: CampaignConfig) -> list[str]:
    """argv[0] must be an executable file: on PATH for a bare name, else beside the campaign file (or cwd)."""
    argv: list[str] = cfg.instrument.argv  # type: ignore[union-attr]
    env: dict[str, str] = cfg.instrument.env  # type: ignore[union-attr]
    first = argv[0]
    if "/" not in first and not first.startswith("."):
        if shutil.which(first, path=env.get("PATH", os.environ.get("PATH"))) is None:
            return [f"instrument.argv[0]: {first!r} is not an executable program on PATH"]
        return []
    path = Path(first).expanduser()
    if not path.is_absolute():
        cwd = cfg.instrument.cwd  # type: ignore[union-attr]
        candidates = [cfg.base_dir / path] + ([cfg.resolve(cwd) / path] if cwd else [])
        path = next((c for c in candidates if c.exists()), candidates[0])
    if not path.is_file():
        return [f"instrument.argv[0]: {first!r} not found (looked for {path})"]
    if not os.access(path, os.X_OK):
        return [f"instrument.argv[0]: {path} is not executable (chmod +x {path})"]
    return []


def _recorded(cfg: CampaignConfig, parameter_names: list[str]) -> list[str]:
    """Open the recorded table as the workers will: the file, its parameter and metric columns."""
    from instruments.registry import build_instrument

    try:
        build_instrument(cfg.instrument.model_dump(mode="json"), cfg.base_dir, seed=cfg.seed,
                         parameter_names=parameter_names)
    except InstrumentError as exc:
        return [_field_message(str(exc), "instrument.file")]
    return []


def _field_message(text: str, default_field: str) -> str:
    """'instrument.file: ...' stays as it is; a message without a field path gets `default_field`."""
    head = text.split(":", 1)[0]
    if head and " " not in head and (head.startswith(("instrument", "space")) or head == default_field):
        return text
    return f"{default_field}: {text}"


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> CampaignConfig:
    """Read, override (e.g. {'seed': 3, 'budget.trials': 10}) and validate a campaign file.

    Beyond the file's shape this checks what `aec run` needs at start-up (environment_problems:
    the function imports, files and programs exist, the simulator takes its options and produces
    the metrics named), so `aec validate` and `aec run` accept and refuse the same files.
    """
    path = Path(path)
    data = read_campaign_file(path)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UserError(f"{path}: cannot override {dotted}: {key} is not a section")
        node[leaf] = value
    cfg = parse_config(data, base_dir=path.parent, source=str(path))
    problems = environment_problems(cfg)
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s)", [f"{path}: {p}" for p in problems])
    return cfg
