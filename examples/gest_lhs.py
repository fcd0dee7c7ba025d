"""A gest-api generator written against the standard's base class: Latin-hypercube batches (examples/gest_generator.yaml).

A design of `points` rows cuts every continuous variable's domain into `points` equal strata and
puts one row in each, the strata shuffled independently per variable (discrete variables take
their values in turn); `suggest(n)` hands out the next n rows, starting a fresh design when one
runs out, so the rows a campaign measures stay a Latin hypercube however its workers ask for
them. Points carry an `_id`; `ingest` refuses ids it never gave out. Any gest-api generator (Xopt's,
libEnsemble's, optimas') plugs into an aec campaign the same way: `policy: {kind: gest, generator: ...}`.
"""
from __future__ import annotations

import random

from gest_api import Generator
from gest_api.vocs import VOCS, ContinuousVariable, DiscreteVariable


class LatinHypercube(Generator):
    """Latin-hypercube batches over the VOCS's variables, seeded; results are kept in `results`."""

    returns_id = True

    def __init__(self, vocs: VOCS, points: int = 16, seed: int = 0):
        super().__init__(vocs)
        if points < 1:
            raise ValueError(f"points must be >= 1, got {points}")
        self.vocs, self.points = vocs, points
        self.rng = random.Random(seed)
        self.design: list[dict] = []
        self.outstanding: set[int] = set()
        self.results: list[dict] = []
        self._next_id = 0

    def _validate_vocs(self, vocs: VOCS) -> None:
        if not vocs.variables:
            raise ValueError("LatinHypercube needs at least one variable")
        for name, var in vocs.variables.items():
            if not isinstance(var, (ContinuousVariable, DiscreteVariable)):
                raise ValueError(f"LatinHypercube: variable {name!r} must be continuous or discrete")

    def _new_design(self) -> list[dict]:
        n, columns = self.points, {}
        for name, var in self.vocs.variables.items():
            if isinstance(var, DiscreteVariable):
                values = sorted(var.values, key=repr)
                columns[name] = [values[i % len(values)] for i in range(n)]
                self.rng.shuffle(columns[name])
            else:
                lo, hi = var.domain
                columns[name] = [lo + (hi - lo) * (k + self.rng.random()) / n for k in range(n)]
                self.rng.shuffle(columns[name])
        constants = {name: c.value for name, c in self.vocs.constants.items()}
        return [{**{name: col[i] for name, col in columns.items()}, **constants} for i in range(n)]

    def suggest(self, num_points: int | None = None) -> list[dict]:
        points = []
        for _ in range(num_points or 1):
            if not self.design:
                self.design = self._new_design()
            point = {**self.design.pop(0), "_id": self._next_id}
            self.outstanding.add(self._next_id)
            self._next_id += 1
            points.append(point)
        return points

    def ingest(self, results: list[dict]) -> None:
        for r in results:
            if "_id" in r and r["_id"] not in self.outstanding:
                raise ValueError(f"_id {r['_id']!r} was not suggested by this generator")
        for r in results:
            self.outstanding.discard(r.get("_id"))
            self.results.append(dict(r))
