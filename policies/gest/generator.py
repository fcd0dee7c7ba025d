"""AecGenerator: any aec policy (BoTorch by default) as a gest-api generator, for Xopt, blop, libEnsemble or optimas.

    gen = AecGenerator(VOCS(variables={"x": [0, 5]}, objectives={"f": "MINIMIZE"}), policy="botorch",
                       options={"initial": 6}, seed=1)
    points = gen.suggest(2)          # [{"x": 1.3, "_id": 0}, {"x": 4.2, "_id": 1}]
    gen.ingest([{**p, "f": f(p["x"])} for p in points])

The policy runs unchanged on its own History: suggested points stay pending (so a batch or an
asynchronous caller never gets the same point twice) until a result with their `_id` comes back.
Results without `_id` (data from elsewhere, or from before a restart) join the history as new
trials. A result whose objective or constraint is missing or not a finite number is a failed trial.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from gest_api import Generator
from gest_api.vocs import VOCS

from policies import make_policy, validate_options
from policies.base import History, Observation, Proposal
from policies.gest.vocs import VocsCodec, vocs_problems


class AecGenerator(Generator):
    """A gest-api Generator backed by an aec policy of `policy` kind with `options` (its campaign-file keys)."""

    returns_id = True

    def __init__(self, vocs: VOCS, policy: str = "botorch", options: dict[str, Any] | None = None, *,
                 seed: int = 0, strict: bool | None = None):
        super().__init__(vocs)
        self.vocs = vocs
        self.codec = VocsCodec.from_vocs(vocs, seed=seed)
        self.policy = make_policy(policy, dict(options or {}), self.codec.problem, strict=strict)
        self.batch = int(getattr(validate_options(policy, dict(options or {})), "batch", 1))
        self.history = History()
        self.pending: dict[int, Proposal] = {}
        self._next_id = 0

    def _validate_vocs(self, vocs: VOCS) -> None:
        problems = vocs_problems(vocs)
        if problems:
            raise ValueError("; ".join(problems))

    def suggest(self, num_points: int | None = None) -> list[dict]:
        """`num_points` points (default: the policy's batch), each with the VOCS's variables, constants and an `_id`."""
        n = self.batch if num_points is None else num_points
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"num_points must be a whole number >= 1, got {num_points!r}")
        proposals = self.policy.propose(self.history, int(n), list(self.pending.values()))
        if len(proposals) != n:
            raise ValueError(f"the {type(self.policy).__name__} gave {len(proposals)} points, not the {n} asked for")
        points = []
        for prop in proposals:
            ident = self._take_id()
            self.pending[ident] = prop
            points.append({**self.codec.decode(prop.x), "_id": ident})
        return points

    def ingest(self, results: list[dict]) -> None:
        """Add evaluated points to the history; all are checked first, so a bad one changes nothing (ValueError)."""
        seen: set[int] = set()
        rows = []
        for i, r in enumerate(results):
            if "_id" in r:
                ident = r["_id"]
                if ident not in self.pending or ident in seen:
                    raise ValueError(f"results[{i}]: _id {ident!r} was not suggested by this generator, or was already ingested")
                seen.add(ident)
                rows.append((ident, self.pending[ident].x))
            else:
                rows.append((None, self.codec.encode(r)))
        for (ident, x), r in zip(rows, results):
            if ident is None:
                ident = self._take_id()
            else:
                del self.pending[ident]
            self.history.append(self._observation(ident, x, r))

    def _observation(self, ident: int, x: Any, result: dict) -> Observation:
        metrics, status = {}, "completed"
        for name in self.codec.outputs:
            value = result.get(name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
                metrics[name] = float(value)
            else:
                status = "failed"
        return Observation(trial_id=ident, x=x, metrics=metrics, status=status)

    def _take_id(self) -> int:
        ident, self._next_id = self._next_id, self._next_id + 1
        return ident

    def finalize(self) -> None:
        """Nothing runs in the background; suggested points never ingested stay pending."""
