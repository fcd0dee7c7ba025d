"""GestPolicy: any gest-api generator (Xopt, libEnsemble, optimas, blop, your own) proposing an aec campaign's trials.

The generator is built on the campaign's VOCS in aec's unit cube (`vocs.problem_vocs`): real
parameters and pool columns as [0, 1], integer and choice parameters as the set of their levels
k / (K - 1). Before each `suggest`, every trial completed (or failed) since the last call is
ingested, with the `_id` the generator gave it when it made the point, so the generator's own
state is a function of the campaign's history: a resumed campaign rebuilds the generator and
feeds it the whole history (without ids, as the standard asks for points it did not make).
On a pool, each suggestion is measured at the nearest unused row.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from policies.base import History, Problem, Proposal
from policies.gest.loading import GENERATOR_SPEC, GeneratorLoadError, load_generator
from policies.gest.vocs import problem_vocs

LINEAR_CONSTRAINTS = ("a gest-api VOCS has no constraints between parameters, so the generator would propose points "
                      "outside them; drop space.constraints or use another policy kind")


class GestPolicy:
    """Proposals from a gest-api generator; see the module docstring."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        kind: Literal["gest"] = "gest"
        generator: str = Field(description="'module:Class' of a gest-api Generator (a module beside the campaign file, or installed)")
        options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the generator's constructor")
        seed_argument: str | None = Field(None, description="give the campaign's seed to the constructor under this keyword")
        failed: Literal["nan", "skip"] = Field("nan", description="ingest failed trials with NaN outcomes, or not at all")

        @field_validator("generator")
        @classmethod
        def _spec(cls, value: str) -> str:
            if not GENERATOR_SPEC.match(value):
                raise ValueError(f"expected 'module:Class' (e.g. 'xopt.generators.random:RandomGenerator'), got {value!r}")
            return value

    def __init__(self, problem: Problem, options: Options):
        if problem.space.linear_constraints:
            raise ValueError(f"space.constraints: {LINEAR_CONSTRAINTS}")
        self.problem, self.options = problem, options
        self.vocs = problem_vocs(problem)
        cls = load_generator(options.generator)
        kwargs = dict(options.options)
        if options.seed_argument:
            kwargs[options.seed_argument] = problem.seed
        try:
            self.generator = cls(self.vocs, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"generator {options.generator} refused this campaign: {type(exc).__name__}: {exc}") from None
        self.returns_id = bool(getattr(self.generator, "returns_id", False))
        self.outputs = list(self.vocs.output_names)
        self._fed = 0  # observations of the history already ingested (the history only grows, in completion order)
        self._suggested: list[tuple[np.ndarray, Any]] = []  # (measured x, the generator's _id) awaiting results

    # ------------------------------------------------------------------ history -> generator
    def _named(self, x: np.ndarray) -> dict[str, float]:
        """A unit-cube row as the VOCS's variables (discrete ones exactly equal to a level)."""
        point = {}
        for name, k, u in zip(self.problem.space.names, self.problem.space.levels, x):
            point[name] = float(u) if k is None else round(float(u) * (k - 1)) / max(k - 1, 1)
        return point

    def _claim_id(self, x: np.ndarray) -> Any:
        for i, (sx, ident) in enumerate(self._suggested):
            if np.allclose(sx, x, rtol=0.0, atol=1e-9):
                del self._suggested[i]
                return ident
        return None

    def _feed(self, history: History) -> None:
        results = []
        for obs in history.observations[self._fed:]:
            ident = self._claim_id(np.asarray(obs.x, dtype=float))
            if obs.status != "completed" and self.options.failed == "skip":
                continue
            result: dict[str, Any] = self._named(obs.x)
            for m in self.outputs:
                result[m] = float(obs.metrics.get(m, math.nan)) if obs.status == "completed" else math.nan
            if ident is not None and self.returns_id:
                result["_id"] = ident
            results.append(result)
        self._fed = len(history.observations)
        if results:
            self.generator.ingest(results)

    # ------------------------------------------------------------------ generator -> proposals
    def _unit_row(self, point: dict[str, Any]) -> np.ndarray:
        x = np.empty(self.problem.space.dim)
        for i, name in enumerate(self.problem.space.names):
            value = point.get(name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not -1e-9 <= value <= 1 + 1e-9:
                raise ValueError(f"generator {self.options.generator} suggested {name}={value!r}; expected a number in [0, 1]")
            x[i] = value
        return self.problem.space.snap(x)

    def propose(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        """Up to n points from the generator (fewer only when a pool runs out); ValueError when it gives none."""
        self._feed(history)
        points = self.generator.suggest(n)
        if not points:
            raise ValueError(f"generator {self.options.generator}.suggest({n}) returned no points")
        space = self.problem.space
        taken = history.used_pool_indices() | {p.pool_index for p in pending if p.pool_index is not None}
        proposals = []
        for point in points[:n]:
            x, row = self._unit_row(point), None
            if space.pool is not None:
                free = np.setdiff1d(np.arange(len(space.pool)), np.fromiter(taken, dtype=int, count=len(taken)))
                if not len(free):
                    break
                row = int(free[np.argmin(((space.pool[free] - x) ** 2).sum(1))])
                taken.add(row)
                x = np.asarray(space.pool[row], dtype=float)
            ident = point.get("_id")
            self._suggested.append((x, ident))
            reason: dict[str, Any] = {"generator": self.options.generator}
            if ident is not None:
                reason["gest_id"] = ident if isinstance(ident, (int, str)) else str(ident)
            proposals.append(Proposal(x=x, pool_index=row, reason=reason))
        return proposals


def generator_problems(options: dict[str, Any], base_dir: Path, problem: Problem | None) -> list[str]:
    """`field: message` lines for a `kind: gest` policy section: the generator imports, and takes the campaign's VOCS.

    The module is loaded as the campaign will find it (beside the campaign file first); with
    `problem` (None: a grid pool not built here) the generator is also constructed, as `aec run` will.
    """
    spec = str(options.get("generator", ""))
    try:
        load_generator(spec, base_dir)
    except GeneratorLoadError as exc:
        return [f"policy.generator: {exc}"]
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit included: importing user code must not end aec
        what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"raised {type(exc).__name__}: {exc}"
        return [f"policy.generator: importing {spec.partition(':')[0]!r} {what}; a module must import cleanly"]
    if problem is None:
        return []
    if problem.space.linear_constraints:
        return [f"space.constraints: {LINEAR_CONSTRAINTS}"]
    try:
        GestPolicy(problem, GestPolicy.Options.model_validate(options))
    except ValueError as exc:
        return [f"policy.options: {exc}"]
    except Exception as exc:  # noqa: BLE001 - a generator's constructor may raise anything
        return [f"policy.options: generator {spec} raised {type(exc).__name__}: {exc}"]
    return []

