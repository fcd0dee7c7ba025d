"""The aec loop driven by Ax: an `ax.Client` and its generation strategy decide what to measure next.

Ax keeps its own experiment (trials, arms, data), but aec's policies must be rebuildable from the
history alone. So the client is a cache: whenever the history is not an extension of what the
client has seen (first call, restart, another process), it is rebuilt and the history replayed
with `attach_trial` + `complete_trial` (`mark_trial_failed` for failures); pending trials are
attached as running so Ax does not propose them again. When the history only grew, new
completions are appended to the cached client instead.

Ax sees the unit cube: continuous dims are float ranges [0, 1], ordered discrete dims with K
levels are int ranges 0..K-1 and categorical dims are unordered int choices, both mapped back to
k / (K - 1). Parameters are called x0..x{d-1} and metrics m0, m1, ... inside Ax so that Ax's
expression parser (SymPy) never meets a name it reads as a constant or a function ("E", "beta").
`import ax` takes seconds, so it happens in the constructor, never at module import.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.base import History, Observation, Problem, Proposal, strict_mode
from policies.bayesian import fused_kernel

logger = logging.getLogger(__name__)

_PARAM_DECIMALS = 12  # rounding of unit-cube values when matching Ax trials to proposals


def _quiet_ax() -> None:
    """Ax logs every trial at INFO on its own stderr handler; keep only warnings."""
    from ax.utils.common.logger import set_stderr_log_level

    set_stderr_log_level(logging.WARNING)


def _number(v: float) -> str:
    """A float as Ax's constraint parser reads it (repr keeps full precision)."""
    return repr(float(v))


class AxPolicy:
    """Proposals from Ax's default generation strategy (center, Sobol, then a BoTorch model)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        kind: Literal["ax"] = "ax"
        initial: int | None = Field(
            None, ge=0, description="Sobol trials before the BoTorch model (counting the center point); Ax's default (5) when unset"
        )
        method: Literal["fast", "quality", "random_search"] = Field(
            "fast", description="Ax's generation method: 'fast' (MBM defaults), 'quality' (SAAS GP), 'random_search' (Sobol only)"
        )
        center: bool = Field(True, description="start with the centre of the search space, as Ax does by default")
        torch_device: str | None = Field(None, description="device for Ax's model fitting, e.g. 'cuda'")

    def __init__(self, problem: Problem, options: "AxPolicy.Options | None" = None):
        import ax  # noqa: F401  (slow import, done once here)

        _quiet_ax()
        self.problem = problem
        self.space = problem.space
        self.options = options or AxPolicy.Options()
        if not problem.objectives:
            raise ValueError("the Ax policy needs at least one objective")
        if len(problem.objectives) > 1:
            fused_kernel.prepare_for("ax", strict_mode())
        # Ax's names for the parameters and metrics.
        self._levels = list(self.space.levels)
        self._in_ax = [k is None or k > 1 for k in self._levels]  # single-level dims are fixed at 0
        self._pnames = [f"x{i}" for i in range(self.space.dim)]
        metrics = list(dict.fromkeys([o.metric for o in problem.objectives] + [c.metric for c in problem.constraints]))
        self._mname = {m: f"m{j}" for j, m in enumerate(metrics)}
        self._parameter_configs = self._make_parameters()
        self._parameter_constraints = self._make_parameter_constraints()
        self._objective, self._outcome_constraints = self._make_optimization()
        # Cache: the client, fingerprints of the observations it has seen, and its running trials.
        self._client: Any = None
        self._seen: list[tuple] = []
        self._open: dict[int, tuple] = {}  # Ax trial index -> parameter key, for RUNNING trials

    # ---------------------------------------------------------------- experiment description
    def _make_parameters(self) -> list[Any]:
        from ax import ChoiceParameterConfig, RangeParameterConfig

        out: list[Any] = []
        for i, (k, cat) in enumerate(zip(self._levels, self.space.categorical)):
            if not self._in_ax[i]:
                continue
            name = self._pnames[i]
            if k is None:
                out.append(RangeParameterConfig(name=name, bounds=(0.0, 1.0), parameter_type="float"))
            elif cat:
                out.append(ChoiceParameterConfig(name=name, values=list(range(k)), parameter_type="int", is_ordered=False))
            else:
                out.append(RangeParameterConfig(name=name, bounds=(0, k - 1), parameter_type="int"))
        if not out:
            raise ValueError("the Ax policy needs at least one parameter with more than one value")
        return out

    def _make_parameter_constraints(self) -> list[str]:
        """BoTorch's `sum c_i x_i >= rhs` in the unit cube, as Ax's `sum -c_i' p_i <= -rhs'`.

        An ordered discrete dim enters as p = k, with x = k / (K - 1); fixed dims contribute 0.
        Pools define feasibility themselves, so Ax is not told about constraints there.
        """
        if self.space.pool is not None:
            return []
        out = []
        for c in self.space.linear_constraints:
            terms = []
            for i, a in zip(c.indices, c.coefficients):
                k = self._levels[i]
                if self.space.categorical[i]:
                    raise ValueError(f"linear constraint on categorical parameter {self.space.names[i]!r}")
                if not self._in_ax[i] or a == 0:
                    continue
                scale = 1.0 if k is None else 1.0 / (k - 1)
                terms.append(f"{_number(-a * scale)} * {self._pnames[i]}")
            if not terms:
                if 0.0 < c.rhs:
                    raise ValueError(f"linear constraint {c} cannot be satisfied")
                continue
            out.append(f"{' + '.join(terms)} <= {_number(-c.rhs)}")
        return out

    def _make_optimization(self) -> tuple[str, list[str]]:
        """Ax's objective string ('-m0' minimises m0; 'm0, -m1' for several) and outcome constraints."""
        objs = self.problem.objectives
        objective = ", ".join(("" if o.maximize else "-") + self._mname[o.metric] for o in objs)
        constraints = []
        obj_metrics = {o.metric for o in objs}
        if len(objs) > 1:
            for o in objs:
                if o.threshold is not None:
                    op = ">=" if o.maximize else "<="
                    constraints.append(f"{self._mname[o.metric]} {op} {_number(o.threshold)}")
        for c in self.problem.constraints:
            if len(objs) == 1 and c.metric in obj_metrics:
                raise ValueError(
                    f"Ax cannot constrain the single objective {c.metric!r}; drop the constraint or make it an objective"
                )
            op = "<=" if c.op == "<=" else ">="
            constraints.append(f"{self._mname[c.metric]} {op} {_number(c.bound)}")
        return objective, constraints

    def _new_client(self, known: int = 0) -> Any:
        """A fresh Client. Rebuilt over `known` trials, its Sobol sequence is reseeded and the centre
        skipped: Ax would otherwise start its initial design again at the points already attached,
        which come back through decode/encode a few ulps off and escape its duplicate check."""
        from ax import Client

        seed = self.problem.seed + 7919 * known
        client = Client(random_seed=seed)
        client.configure_experiment(
            parameters=self._parameter_configs,
            parameter_constraints=self._parameter_constraints or None,
            name="aec",
        )
        client.configure_optimization(objective=self._objective, outcome_constraints=self._outcome_constraints or None)
        client.configure_generation_strategy(
            method=self.options.method,
            initialization_budget=self.options.initial,
            initialization_random_seed=seed,
            initialize_with_center=self.options.center and known == 0,
            # Keep instruments busy: Sobol may go on while the first results are awaited.
            allow_exceeding_initialization_budget=True,
            torch_device=self.options.torch_device,
        )
        return client

    # ---------------------------------------------------------------- unit cube <-> Ax
    def _to_ax(self, x: np.ndarray) -> dict[str, float | int]:
        x = np.asarray(x, dtype=float)
        params: dict[str, float | int] = {}
        for i, k in enumerate(self._levels):
            if not self._in_ax[i]:
                continue
            if k is None:
                params[self._pnames[i]] = float(min(max(x[i], 0.0), 1.0))
            else:
                params[self._pnames[i]] = int(min(max(round(float(x[i]) * (k - 1)), 0), k - 1))
        return params

    def _from_ax(self, params: dict[str, Any]) -> np.ndarray:
        x = np.zeros(self.space.dim)
        for i, k in enumerate(self._levels):
            if not self._in_ax[i]:
                continue
            v = float(params[self._pnames[i]])
            x[i] = min(max(v, 0.0), 1.0) if k is None else v / (k - 1)
        return x

    @staticmethod
    def _key(params: dict[str, Any]) -> tuple:
        return tuple(round(float(v), _PARAM_DECIMALS) for _, v in sorted(params.items()))

    def _raw_data(self, obs: Observation) -> dict[str, float | tuple[float, float]]:
        out: dict[str, float | tuple[float, float]] = {}
        for metric, name in self._mname.items():
            v = obs.metrics.get(metric)
            if v is None or not np.isfinite(v):
                continue
            s = obs.sem.get(metric)
            out[name] = (float(v), float(s)) if s is not None and np.isfinite(s) else float(v)
        return out

    # ---------------------------------------------------------------- replaying the history
    @staticmethod
    def _fingerprint(obs: Observation) -> tuple:
        return (
            obs.trial_id,
            obs.status,
            obs.pool_index,
            np.asarray(obs.x, dtype=float).tobytes(),
            tuple(sorted(obs.metrics.items())),
        )

    def _attach(self, params: dict[str, Any]) -> int:
        """Attach a running trial; points that break a parameter constraint (a manual trial, a
        tolerance) are attached without Ax's membership check, so the model still learns from them."""
        client = self._client
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # out-of-design points are attached anyway
                return int(client.attach_trial(parameters=params))
        except ValueError as exc:
            if "constraint" not in str(exc):
                raise
            from ax.core.arm import Arm

            trial = client._experiment.new_trial()
            trial.add_arm(Arm(parameters=dict(params)))
            trial.mark_running(no_runner_required=True)
            return int(trial.index)

    def _record(self, obs: Observation) -> None:
        """Tell the client about one finished trial, completing its running Ax trial if there is one."""
        params = self._to_ax(obs.x)
        key = self._key(params)
        index = next((t for t, k in self._open.items() if k == key), None)
        if index is None:
            index = self._attach(params)
        else:
            del self._open[index]
        data = self._raw_data(obs)
        if obs.status == "completed" and data:
            self._client.complete_trial(trial_index=index, raw_data=data)
        else:
            self._client.mark_trial_failed(trial_index=index, failed_reason=f"aec trial {obs.trial_id}: {obs.status}")

    def _sync(self, history: History, pending: list[Proposal]) -> None:
        """Bring the client up to date with the history and the pending trials."""
        prints = [self._fingerprint(o) for o in history.observations]
        n_seen = len(self._seen)
        if self._client is None or prints[:n_seen] != self._seen:
            if self._client is not None:
                logger.info("history differs from what Ax has seen; rebuilding the Ax client from %d trials", len(prints))
            self._client = self._new_client(known=len(history.observations) + len(pending))
            self._seen, self._open = [], {}
            n_seen = 0
        for obs in history.observations[n_seen:]:
            self._record(obs)
        self._seen = prints
        # Running trials: keep those still pending, abandon those the controller dropped,
        # attach pending ones Ax has not seen (e.g. after a rebuild).
        wanted: list[tuple] = [self._key(self._to_ax(p.x)) for p in pending]
        keep: dict[int, tuple] = {}
        unmatched: list[dict[str, Any]] = []
        free = dict(self._open)
        for p, key in zip(pending, wanted):
            index = next((t for t, k in free.items() if k == key), None)
            if index is None:
                unmatched.append(self._to_ax(p.x))
            else:
                keep[index] = free.pop(index)
        for index in free:
            self._client.mark_trial_abandoned(trial_index=index)
        for params in unmatched:
            keep[self._attach(params)] = self._key(params)
        self._open = keep

    # ---------------------------------------------------------------- proposing
    def _reason(self, trial_index: int) -> dict[str, Any]:
        reason: dict[str, Any] = {"policy": "ax", "ax_trial": trial_index}
        trial = self._client._experiment.trials[trial_index]
        runs = getattr(trial, "generator_runs", [])
        if not runs:
            return reason
        gr = runs[0]
        reason["generation_node"] = gr._generation_node_name
        reason["generator"] = gr._generator_key
        meta = gr.gen_metadata or {}
        acq = meta.get("expected_acquisition_value")
        if acq is not None:
            reason["acquisition_value"] = [float(a) for a in np.atleast_1d(acq)]
        preds = gr.model_predictions_by_arm
        if preds and trial.arm is not None and trial.arm.signature in preds:
            mean, cov = preds[trial.arm.signature]
            back = {v: k for k, v in self._mname.items()}
            reason["predicted_mean"] = {back.get(m, m): float(v) for m, v in mean.items()}
            reason["predicted_sd"] = {
                back.get(m, m): float(np.sqrt(max(cov[m][m], 0.0))) for m in mean if m in cov and m in cov[m]
            }
        return reason

    def _generate(self, n: int) -> dict[int, dict[str, Any]]:
        """Ask Ax for n trials; Ax may hand out fewer (a node waiting for data), so ask once more."""
        # Ax moves one node per generated trial; after a replay several transitions may be due
        # (center -> Sobol -> model), so take them all first, as a live client would have.
        strategy = self._client._generation_strategy
        strategy.experiment = self._client._experiment
        strategy.current_generator_run_limit()
        trials = dict(self._client.get_next_trials(max_trials=n))
        if 0 < len(trials) < n:
            trials.update(self._client.get_next_trials(max_trials=n - len(trials)))
        if len(trials) < n:
            logger.warning("Ax generated %d of %d requested trials", len(trials), n)
        return trials

    def degradations(self) -> list[str]:
        """Standing reasons this policy runs other than at its best, for the progress line."""
        note = fused_kernel.note() if len(self.problem.objectives) > 1 else None
        return [note] if note else []

    def propose(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        if n <= 0:
            return []
        try:
            self._sync(history, pending)
            if self.space.pool is not None:
                return self._propose_pool(history, n, pending)
            out = []
            for index, params in self._generate(n).items():
                self._open[index] = self._key(params)
                out.append(Proposal(x=self._from_ax(params), reason=self._reason(index)))
            return out
        except Exception:
            self._client = None  # half-updated: the next call rebuilds it from the history
            raise

    def _propose_pool(self, history: History, n: int, pending: list[Proposal]) -> list[Proposal]:
        """Map each of Ax's points to the nearest unused pool row; Ax's trial is replaced by that row."""
        pool = np.asarray(self.space.pool, dtype=float)
        free = np.ones(len(pool), dtype=bool)
        taken = history.used_pool_indices() | {p.pool_index for p in pending if p.pool_index is not None}
        free[[i for i in taken if 0 <= i < len(pool)]] = False
        n = min(n, int(free.sum()))
        if n == 0:
            return []
        out = []
        for index, params in self._generate(n).items():
            idx = np.flatnonzero(free)
            if not len(idx):
                self._client.mark_trial_abandoned(trial_index=index)
                continue
            target = self._from_ax(params)
            dist = np.sqrt(((pool[idx] - target) ** 2).sum(axis=1))
            j = int(np.argmin(dist))
            row = int(idx[j])
            free[row] = False
            reason = self._reason(index)
            reason.update(
                pool="nearest unused pool row to Ax's point",
                ax_point=[float(v) for v in target],
                pool_distance=float(dist[j]),
            )
            # Ax should model the row that will be measured, not its own point.
            self._client.mark_trial_abandoned(trial_index=index)
            row_params = self._to_ax(pool[row])
            self._open[self._attach(row_params)] = self._key(row_params)
            out.append(Proposal(x=pool[row].copy(), pool_index=row, reason=reason))
        return out
