"""ophyd devices as an instrument: parameters are Movable devices, metrics Readable ones.

The devices come from an importable factory (`mybeamline.devices:make`, returning {name: device});
only bluesky's protocols are used, so ophyd.sim, ophyd and a facility's own devices all work.
`mode: direct` calls set() on every Movable and waits on the statuses, trigger()s every Triggerable
Readable, then read()s. `mode: bluesky` does the same as a one-event run through a RunEngine, so
the facility's document subscribers see it; its start document carries aec's trial id, attempt and
proposal reason whenever `measure` is given them as `context`.
A move that fails or runs past `timeout` stops every Movable still moving (direct mode; in bluesky mode
the RunEngine stops the devices it moved) before it raises; a trigger that does stops the detectors still
acquiring. abort() (the watchdog's, a stop's) stop()s every Stoppable device, Movables and detectors.
close() aborts a measurement in progress and ends the RunEngine's event-loop thread; the devices themselves
belong to the factory and stay as they are. A parameter device backed by EPICS (an EpicsMotor, an EpicsSignal)
is hardware every worker shares: the instrument is one stage (`max_workers` 1) unless `single_stage` says.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from bluesky.protocols import Movable, Readable, Stoppable, Triggerable

from instruments.base import InstrumentError, InstrumentTimeout, Measurement
from instruments.function import load_callable
from instruments.inflight import Aborted, InFlight

POLL = 0.02
"""Seconds between looks at a status while waiting on it (an abort ends the wait at the next look)."""
CLOSE_WAIT = 10.0
"""Seconds close() waits for an aborted bluesky run to end, and then for the RunEngine's loop thread."""


@dataclass
class Reading:
    """One Readable device and the key of its read() that holds the value (None: resolved on first read)."""

    device: Any
    name: str
    field: str | None = None

    def value(self, reading: dict[str, Any]) -> Any:
        if self.field is None:
            keys = list(reading)
            own = getattr(self.device, "name", None)
            if own in reading or len(keys) == 1:
                self.field = own if own in reading else keys[0]
            else:
                raise InstrumentError(f"device {self.name!r} reads {keys}; name one as 'field' in the campaign file",
                                      retryable=False)
        if self.field not in reading:
            raise InstrumentError(f"device {self.name!r} has no reading {self.field!r}; it reads {list(reading)}",
                                  retryable=False)
        return reading[self.field]["value"]


def load(target: str, base_dir: str | Path | None, field: str) -> Callable[..., Any]:
    """`module:name` imported as function instruments are (beside the campaign file first), errors under `field`."""
    try:
        return load_callable(target, base_dir)
    except InstrumentError as exc:
        raise InstrumentError(str(exc).replace("instrument.target", field, 1), retryable=False) from None


class OphydInstrument:
    """Moves Movables, triggers and reads Readables, directly or as a bluesky run (see the module docstring)."""

    def __init__(self, spec: dict[str, Any], base_dir: str | Path | None = None,
                 parameter_names: list[str] | None = None):
        self.target = spec["devices"]
        devices = self._devices(load(self.target, base_dir, "instrument.devices"), spec.get("options") or {})
        mapping = dict(spec.get("parameters") or {})
        names = list(parameter_names) if parameter_names else list(mapping)
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise InstrumentError(f"instrument.parameters: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} "
                                  f"not parameters of the space ({', '.join(names)})", retryable=False)
        self.movables = {p: _device(devices, mapping.get(p, p), Movable, f"instrument.parameters.{p}") for p in names}
        self.metrics = {m: self._reading(devices, r, f"instrument.metrics.{m}") for m, r in spec["metrics"].items()}
        self.data = self._reading(devices, spec["data"], "instrument.data") if spec.get("data") else None
        self.timeout = float(spec.get("timeout", 30.0))
        self.mode = spec.get("mode", "direct")
        self.subscribers = [load(s, base_dir, f"instrument.subscribers[{i}]")
                            for i, s in enumerate(spec.get("subscribers") or [])]
        self.metadata = dict(spec.get("metadata") or {})
        single = spec.get("single_stage")
        if single is None:
            single = any(_epics_backed(type(d)) for d in self.movables.values())
        self.max_workers = 1 if single else None
        self._engine: Any = None
        self._in_flight = InFlight()

    def _devices(self, factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
        try:
            devices = factory(**options)
        except Exception as exc:  # noqa: BLE001 - a facility's factory may raise anything
            raise InstrumentError(f"instrument.devices: {self.target} raised {type(exc).__name__}: {exc}",
                                  retryable=False) from None
        if not isinstance(devices, dict):
            raise InstrumentError(f"instrument.devices: {self.target} returned {type(devices).__name__}; "
                                  "expected a dict {name: device}", retryable=False)
        return devices

    @staticmethod
    def _reading(devices: dict[str, Any], spec: dict[str, Any], field: str) -> Reading:
        return Reading(_device(devices, spec["device"], Readable, field), spec["device"], spec.get("field"))

    def describe(self) -> dict[str, Any]:
        return {"kind": "ophyd", "devices": self.target, "mode": self.mode,
                "parameters": [{"name": p, "device": getattr(d, "name", None)} for p, d in self.movables.items()],
                "metrics": list(self.metrics), "data": None if self.data is None else {"device": self.data.name}}

    def readables(self) -> list[Any]:
        """Every device read once per measurement (metrics, data, and Movables that can be read), no repeats."""
        devs = [r.device for r in self.metrics.values()] + ([self.data.device] if self.data else [])
        devs += [d for d in self.movables.values() if isinstance(d, Readable)]
        return list({id(d): d for d in devs}.values())

    # measurement ---------------------------------------------------------------------------

    def measure(self, params: dict[str, Any], context: dict[str, Any] | None = None) -> Measurement:
        """Move, trigger, read; `context` ({'trial_id', 'attempt', 'reason'}) goes into a bluesky run's start document."""
        missing = [p for p in self.movables if p not in params]
        if missing:
            raise InstrumentError(f"no value for parameter(s) {', '.join(missing)}", retryable=False)
        try:
            with self._in_flight.measuring() as run:
                if self.mode == "bluesky":
                    readings = self._as_bluesky_run(params, context or {}, run)
                else:
                    readings = self._directly(params, run)
        except Aborted:
            raise InstrumentTimeout("the ophyd measurement was aborted (trial timeout or stop)") from None
        except InstrumentError as exc:
            if run.is_set():  # a failure after an abort (a move that the abort stopped) is the abort
                raise InstrumentTimeout(f"the ophyd measurement was aborted (trial timeout or stop): {exc}") from None
            raise
        return self._measurement(readings)

    def _directly(self, params: dict[str, Any], run: threading.Event) -> dict[str, Any]:
        moves: list[tuple[str, Any]] = []
        try:
            for p, d in self.movables.items():
                moves.append((p, self._call(f"{p}.set({params[p]!r})", lambda d=d, p=p: d.set(params[p]))))
            deadline = time.monotonic() + self.timeout
            for p, status in moves:
                _wait(status, deadline, run, f"moving {p} to {params[p]!r}", self.timeout)
        except InstrumentError as exc:  # a move that failed or timed out: the others may still be moving
            raise InstrumentError(f"{exc}{self._stop(moves)}", retryable=exc.retryable) from None
        readables = self.readables()
        triggers = [(d, self._call("trigger()", d.trigger)) for d in readables if isinstance(d, Triggerable)]
        deadline = time.monotonic() + self.timeout
        try:
            for d, status in triggers:
                _wait(status, deadline, run, f"triggering {getattr(d, 'name', '?')}", self.timeout)
        except InstrumentError as exc:  # a detector that failed or ran out of time: the others may still acquire
            raise InstrumentError(f"{exc}{self._stop_detectors(triggers)}", retryable=exc.retryable) from None
        readings: dict[str, Any] = {}
        for d in readables:
            readings.update(self._call(f"{getattr(d, 'name', '?')}.read()", d.read))
        return readings

    def _as_bluesky_run(self, params: dict[str, Any], context: dict[str, Any], run: threading.Event) -> dict[str, Any]:
        import bluesky.plan_stubs as bps
        import bluesky.preprocessors as bpp

        engine = self._run_engine()
        md = {**self.metadata, "plan_name": "aec_measure", "aec_params": _plain(params)}
        md.update({f"aec_{k}": _plain(v) for k, v in context.items()})
        readings: dict[str, Any] = {}
        stage = ["moving " + ", ".join(self.movables)]

        @bpp.run_decorator(md=md)
        def plan():
            for p, d in self.movables.items():
                yield from bps.abs_set(d, params[p], group="aec_move")
            yield from bps.wait(group="aec_move", timeout=self.timeout)
            readables = self.readables()
            stage[0] = "triggering " + ", ".join(getattr(d, "name", "?") for d in readables)
            for d in readables:
                if isinstance(d, Triggerable):
                    yield from bps.trigger(d, group="aec_trigger")
            yield from bps.wait(group="aec_trigger", timeout=self.timeout)
            stage[0] = "reading"
            yield from bps.create("primary")
            for d in readables:
                readings.update((yield from bps.read(d)))
            yield from bps.save()

        try:
            engine(plan())
        except Exception as exc:  # noqa: BLE001 - a failed status, a timeout or a device error inside the plan
            if run.is_set():
                raise Aborted from None
            if isinstance(exc, TimeoutError):
                raise InstrumentError(f"{stage[0]} did not finish within {self.timeout:g} s (bluesky run aborted)") from None
            raise InstrumentError(f"the bluesky run failed while {stage[0]}: {type(exc).__name__}: {exc}") from None
        if run.is_set():
            raise Aborted
        return readings

    def _stop(self, moves: list[tuple[str, Any]]) -> str:
        """stop() every Movable whose move has not finished; what it did, to end an error message."""
        return _stop_unfinished([(p, self.movables[p], status) for p, status in moves], "moving")

    def _stop_detectors(self, triggers: list[tuple[Any, Any]]) -> str:
        """stop() every triggered detector whose acquisition has not finished; what it did, for an error message."""
        return _stop_unfinished([(getattr(d, "name", "?"), d, status) for d, status in triggers
                                 if all(d is not m for m in self.movables.values())], "acquiring")

    def _run_engine(self) -> Any:
        """One RunEngine per instrument, made in the worker's thread (no SIGINT handler: not the main thread)."""
        if self._engine is None:
            from bluesky import RunEngine

            self._engine = RunEngine({}, context_managers=[])
            for callback in self.subscribers:
                self._engine.subscribe(callback)
        return self._engine

    @staticmethod
    def _call(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - device code may raise anything; the trial records it
            raise InstrumentError(f"{what} raised {type(exc).__name__}: {exc}") from None

    def _measurement(self, readings: dict[str, Any]) -> Measurement:
        metrics = {}
        for name, r in self.metrics.items():
            value = r.value(readings)
            try:
                metrics[name] = float(value)
            except (TypeError, ValueError):
                raise InstrumentError(f"metric {name!r} from device {r.name!r} is {value!r}; expected a number",
                                      retryable=False) from None
        data = np.asarray(self.data.value(readings), dtype=float) if self.data else None
        meta = {}
        for p, d in self.movables.items():
            own = readings.get(getattr(d, "name", None))
            if own is not None and np.ndim(own["value"]) == 0:
                meta[f"{p}_readback"] = float(own["value"])
        return Measurement(metrics=metrics, data=data, metadata=meta)

    def abort(self) -> None:
        """End the measurement in progress: abort the bluesky run (which stops the Movables it moved) or stop
        every Movable, and stop every detector, that can stop."""
        if not self._in_flight.abort():
            return
        devices = self.readables() + list(self.movables.values())
        if self.mode == "bluesky" and self._engine is not None and self._engine.state != "idle":
            from bluesky.utils import TransitionError

            try:
                self._engine.abort("aec: the trial timed out or the campaign stopped")
            except TransitionError:
                pass
            devices = [d for d in self.readables() if all(d is not m for m in self.movables.values())]
        for d in {id(d): d for d in devices}.values():
            if isinstance(d, Stoppable):
                try:
                    d.stop(success=False)
                except Exception:  # noqa: BLE001 - an abort must not raise for a device's sake
                    pass

    def close(self) -> None:
        """Abort a measurement in progress, then end the RunEngine's event loop and its thread. Idempotent;
        a later bluesky-mode measure() makes a new RunEngine."""
        self.abort()
        engine, self._engine = self._engine, None
        if engine is None:
            return
        deadline = time.monotonic() + CLOSE_WAIT
        while engine.state != "idle" and time.monotonic() < deadline:  # the aborted run winds down
            time.sleep(POLL)
        loop, thread = engine.loop, getattr(engine, "_th", None)
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(CLOSE_WAIT)
        if not loop.is_running() and not loop.is_closed():
            loop.close()


def _device(devices: dict[str, Any], name: str, protocol: type, field: str) -> Any:
    """The device called `name`, checked against a bluesky protocol (Movable, Readable)."""
    if name not in devices:
        raise InstrumentError(f"{field}: the factory made no device {name!r}; it made {', '.join(sorted(devices))}",
                              retryable=False)
    device = devices[name]
    if not isinstance(device, protocol):
        raise InstrumentError(f"{field}: device {name!r} ({type(device).__name__}) is not {protocol.__name__}",
                              retryable=False)
    return device


def _stop_unfinished(devices: list[tuple[str, Any, Any]], doing: str) -> str:
    """stop() each (name, device, status) whose status has not finished; what it did, to end an error message."""
    notes = []
    for name, d, status in devices:
        if getattr(status, "done", False):
            continue
        if not isinstance(d, Stoppable):
            notes.append(f"{name} cannot stop (its device has no stop()) and may still be {doing}")
            continue
        try:
            d.stop(success=False)
            notes.append(f"stopped {name}")
        except Exception as exc:  # noqa: BLE001 - device code may raise anything
            notes.append(f"stopping {name} failed too: {type(exc).__name__}: {exc}")
    return f" ({'; '.join(notes)})" if notes else ""


def _epics_backed(cls: type) -> bool:
    """Whether an ophyd device class is (or holds a component that is) an EPICS signal: hardware every worker shares."""
    try:
        from ophyd.signal import EpicsSignalBase
    except ImportError:
        return False
    if issubclass(cls, EpicsSignalBase):
        return True
    components = getattr(cls, "_sig_attrs", {}) or {}
    return any(isinstance(getattr(c, "cls", None), type) and _epics_backed(c.cls) for c in components.values())


def _wait(status: Any, deadline: float, run: threading.Event, what: str, timeout: float) -> None:
    """Wait for a status until `deadline`; an abort, a timeout or a failed status raises."""
    done = threading.Event()
    status.add_callback(lambda *_: done.set())
    while not done.wait(POLL):
        if run.is_set():
            raise Aborted
        if time.monotonic() >= deadline:
            raise InstrumentError(f"{what} did not finish within {timeout:g} s")
    if not status.success:
        exc = status.exception()
        raise InstrumentError(f"{what} failed: {type(exc).__name__ if exc else 'status'}: {exc}")


def _plain(value: Any) -> Any:
    """Start-document metadata as plain JSON-like values (numpy scalars and arrays unwrapped)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
