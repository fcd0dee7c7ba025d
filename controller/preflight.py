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

from controller.config import CampaignConfig, read_campaign_file, validate_config
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
    elif kind in ("epics", "ophyd"):
        problems += _control_system(cfg, space.names if space is not None else _grid_axes(cfg))
    if cfg.policy.kind == "gest":
        problems += _gest_generator(cfg, space)
    if cfg.policy.kind == "rl":
        problems += _rl_checkpoint(cfg)
    reference = cfg.selection.options().get("reference") if cfg.selection.kind == "autoencoder" else None
    if isinstance(reference, str) and not cfg.resolve(reference).is_file():
        problems.append(f"selection.reference: {cfg.resolve(reference)} not found")
    return problems


def _rl_checkpoint(cfg: CampaignConfig) -> list[str]:
    """`policy: {kind: rl}` needs its checkpoint (a training store with a checkpoint, or a .pt file), cwd-relative like `store`."""
    from policies.rl.agent import network_from
    from policies.rl.checkpoint import CheckpointError, load

    try:
        network_from(load(str(cfg.policy.options().get("checkpoint", ""))))
    except CheckpointError as exc:
        return [f"policy.checkpoint: {exc}; train it with `aec train-rl FILE`"]
    except ValueError as exc:
        return [f"policy.checkpoint: {exc}"]
    return []


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


def _grid_axes(cfg: CampaignConfig) -> list[str]:
    pool = cfg.space.pool if cfg.space is not None else None
    return list(pool.grid) if pool is not None and pool.grid is not None else []


def _control_system(cfg: CampaignConfig, parameter_names: list[str]) -> list[str]:
    """EPICS / ophyd: every parameter mapped, every objective read; ophyd's factory imported and its devices built.

    No PV is contacted here (the IOC may come up after `aec validate`); a PV that does not answer is a
    retryable failure of the trial that needs it.
    """
    inst: Any = cfg.instrument
    problems = []
    for section, items in (("objectives", cfg.objectives), ("constraints", cfg.constraints)):
        for i, item in enumerate(items):
            if item.metric not in inst.metrics and not (item.metric == "novelty" and cfg.selection.kind == "autoencoder"):
                problems.append(f"{section}[{i}].metric: {item.metric!r} is not one of instrument.metrics "
                                f"({', '.join(inst.metrics)})")
    if inst.kind == "epics":
        missing = [n for n in parameter_names if n not in inst.parameters]
        if missing:
            problems.append(f"instrument.parameters: no PV for parameter(s) {', '.join(missing)}")
        problems += [f"instrument.parameters.{n}: not a parameter of the space ({', '.join(parameter_names)})"
                     for n in inst.parameters if parameter_names and n not in parameter_names]
        return problems + _one_stage(cfg, 1 if inst.single_stage else None,
                                     "instrument.single_stage, true by default: every worker puts the same PVs")
    from instruments.registry import build_instrument

    try:
        built = build_instrument(inst.model_dump(mode="json"), cfg.base_dir, seed=cfg.seed, parameter_names=parameter_names)
        problems += _one_stage(cfg, getattr(built, "max_workers", None), "instrument.single_stage: true"
                               if inst.single_stage else "a parameter's device is EPICS-backed, so every worker "
                               "drives the same hardware; instrument.single_stage: false if it is not")
    except InstrumentError as exc:
        problems.append(_field_message(str(exc), "instrument.devices"))
    except Exception as exc:  # noqa: BLE001 - a module that raises at import: reported, not a traceback
        problems.append(f"instrument.devices: importing {inst.devices!r} raised {type(exc).__name__}: {exc}")
    return problems


def _one_stage(cfg: CampaignConfig, max_workers: int | None, why: str) -> list[str]:
    """An instrument with one physical stage runs with one worker: two would fight over it (the breaker trips)."""
    n = cfg.executor.workers
    if max_workers is None or n <= max_workers:
        return []
    return [f"executor.workers: {n} workers, but the instrument drives one physical stage ({why}); "
            f"two workers would fight over it: use workers: {max_workers}"]


def _gest_generator(cfg: CampaignConfig, space: Any) -> list[str]:
    """`policy: {kind: gest}`: the generator imports (beside the campaign file first) and accepts the campaign's VOCS."""
    from policies import Objective, OutcomeConstraint, Problem
    from policies.gest import generator_problems

    problem = None if space is None else Problem(
        space.encoded(), [Objective(o.metric, o.goal == "maximize", o.threshold) for o in cfg.objectives],
        [OutcomeConstraint(c.metric, c.op, c.bound) for c in cfg.constraints], seed=cfg.seed)
    return generator_problems(cfg.policy.options(), cfg.base_dir, problem)


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
    return parse_config(data, base_dir=path.parent, source=str(path))


def parse_config(data: dict[str, Any], base_dir: Path | str | None = None, source: str = "campaign") -> CampaignConfig:
    """Validate a campaign dict (the Python API, a resumed store's config) as `load_config` validates a file.

    The shape (`validate_config`), then `environment_problems`: a dict is refused for the same
    reasons as a file, each problem prefixed by `source`.
    """
    cfg = validate_config(data, base_dir=base_dir, source=source)
    problems = environment_problems(cfg)
    if problems:
        raise UserError(f"{source}: {len(problems)} problem(s)", [f"{source}: {p}" for p in problems])
    return cfg
