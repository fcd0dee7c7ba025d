"""The replay file (YAML or JSON): data sets and campaign files to replay, policies with options, seeds, budget.

Validated like a campaign file: unknown keys, wrong types and bad policy options are one-line errors
`FILE: field: what was expected`. The `aec replay` flags build the same model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from controller.config import (NAME, ExecutorConfig, Finite, Int, MetricName, Strict, read_campaign_file,
                               validation_problems)
from controller.errors import UserError


class ObjectiveSpec(Strict):
    metric: MetricName
    goal: Literal["minimize", "maximize"] = "minimize"

    @classmethod
    def parse(cls, text: str) -> "ObjectiveSpec":
        """'COL', 'COL:min' or 'COL:max' (the flag's form)."""
        name, _, goal = text.rpartition(":") if text.endswith((":min", ":max", ":minimize", ":maximize")) else (text, "", "")
        goals = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize", "": "minimize"}
        return cls(metric=name, goal=goals[goal])


def _objective_item(value: Any) -> Any:
    return ObjectiveSpec.parse(value) if isinstance(value, str) else value


class DatasetSpec(Strict):
    """A recorded table replayed as a pool: each pick is one unmeasured row, which reveals its recorded outcome."""

    file: str
    name: str | None = Field(None, pattern=NAME)
    inputs: list[str] = Field(min_length=1)
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    duplicates: Literal["mean", "keep", "first"] = Field(
        "mean", description="rows with equal inputs: the mean of their unique values (Liang et al. 2021), each kept, "
        "or the first")
    missing: Literal["drop", "refuse"] = Field("drop", description="rows with a missing value: dropped (and listed) or an error")

    @field_validator("objectives", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        return [_objective_item(v) for v in value] if isinstance(value, list) else value


class CampaignSpec(Strict):
    """A campaign file or store whose problem is re-run: against its simulator or function, else its own data."""

    file: str | None = None
    store: str | None = None
    name: str | None = Field(None, pattern=NAME)

    @model_validator(mode="after")
    def _one(self) -> "CampaignSpec":
        if (self.file is None) == (self.store is None):
            raise ValueError("give exactly one of 'file' (a campaign file) or 'store' (a campaign's store)")
        return self


class PolicySpec(BaseModel):
    """A policy variant: `kind` plus that policy's own options, under a display `name` (default: the kind)."""

    model_config = ConfigDict(extra="allow")
    kind: str
    name: str | None = Field(None, pattern=NAME)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def label(self) -> str:
        return self.name or self.kind


class RaySpec(Strict):
    """Runs as Ray tasks: on a local Ray started for the replay (no address) or on a running cluster."""

    address: str | None = Field(None, description="none starts a local Ray; 'auto', 'HOST:PORT' or 'ray://HOST:PORT' "
                                "attaches to a running cluster")
    cpus_per_run: Finite = Field(1.0, gt=0, description="CPUs each run's task asks Ray for (a fraction packs more runs "
                                 "per core)")
    _labels: tuple[str, str] = PrivateAttr(("ray.address", "ray"))  # how errors name the address and a local start

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return _as_executor("address", value)

    @field_validator("cpus_per_run")
    @classmethod
    def _cpus(cls, value: float) -> float:
        return _as_executor("cpus_per_worker", value)

    def name_settings(self, address: str, start: str) -> None:
        """What error messages call the address and the local start (a file's fields, or the flags)."""
        self._labels = (address, start)

    @property
    def labels(self) -> tuple[str, str]:
        return self._labels


def _as_executor(field: str, value: Any) -> Any:
    """Checked by the campaign file's own rule for a Ray executor's `field` (one rule for both files)."""
    try:
        ExecutorConfig.model_validate({"kind": "ray", field: value})
    except ValidationError as exc:
        raise ValueError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None
    return value


def _ray_item(value: Any) -> Any:
    """`ray: true` is a local Ray with the defaults, `ray: false` none."""
    if value is True:
        return {}
    return None if value is False else value


def _policy_item(value: Any) -> Any:
    return {"kind": value} if isinstance(value, str) else value


class ReplaySpec(Strict):
    name: str = Field("replay", pattern=NAME)
    datasets: list[DatasetSpec] = Field(default_factory=list)
    campaigns: list[CampaignSpec] = Field(default_factory=list)
    policies: list[PolicySpec] = Field(min_length=1)
    seeds: Int | list[Int] = Field(20, description="a count (seeds 0..n-1) or an explicit list")
    budget: Int = Field(100, ge=1, description="measurements per run (at most the pool's size)")
    initial: Int | None = Field(2, ge=0, description="initial-design points of model-based policies (Liang et al.: 2)")
    top: float = Field(0.05, gt=0, le=1, description="the top fraction whose discovery Top% counts")
    selection: dict[str, Any] | None = Field(None, description="replace the campaigns' selection section")
    workers: Int = Field(1, ge=1, description="runs in parallel (processes)")
    ray: RaySpec | None = Field(None, description="run the runs as Ray tasks instead of processes")

    @field_validator("policies", mode="before")
    @classmethod
    def _policy_strings(cls, value: Any) -> Any:
        return [_policy_item(v) for v in value] if isinstance(value, list) else value

    @field_validator("ray", mode="before")
    @classmethod
    def _ray_bool(cls, value: Any) -> Any:
        return _ray_item(value)

    @model_validator(mode="after")
    def _checks(self) -> "ReplaySpec":
        if not self.datasets and not self.campaigns:
            raise ValueError("give at least one entry under 'datasets' or 'campaigns'")
        labels = [p.label for p in self.policies]
        dupes = sorted({n for n in labels if labels.count(n) > 1})
        if dupes:
            raise ValueError(f"policy names must be unique; repeated: {', '.join(dupes)} (give variants a 'name')")
        seeds = self.seed_list()
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError("seeds: a count >= 1 or a list of distinct seeds >= 0")
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def parse_spec(data: dict[str, Any], source: str) -> ReplaySpec:
    """Validate a replay dict (from a file or the flags), policy options included; UserError lists the problems."""
    from policies import PolicyConfigError, validate_options

    try:
        spec = ReplaySpec.model_validate(data)
    except ValidationError as exc:
        problems = [_flag(p) if source == FLAGS else f"{source}: {p}" for p in validation_problems(exc)]
        raise UserError(problems[0], problems) from None
    problems = []
    for i, p in enumerate(spec.policies):
        try:
            validate_options(p.kind, p.options())
        except PolicyConfigError as exc:
            problems += [f"{source}: policies[{i}].{field}: {msg}" for field, msg in exc.errors]
    if problems:
        raise UserError(problems[0], problems)
    if spec.ray is not None:
        spec.ray.name_settings(*(("--ray-address", "--ray") if source == FLAGS else
                                 (f"{source}: ray.address", f"{source}: ray")))
    return spec


FLAGS = "aec replay"
"""The source name of a replay built from flags alone: its problems name the flags."""


def _flag(problem: str) -> str:
    """'top: ...' -> '--top: ...' and '(top level): ...' -> 'aec replay: ...' for a replay built from flags."""
    field, _, message = problem.partition(": ")
    if field == "(top level)":
        return f"{FLAGS}: {message}"
    if field.startswith("ray.address"):
        return f"--ray-address: {message}"
    head = field.split(".")[0].split("[")[0]
    return f"--{head.replace('_', '-')}: {message}" if head in ("seeds", "budget", "initial", "top", "workers") \
        else f"{FLAGS}: {problem}"


def load_spec(path: str | Path) -> tuple[ReplaySpec, Path]:
    """A replay file and the folder its relative paths resolve against."""
    path = Path(path)
    return parse_spec(read_campaign_file(path), str(path)), path.resolve().parent
