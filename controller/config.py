"""Pydantic models of a campaign file (YAML or JSON) and loading with field-path error messages.

The shape is the public contract of DESIGN.md: extend it, never break it. Unknown keys are
errors. `load_config` returns a validated `CampaignConfig` or raises `UserError` whose problems
read `space.parameters[2].low: must be < high`.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from controller.durations import parse_duration
from controller.errors import UserError

NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"

MAX_GRID_ROWS = 10**7
"""A grid pool is materialised as a table; beyond this many rows it would not fit in memory."""
MAX_SEED = 2**32
"""Seeds go to numpy's and torch's generators, and through Ax to `numpy.random.seed`, which takes < 2**32."""


def _no_bool(value: Any) -> Any:
    """YAML's `true` is not a number: pydantic's lax mode would read it as 1."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
"""An int that refuses booleans (`trials: true`)."""
Finite = Annotated[float, BeforeValidator(_no_bool), AllowInfNan(False)]
"""A finite float that refuses booleans: .inf and .nan cannot be encoded, compared or fed to a model."""


def _metric_name(value: Any) -> Any:
    """Metric names are data-set column names: any non-empty text without control characters, kept exact."""
    if isinstance(value, str) and (not value or any(ord(ch) < 32 or ord(ch) == 127 for ch in value)):
        raise ValueError("a metric name must be non-empty text without control characters (tabs, newlines); "
                         "spaces, parentheses and units such as 'Conductivity (S/cm)' are fine")
    return value


MetricName = Annotated[str, BeforeValidator(_metric_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ParameterConfig(Strict):
    name: str = Field(pattern=NAME)
    type: Literal["real", "integer", "choice"]
    low: Finite | None = None
    high: Finite | None = None
    log: bool = False
    values: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _check_range(self) -> "ParameterConfig":
        if self.type == "choice":
            if not self.values or len(self.values) < 2:
                raise ValueError("a choice parameter needs 'values' with at least 2 entries")
            if len({str(v) for v in self.values}) != len(self.values):
                raise ValueError("choice 'values' must be distinct")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a choice parameter takes 'values', not low/high/log")
            return self
        if self.values is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not 'values'")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs both 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"low must be < high (got low={self.low:g}, high={self.high:g})")
        if not math.isfinite(self.high - self.low):
            raise ValueError(f"high - low must be a finite number (got low={self.low:g}, high={self.high:g}); "
                             "the range is too wide to map onto [0, 1]")
        if self.type == "integer" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an integer parameter needs whole-number low and high")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0 (got {self.low:g})")
        return self


class GridAxis(Strict):
    """One axis of a grid pool: low, high and the number of points."""

    low: Finite
    high: Finite
    count: Int = Field(ge=1)


def _grid_axis(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        if len(value) != 3:
            raise ValueError("a grid axis is [low, high, count]")
        return {"low": value[0], "high": value[1], "count": value[2]}
    return value


class PoolConfig(Strict):
    grid: dict[str, GridAxis] | None = None
    file: str | None = None
    columns: list[str] | None = None
    simulator: bool = False

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _grid_axis(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "PoolConfig":
        sources = [self.grid is not None, self.file is not None, self.simulator]
        if sum(sources) != 1:
            raise ValueError("a pool needs exactly one of 'grid', 'file' or 'simulator: true'")
        if self.grid is not None and not self.grid:
            raise ValueError("'grid' needs at least one axis")
        if self.grid is not None:
            rows = math.prod(a.count for a in self.grid.values())
            if rows > MAX_GRID_ROWS:
                product = " x ".join(str(a.count) for a in self.grid.values())
                raise ValueError(f"the grid has {product} = {rows} rows; at most {MAX_GRID_ROWS} are allowed "
                                 "(use fewer points per axis, or parameters instead of a pool)")
        return self


class SpaceConfig(Strict):
    parameters: list[ParameterConfig] | None = None
    constraints: list[str] = Field(default_factory=list)
    pool: PoolConfig | None = None

    @model_validator(mode="after")
    def _shape(self) -> "SpaceConfig":
        if self.parameters is not None and self.pool is not None:
            raise ValueError("give either 'parameters' or 'pool', not both")
        if self.parameters is not None:
            if not self.parameters:
                raise ValueError("'parameters' is empty; list at least one parameter")
            dupes = sorted(n for n, k in Counter(p.name for p in self.parameters).items() if k > 1)
            if dupes:
                raise ValueError(f"parameter names must be unique; repeated: {', '.join(dupes)}")
        return self


def _metric_range(value: Any) -> tuple[float, float] | None:
    """`range: [lo, hi]` of a metric: a reading outside it (or not finite) is a failed measurement."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v != v for v in value):
        raise ValueError(f"range must be [low, high] with two numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not lo < hi:
        raise ValueError(f"range must have low < high, got [{lo:g}, {hi:g}]")
    return lo, hi


class ObjectiveConfig(Strict):
    metric: MetricName
    goal: Literal["minimize", "maximize"] = "minimize"
    threshold: Finite | None = None
    range: tuple[float, float] | None = Field(None, description="readings outside [lo, hi] fail the trial")

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, value: Any) -> Any:
        return _metric_range(value)


class OutcomeConstraintConfig(Strict):
    metric: MetricName
    op: Literal["<=", ">="]
    bound: Finite
    range: tuple[float, float] | None = Field(None, description="readings outside [lo, hi] fail the trial")

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, value: Any) -> Any:
        return _metric_range(value)


class FunctionInstrumentConfig(Strict):
    kind: Literal["function"]
    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function")
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("target")
    @classmethod
    def _module_not_file(cls, value: str) -> str:
        module, _, func = value.partition(":")
        if module.endswith(".py"):
            raise ValueError(f"{value!r} names a file; expected 'module:function', "
                             f"e.g. '{module[:-3]}:{func}' for {module} beside the campaign file")
        return value


class CommandInstrumentConfig(Strict):
    kind: Literal["command"]
    argv: list[str] = Field(min_length=1)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)


class SimulatorInstrumentConfig(Strict):
    kind: Literal["simulator"]
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class RecordedInstrumentConfig(Strict):
    kind: Literal["recorded"]
    file: str
    metrics: list[MetricName] | None = None


def _pv_name(value: Any) -> Any:
    """Channel Access names are single tokens: non-empty, no spaces."""
    if isinstance(value, str) and (not value or any(ch.isspace() for ch in value)):
        raise ValueError(f"a PV name must be non-empty text without spaces, got {value!r}")
    return value


PVName = Annotated[str, BeforeValidator(_pv_name)]


def _module_attr(value: Any) -> Any:
    """'module:name' of something importable (a device factory, a document subscriber)."""
    module, _, attr = value.partition(":") if isinstance(value, str) else ("", "", "")
    if isinstance(value, str) and not (re.fullmatch(r"[A-Za-z_][\w.]*", module) and attr.isidentifier()
                                       and not module.endswith(".py")):
        raise ValueError(f"expected 'module:name', e.g. 'mybeamline.devices:make', got {value!r}")
    return value


ModuleAttr = Annotated[str, BeforeValidator(_module_attr)]


def _seconds(value: Any) -> Any:
    return None if value is None else parse_duration(value)


class EpicsAxisConfig(Strict):
    """One parameter's PVs: where its value is put and how aec tells that it has arrived."""

    setpoint: PVName
    readback: PVName | None = None
    tolerance: Finite | None = Field(None, gt=0, description="largest |readback - value| that counts as arrived")
    done: PVName | None = Field(None, description="done-moving PV (a motor record's DMOV)")
    done_value: Finite = 1
    stop: PVName | None = Field(None, description="put `stop_value` here when a measurement is aborted")
    stop_value: Finite = 1

    @model_validator(mode="after")
    def _readback_tolerance(self) -> "EpicsAxisConfig":
        if (self.readback is None) != (self.tolerance is None):
            raise ValueError("'readback' and 'tolerance' go together: the readback must come within tolerance")
        return self


class EpicsTriggerConfig(Strict):
    """Put `value` to `pv`; the acquisition is over when `done` reads `done_value`, or `monitor` updates."""

    pv: PVName
    value: Finite = 1
    done: PVName | None = None
    done_value: Finite = 1
    monitor: PVName | None = None
    stop: PVName | None = Field(None, description="put `stop_value` here to stop an acquisition that is aborted or "
                                "runs out of time (areaDetector: Acquire, 0)")
    stop_value: Finite = 0

    @model_validator(mode="after")
    def _one_wait(self) -> "EpicsTriggerConfig":
        if self.done is not None and self.monitor is not None:
            raise ValueError("give 'done' or 'monitor', not both (neither: the put's completion ends it)")
        return self


class EpicsInstrumentConfig(Strict):
    kind: Literal["epics"]
    prefix: str = Field("", pattern=r"^\S*$", description="prepended to every PV name")
    parameters: dict[str, EpicsAxisConfig] = Field(min_length=1)
    trigger: EpicsTriggerConfig | None = None
    metrics: dict[MetricName, PVName] = Field(min_length=1, description="metric -> scalar PV")
    data: PVName | None = Field(None, description="waveform PV read as the data product")
    timeout: float = Field(5.0, gt=0, description="seconds for each connection and get, and a stop put")
    move_timeout: float = Field(60.0, gt=0, description="seconds for every axis to arrive (its put completed)")
    acquire_timeout: float = Field(60.0, gt=0, description="seconds for the acquisition (and its put) to finish")
    single_stage: bool = Field(True, description="every worker would put the same PVs: executor.workers must be 1 "
                               "(false: the IOC serialises concurrent requests itself)")

    @field_validator("parameters", mode="before")
    @classmethod
    def _setpoint_only(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"setpoint": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("timeout", "move_timeout", "acquire_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _seconds(value)


class OphydReadingConfig(Strict):
    """A Readable device and the key of its read() to take (default: the device's name, or its only key)."""

    device: str = Field(min_length=1)
    field: str | None = None


def _reading(value: Any) -> Any:
    return {"device": value} if isinstance(value, str) else value


class OphydInstrumentConfig(Strict):
    kind: Literal["ophyd"]
    devices: ModuleAttr = Field(description="module:function returning a dict {name: device}")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
    parameters: dict[str, str] = Field(default_factory=dict, description="parameter -> Movable device (default: same name)")
    metrics: dict[MetricName, Annotated[OphydReadingConfig, BeforeValidator(_reading)]] = Field(min_length=1)
    data: Annotated[OphydReadingConfig, BeforeValidator(_reading)] | None = None
    timeout: float = Field(30.0, gt=0, description="seconds to wait on each move and trigger")
    mode: Literal["direct", "bluesky"] = "direct"
    subscribers: list[ModuleAttr] = Field(default_factory=list, description="callables (name, doc) for the RunEngine")
    metadata: dict[str, Any] = Field(default_factory=dict, description="more start-document metadata")
    single_stage: bool | None = Field(None, description="one physical stage: executor.workers must be 1 "
                                      "(default: true when a parameter's device is EPICS-backed, e.g. an EpicsMotor)")

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _seconds(value)

    @model_validator(mode="after")
    def _bluesky_only(self) -> "OphydInstrumentConfig":
        if self.mode != "bluesky" and (self.subscribers or self.metadata):
            raise ValueError("'subscribers' and 'metadata' need 'mode: bluesky'")
        return self


InstrumentConfig = Annotated[
    Union[FunctionInstrumentConfig, CommandInstrumentConfig, SimulatorInstrumentConfig, RecordedInstrumentConfig,
          EpicsInstrumentConfig, OphydInstrumentConfig],
    Field(discriminator="kind"),
]


class PolicyConfig(BaseModel):
    """`kind` plus that policy's own options, which the policy's Options model checks."""

    model_config = ConfigDict(extra="allow")
    kind: str = "sobol"
    strict: bool | None = Field(
        None, strict=True, description="raise instead of falling back (to Sobol points, a jittered model, the CPU); "
        "default: $AEC_STRICT, else false",
    )

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SelectionConfig(BaseModel):
    """`kind: none` keeps every data product; `kind: autoencoder` scores novelty (options checked by it)."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["none", "autoencoder"] = "none"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExecutorConfig(Strict):
    kind: Literal["local", "ray"] = "local"
    workers: Int = Field(1, ge=1)
    timeout: float | None = Field(None, description="seconds (or '5m') one measurement may take")
    attempts: Int = Field(3, ge=1, description="tries per trial before it is journaled failed")
    lookahead: Int = Field(
        1, ge=0, description="proposals computed ahead, while every worker is busy, so that a free worker never "
        "waits for the policy; measured next, or discarded if the run stops first (0: propose only for a free worker, "
        "with every result so far in the model)",
    )
    address: str | None = Field(None, description="Ray: none starts a local Ray; 'auto', 'HOST:PORT' or "
                                "'ray://HOST:PORT' attaches to a running cluster")
    gpus_per_worker: Finite = Field(0.0, ge=0, description="Ray: GPUs per worker; a fraction shares one GPU")
    cpus_per_worker: Finite = Field(1.0, gt=0, description="Ray: CPUs per worker; a fraction for instruments that wait")
    runtime_env: dict[str, Any] | None = Field(None, description="Ray: passed to each worker as its runtime_env")
    start_timeout: float = Field(60.0, description="Ray: seconds (or '2m') workers may take to start before it is an error")

    @field_validator("timeout", "start_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and value != "auto" and not re.fullmatch(r"(ray://)?[^\s:/]+:\d{1,5}", value):
            raise ValueError(f"expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT', got {value!r}")
        return value

    @field_validator("gpus_per_worker", "cpus_per_worker")
    @classmethod
    def _ray_fraction(cls, value: float, info: ValidationInfo) -> float:
        if 0 < value < 1e-4:  # Ray accounts resources in steps of 1e-4 and refuses anything smaller
            least = "0 or at least 0.0001" if info.field_name == "gpus_per_worker" else "at least 0.0001"
            raise ValueError(f"expected {least} (Ray's smallest fraction of a CPU or GPU), got {value:g}")
        return value

    @field_validator("runtime_env")
    @classmethod
    def _runtime_env(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Ray's own check of the runtime_env's shape (pip: a list, env_vars: text values); paths are checked at run."""
        if value:
            try:
                from ray.runtime_env import RuntimeEnv
            except ImportError:
                return value
            try:
                RuntimeEnv(**value)
            except TypeError as exc:
                raise ValueError(str(exc).strip().splitlines()[0] if str(exc).strip() else "not a valid runtime_env") from None
            except ValueError:
                pass  # a working_dir or py_modules path, relative to where the run starts: the executor says so then
        return value

    @model_validator(mode="after")
    def _ray_only(self) -> "ExecutorConfig":
        if self.kind == "local" and (self.address or self.gpus_per_worker or self.runtime_env):
            raise ValueError("'address', 'gpus_per_worker' and 'runtime_env' need 'kind: ray'")
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise ValueError(f"gpus_per_worker: above 1 it must be a whole number (Ray's rule), got {self.gpus_per_worker:g}")
        return self


class StopWhen(Strict):
    metric: MetricName
    below: Finite | None = None
    above: Finite | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> "StopWhen":
        if (self.below is None) == (self.above is None):
            raise ValueError("stop_when needs exactly one of 'below' or 'above'")
        return self


class BudgetConfig(Strict):
    trials: Int | None = Field(None, ge=1)
    wall_time: float | None = None
    stop_when: StopWhen | list[StopWhen] | None = None
    max_failures: Int | None = Field(None, ge=0, description="stop after this many failed trials")
    open_ended: bool = Field(False, description="no limit: run until stopped (`aec daemon`; PATCH /budget sets one)")

    @field_validator("wall_time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _some_limit(self) -> "BudgetConfig":
        if self.trials is None and self.wall_time is None and self.stop_when is None and not self.open_ended:
            raise ValueError("give at least one of 'trials', 'wall_time' or 'stop_when' (or 'open_ended: true')")
        return self

    def stop_conditions(self) -> list[StopWhen]:
        if self.stop_when is None:
            return []
        return self.stop_when if isinstance(self.stop_when, list) else [self.stop_when]


class DaemonConfig(Strict):
    """`aec daemon`: where its control API listens and how it rides out instrument faults."""

    host: str = "127.0.0.1"
    port: Int = Field(8765, ge=0, le=65535, description="0: any free port (logged)")
    token_file: str | None = Field(None, description="bearer token for mutating calls (else $AEC_DAEMON_TOKEN)")
    breaker: Int = Field(5, ge=1, description="consecutive failed attempts that make the daemon unhealthy")
    backoff: float = Field(1.0, ge=0, description="seconds before a retryable failure is retried; doubled per attempt")
    backoff_max: float = Field(60.0, ge=0, description="the longest backoff")

    @field_validator("backoff", "backoff_max", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return 0.0 if value == 0 and not isinstance(value, bool) else parse_duration(value)


class CampaignConfig(Strict):
    name: str = Field(pattern=NAME)
    seed: Int = Field(0, ge=0, lt=MAX_SEED, description="seeds numpy, torch and Ax: 0 <= seed < 2**32")
    description: str | None = None
    space: SpaceConfig | None = None
    objectives: list[ObjectiveConfig] = Field(min_length=1)
    constraints: list[OutcomeConstraintConfig] = Field(default_factory=list)
    instrument: InstrumentConfig
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    budget: BudgetConfig
    store: str | None = None
    daemon: DaemonConfig | None = None

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _cross_checks(self) -> "CampaignConfig":
        dupes = sorted(m for m, k in Counter(o.metric for o in self.objectives).items() if k > 1)
        if dupes:
            raise ValueError(f"objectives name the same metric twice: {', '.join(dupes)}")
        if self.space is None and self.instrument.kind != "simulator":
            raise ValueError("'space' is required unless the instrument is a simulator (which brings its own)")
        return self

    @property
    def base_dir(self) -> Path:
        """The campaign file's folder: relative paths in the file resolve against it."""
        return self._base_dir

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self._base_dir / p

    def store_path(self) -> Path:
        return Path(self.store).expanduser() if self.store else Path("runs") / f"{self.name}.db"


_TAGS = {"function", "command", "simulator", "recorded", "epics", "ophyd", "StopWhen", "list[StopWhen]"}


def format_location(loc: tuple[Any, ...]) -> str:
    """('space', 'parameters', 2, 'low') -> 'space.parameters[2].low' (union tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAGS or str(part).startswith(("function-after", "union[", "list[function-after")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _clean_message(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def validation_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        if err["type"] == "list_type" and any(str(p).startswith("list[") for p in err["loc"]):
            continue  # the other branch of `X | list[X]`: the error of the branch that was meant says more
        loc = format_location(tuple(err["loc"]))
        msg = _clean_message(err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and the campaign file reference in the README)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown kind {err.get('input')!r}; expected one of {err['ctx'].get('expected_tags')}"
        elif err["type"] == "string_pattern_mismatch" and loc.endswith("target"):
            msg = "expected 'module:function', e.g. 'mypkg.sim:evaluate'"
        problems.append(f"{loc}: {msg}")
    return list(dict.fromkeys(problems))


MAX_YAML_NODES = 10**6
"""Nodes a campaign file may expand to, aliases counted at every use: a 513-byte alias bomb expands to billions."""

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: ~10x faster when present


class CampaignLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """YAML's safe loader that refuses duplicate keys (YAML would keep the last silently) and alias bombs."""

    has_anchors = True  # set per file: without an '&' there is no alias to expand, and the count is skipped

    def construct_document(self, node: yaml.Node) -> Any:
        if self.has_anchors and _expanded_size(node) > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"the file expands to more than {MAX_YAML_NODES} values (aliases counted at every use); "
                "refusing it", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen[key]}, again on line {line}); "
                        "YAML would silently keep only the last", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> int:
    """Number of nodes once every alias is expanded, computed in linear time over distinct nodes (iterative)."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            continue
        if key in size:
            continue
        if key in open_:  # a recursive alias: infinite once expanded
            return MAX_YAML_NODES + 1
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}; JSON would silently keep only the last")
        out[key] = value
    return out


def read_campaign_file(path: Path) -> dict[str, Any]:
    """Parse YAML or JSON into a dict; UserError names the file, line and what is wrong."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a campaign file (.yaml, .yml or .json)")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
        else:
            loader = CampaignLoader(text)
            loader.has_anchors = "&" in text
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except ValueError as exc:  # a duplicate JSON key, or a YAML scalar its constructor refuses (e.g. a bad date)
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise UserError(f"{path}: not valid {kind}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections (name, space, objectives, ...) at the top level")
    return data


def validate_config(data: dict[str, Any], base_dir: Path | str | None = None, source: str = "campaign") -> CampaignConfig:
    """Validate a campaign dict's shape, including the policy's and selector's own options.

    `controller.preflight.parse_config` adds the checks against the world (modules, files, simulators).
    """
    try:
        cfg = CampaignConfig.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise UserError(f"{source}: {len(problems)} problem(s)", [f"{source}: {p}" for p in problems]) from None
    cfg._base_dir = Path(base_dir or Path.cwd()).resolve()
    problems = _section_problems(cfg)
    if problems:
        raise UserError(f"{source}: {len(problems)} problem(s)", [f"{source}: {p}" for p in problems])
    return cfg


def _section_problems(cfg: CampaignConfig) -> list[str]:
    """Problems that need the policy's and selector's own models, and the space's constraint parser."""
    from controller.constraints import SpaceError, infeasible_constraints, parse_linear_constraint
    from policies import PolicyConfigError, validate_options

    problems: list[str] = []
    try:
        validate_options(cfg.policy.kind, cfg.policy.options())
    except PolicyConfigError as exc:
        problems += [f"policy.{p}: {m}" for p, m in exc.errors]
    if cfg.selection.kind == "autoencoder":
        problems += _selection_problems(cfg)
    else:
        for section, items in (("objectives", cfg.objectives), ("constraints", cfg.constraints)):
            problems += [f"{section}[{i}].metric: 'novelty' is scored by data selection; set selection.kind: autoencoder"
                         for i, item in enumerate(items) if item.metric == "novelty"]
    if cfg.space is not None and cfg.space.parameters:
        params = {p.name: p for p in cfg.space.parameters}
        linear = []
        for i, text in enumerate(cfg.space.constraints):
            try:
                linear.append(parse_linear_constraint(text, params))
            except SpaceError as exc:
                problems.append(f"space.constraints[{i}]: {exc}")
        empty = None if len(linear) < len(cfg.space.constraints) else infeasible_constraints(params, linear)
        if empty:
            problems.append(f"space.constraints: {empty}")
    return problems


def _selection_problems(cfg: CampaignConfig) -> list[str]:
    try:
        from policies.selection import NoveltySelector
    except ImportError as exc:
        return [f"selection.kind: the autoencoder selector is not available ({exc})"]
    try:
        NoveltySelector.Options.model_validate({"kind": "autoencoder", **cfg.selection.options()})
    except ValidationError as exc:
        return [f"selection.{p}" for p in validation_problems(exc)]
    return []


def config_to_dict(cfg: CampaignConfig) -> dict[str, Any]:
    """The config as plain data (for the store), without defaults filled in by policies."""
    return cfg.model_dump(mode="json", exclude_none=True)
