"""Between gest-api's VOCS and aec's problem: variables to and from the unit cube, objectives and constraints.

A continuous variable [lo, hi] maps linearly onto [0, 1]; a discrete one onto K evenly spaced
levels (ordered when its values are numbers, a categorical choice otherwise). Outcome
constraints: LESS_THAN v is `<= v`, GREATER_THAN v is `>= v`, BOUNDS [lo, hi] is both.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
from gest_api.vocs import (
    VOCS,
    BoundsConstraint,
    ContextualVariable,
    ContinuousVariable,
    DiscreteVariable,
    GreaterThanConstraint,
    LessThanConstraint,
    MaximizeObjective,
    MinimizeObjective,
)

from policies.base import EncodedSpace, Objective, OutcomeConstraint, Problem


def vocs_problems(vocs: VOCS) -> list[str]:
    """What aec's policies cannot take from this VOCS (empty when it can drive them)."""
    problems = []
    if not vocs.variables:
        problems.append("VOCS must define at least one variable")
    for name, var in vocs.variables.items():
        if var.dtype is not None:
            problems.append(f"variable {name!r}: array variables (dtype {var.dtype!r}) are not supported")
        elif isinstance(var, ContextualVariable):
            problems.append(f"variable {name!r}: contextual variables are not supported")
        elif isinstance(var, ContinuousVariable):
            if not all(math.isfinite(v) for v in var.domain):
                problems.append(f"variable {name!r}: domain {var.domain} must be finite")
        elif not isinstance(var, DiscreteVariable):
            problems.append(f"variable {name!r}: type {type(var).__name__} is not supported")
    if not vocs.objectives:
        problems.append("VOCS must define at least one objective (MINIMIZE or MAXIMIZE)")
    for name, obj in vocs.objectives.items():
        if not isinstance(obj, (MinimizeObjective, MaximizeObjective)):
            problems.append(f"objective {name!r}: {type(obj).__name__} is not supported; use MINIMIZE or MAXIMIZE")
    return problems


def _levels(var: DiscreteVariable) -> tuple[list[Any], bool]:
    """The values of a discrete variable in level order, and whether they are unordered (a categorical choice)."""
    values = list(var.values)
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        return sorted(values), False
    return sorted(values, key=repr), True


@dataclass
class VocsCodec:
    """A VOCS as aec's policies see it (`problem`), and named points to and from unit-cube rows (dim,)."""

    vocs: VOCS
    problem: Problem

    @classmethod
    def from_vocs(cls, vocs: VOCS, seed: int = 0) -> VocsCodec:
        problems = vocs_problems(vocs)
        if problems:
            raise ValueError("; ".join(problems))
        names, levels, categorical = [], [], []
        for name, var in vocs.variables.items():
            names.append(name)
            if isinstance(var, DiscreteVariable):
                values, unordered = _levels(var)
                levels.append(len(values))
                categorical.append(unordered)
            else:
                levels.append(None)
                categorical.append(False)
        objectives = [Objective(n, isinstance(o, MaximizeObjective)) for n, o in vocs.objectives.items()]
        constraints = []
        for name, c in vocs.constraints.items():
            if isinstance(c, LessThanConstraint):
                constraints.append(OutcomeConstraint(name, "<=", c.value))
            elif isinstance(c, GreaterThanConstraint):
                constraints.append(OutcomeConstraint(name, ">=", c.value))
            elif isinstance(c, BoundsConstraint):
                constraints += [OutcomeConstraint(name, ">=", c.range[0]), OutcomeConstraint(name, "<=", c.range[1])]
            else:
                raise ValueError(f"constraint {name!r}: type {type(c).__name__} is not supported")
        space = EncodedSpace(names=names, levels=levels, categorical=categorical)
        return cls(vocs, Problem(space, objectives, constraints, seed=seed))

    @property
    def outputs(self) -> list[str]:
        """Names of the outcomes the policy learns from: objectives, then constraints."""
        return list(dict.fromkeys(self.problem.metric_names + [c.metric for c in self.problem.constraints]))

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        """A unit-cube row (dim,) as the VOCS's variables, plus its constants."""
        point: dict[str, Any] = {}
        for u, (name, var) in zip(np.clip(np.asarray(x, dtype=float), 0.0, 1.0), self.vocs.variables.items()):
            if isinstance(var, DiscreteVariable):
                values, _ = _levels(var)
                point[name] = values[int(round(u * (len(values) - 1)))]
            else:
                lo, hi = var.domain
                point[name] = float(lo + u * (hi - lo))
        point.update({name: c.value for name, c in self.vocs.constants.items()})
        return point

    def encode(self, point: dict[str, Any]) -> np.ndarray:
        """The unit-cube row (dim,) of a point named by the VOCS's variables; ValueError names a bad one."""
        x = np.empty(len(self.vocs.variables))
        for i, (name, var) in enumerate(self.vocs.variables.items()):
            if name not in point:
                raise ValueError(f"result has no value for variable {name!r}")
            value = point[name]
            if isinstance(var, DiscreteVariable):
                values, _ = _levels(var)
                if value not in values:
                    raise ValueError(f"variable {name!r}: {value!r} is not one of {values}")
                x[i] = values.index(value) / max(len(values) - 1, 1)
                continue
            lo, hi = var.domain
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"variable {name!r}: {value!r} is not a number in its domain [{lo:g}, {hi:g}]")
            x[i] = (float(value) - lo) / (hi - lo)
        return x


def problem_vocs(problem: Problem) -> VOCS:
    """The VOCS of an aec problem in its unit cube: real parameters (and pool columns) [0, 1], discrete ones their levels."""
    space = problem.space
    variables: dict[str, Any] = {}
    for name, k in zip(space.names, space.levels):
        variables[name] = [0.0, 1.0] if k is None else {i / max(k - 1, 1) for i in range(k)}
    objectives = {o.metric: "MAXIMIZE" if o.maximize else "MINIMIZE" for o in problem.objectives}
    bounds: dict[str, dict[str, float]] = {}
    for c in problem.constraints:
        bounds.setdefault(c.metric, {})[c.op] = c.bound
    constraints: dict[str, list[Any]] = {}
    for metric, ops in bounds.items():
        if len(ops) == 2:
            if not ops[">="] < ops["<="]:
                raise ValueError(f"constraints on {metric!r}: >= {ops['>=']:g} and <= {ops['<=']:g} leave no range")
            constraints[metric] = ["BOUNDS", ops[">="], ops["<="]]
        else:
            constraints[metric] = ["LESS_THAN", ops["<="]] if "<=" in ops else ["GREATER_THAN", ops[">="]]
    return VOCS(variables=variables, objectives=objectives, constraints=constraints)
