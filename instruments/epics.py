"""EPICS Channel Access as an instrument, through caproto's threading client.

Each parameter is a setpoint PV, optionally with a readback PV and a tolerance, a motor's
done-moving PV and a stop PV; an optional trigger PV starts an acquisition, which is over when an
acquire-done PV reaches its value or a monitored PV updates (else when the put completes); each
metric is a scalar PV, and `data` a waveform PV whose array is the data product. Every connection
and get has `timeout` seconds; a PV that does not answer is a retryable InstrumentError naming it.
Setpoint puts ask for a put-callback, as a motor record's completes only when its move ends: every
axis's put is started first (the axes travel together), then all of them, their done-moving PVs and
readbacks are awaited within `move_timeout`; the trigger's put and the acquisition within
`acquire_timeout`. While a put is pending the server must keep answering gets (a hung IOC fails
within `timeout`). A move that fails or runs out of time puts the axes' stop PVs before it raises; an
acquisition that does puts the trigger's stop PV (areaDetector: Acquire=0); abort() puts all of them.
Every worker would put the same PVs, so the instrument is one stage (`max_workers` 1) unless
`single_stage` is false (an IOC that serialises concurrent requests itself).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from instruments.base import InstrumentError, InstrumentTimeout, Measurement
from instruments.inflight import Aborted, InFlight

POLL = 0.02
"""Seconds between reads of a done-moving, readback or acquire-done PV while waiting on it."""


@dataclass
class Axis:
    """One parameter's PVs (full names) and how to tell that it has arrived."""

    name: str
    setpoint: str
    readback: str | None = None
    tolerance: float | None = None
    done: str | None = None
    done_value: float = 1
    stop: str | None = None
    stop_value: float = 1


@dataclass
class Trigger:
    """The PV put to start an acquisition and what says it is over (`done` reaching a value, or a `monitor` update)."""

    pv: str
    value: float = 1
    done: str | None = None
    done_value: float = 1
    monitor: str | None = None
    stop: str | None = None
    stop_value: float = 0


class _Updates:
    """Counts the monitor updates of one PV, so a wait can ask for one newer than a given count."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def __call__(self, sub: Any, response: Any) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait_beyond(self, count: int, deadline: float, run: threading.Event) -> bool:
        with self.cond:
            while self.count <= count:
                left = deadline - time.monotonic()
                if left <= 0 or run.is_set():
                    return False
                self.cond.wait(min(left, POLL * 5))
        return True


class _Put:
    """A put awaiting the server's put-callback (its response arrives in one of caproto's threads)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.circuit: Any = None
        self.response: Any = None
        self.done = threading.Event()

    def __call__(self, response: Any) -> None:
        self.response = response
        self.done.set()


class EpicsInstrument:
    """Moves parameters, triggers, and reads metrics and a waveform over Channel Access (see the module docstring)."""

    def __init__(self, parameters: dict[str, Any], metrics: dict[str, str], prefix: str = "",
                 trigger: dict[str, Any] | None = None, data: str | None = None, timeout: float = 5.0,
                 move_timeout: float = 60.0, acquire_timeout: float = 60.0, single_stage: bool = True):
        self.prefix = prefix
        self.axes = [_axis(name, spec, prefix) for name, spec in parameters.items()]
        self.trigger = Trigger(**{**{k: v for k, v in trigger.items() if v is not None},
                                  **{k: prefix + trigger[k] for k in ("pv", "done", "monitor", "stop")
                                     if trigger.get(k)}}) if trigger else None
        self.max_workers = 1 if single_stage else None
        self.metrics = {name: prefix + pv for name, pv in metrics.items()}
        self.data = prefix + data if data else None
        self.timeout, self.move_timeout, self.acquire_timeout = timeout, move_timeout, acquire_timeout
        self._ctx: Any = None
        self._broadcaster: Any = None
        self._lock = threading.Lock()
        self._pvs: dict[str, Any] = {}
        self._updates: _Updates | None = None
        self._subscription: Any = None
        self._in_flight = InFlight()

    def names(self) -> list[str]:
        """Every PV this instrument uses, in a stable order."""
        names: list[str] = []
        for a in self.axes:
            names += [n for n in (a.setpoint, a.readback, a.done, a.stop) if n]
        if self.trigger:
            names += [n for n in (self.trigger.pv, self.trigger.done, self.trigger.monitor, self.trigger.stop) if n]
        names += list(self.metrics.values()) + ([self.data] if self.data else [])
        return list(dict.fromkeys(names))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "epics",
            "parameters": [{"name": a.name, "setpoint": a.setpoint, "readback": a.readback, "done": a.done}
                           for a in self.axes],
            "metrics": list(self.metrics),
            "data": None if self.data is None else {"pv": self.data},
        }

    # connection ----------------------------------------------------------------------------

    def _connect(self) -> None:
        """Create the client context (with a search broadcaster of its own, so close() ends both) and its PVs
        once; searching runs in caproto's threads."""
        with self._lock:
            if self._ctx is not None:
                return
            from caproto.threading.client import Context, SharedBroadcaster

            self._broadcaster = SharedBroadcaster()
            self._ctx = Context(self._broadcaster, timeout=self.timeout)
            self._pvs = dict(zip(self.names(), self._ctx.get_pvs(*self.names(), timeout=self.timeout)))
            if self.trigger and self.trigger.monitor:
                self._updates = _Updates()
                self._subscription = self._pvs[self.trigger.monitor].subscribe(data_type="time")
                self._subscription.add_callback(self._updates)

    def _ready(self, names: list[str], run: threading.Event) -> None:
        """Wait (one `timeout` in all, in POLL steps that an abort ends) for these PVs to connect; name every one
        that does not."""
        deadline = time.monotonic() + self.timeout
        while True:
            missing = [name for name in names if not self._pvs[name].connected]
            if not missing or time.monotonic() >= deadline:
                break
            self._pause(run)
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise InstrumentError(f"PV {shown} {'is' if len(missing) == 1 else 'are'} disconnected: "
                                  f"no Channel Access server answered within {self.timeout:g} s")

    def _call(self, name: str, what: str, fn: Any) -> Any:
        """One put or get on PV `name`, its failures turned into an InstrumentError naming the PV."""
        from caproto import CaprotoError

        try:
            return fn()
        except TimeoutError:
            state = "is disconnected" if not self._pvs[name].connected else f"did not answer a {what}"
            raise InstrumentError(f"PV {name} {state} within {self.timeout:g} s") from None
        except (CaprotoError, OSError) as exc:
            raise InstrumentError(f"PV {name}: {what} failed: {type(exc).__name__}: {exc}") from None

    def _get(self, name: str) -> np.ndarray:
        response = self._call(name, "get", lambda: self._pvs[name].read(timeout=self.timeout))
        return np.array(response.data, copy=True)

    def _put(self, name: str, value: Any, wait: bool = True) -> None:
        """A put awaited for `timeout` (wait) or sent without asking for completion."""
        payload = value if isinstance(value, str) else [value]
        self._call(name, "put", lambda: self._pvs[name].write(payload, wait=wait, timeout=self.timeout,
                                                              notify=wait))

    def _start(self, name: str, value: Any, limit: float) -> _Put:
        """Send a put that asks for a put-callback (late until `limit` s) without waiting; `_finish` awaits it."""
        payload = value if isinstance(value, str) else [value]
        put = _Put(name)
        pv = self._pvs[name]
        self._call(name, "put", lambda: pv.write(payload, wait=False, callback=put, timeout=limit))
        put.circuit = pv.circuit_manager
        return put

    def _finish(self, put: _Put, deadline: float, run: threading.Event, what: str, limit: float,
                probe: str) -> None:
        """Wait until the put completes: until `deadline`, reading PV `probe` each POLL (a server that stops
        answering fails within `timeout`, not at the deadline); an abort ends the wait."""
        while not put.done.wait(POLL):
            self._check(run)
            if put.circuit is not None and put.circuit.dead.is_set():
                raise InstrumentError(f"PV {put.name} disconnected before its put completed")
            if time.monotonic() >= deadline:
                raise InstrumentError(f"{what} within {limit:g} s: the put to PV {put.name} has not completed")
            self._get(probe)
        status = getattr(put.response, "status", None)
        if status is not None and not getattr(status, "success", True):
            raise InstrumentError(f"PV {put.name}: put failed: {getattr(status, 'name', status)}: "
                                  f"{getattr(status, 'description', '')}")

    def _scalar(self, name: str) -> float:
        data = self._get(name)
        try:
            return float(data.reshape(-1)[0])
        except (IndexError, TypeError, ValueError):
            raise InstrumentError(f"PV {name} holds {data!r}; expected a number", retryable=False) from None

    # measurement ---------------------------------------------------------------------------

    def measure(self, params: dict[str, Any]) -> Measurement:
        try:
            with self._in_flight.measuring() as run:
                self._connect()
                self._ready(self.names(), run)
                t0 = time.monotonic()
                readbacks = self._move(params, run)
                t1 = time.monotonic()
                self._acquire(run)
                t2 = time.monotonic()
                metrics = {name: self._scalar(pv) for name, pv in self.metrics.items()}
                data = self._get(self.data).astype(float) if self.data else None
        except Aborted:
            raise InstrumentTimeout("the EPICS measurement was aborted (trial timeout or stop)") from None
        except InstrumentError as exc:
            if run.is_set():  # a failure after an abort (close() disconnected the PVs under it) is the abort
                raise InstrumentTimeout(f"the EPICS measurement was aborted (trial timeout or stop): {exc}") from None
            raise
        meta = {"move_s": t1 - t0, "acquire_s": t2 - t1, **{f"{k}_readback": v for k, v in readbacks.items()}}
        return Measurement(metrics=metrics, data=data, metadata=meta)

    def _move(self, params: dict[str, Any], run: threading.Event) -> dict[str, float]:
        """Start every setpoint's put (axes travel together), then wait, within `move_timeout` in all, until each
        put has completed, each axis is done and within tolerance; a failure stops the axes before it raises."""
        missing = [a.name for a in self.axes if a.name not in params]
        if missing:
            raise InstrumentError(f"no value for parameter(s) {', '.join(missing)}", retryable=False)
        deadline = time.monotonic() + self.move_timeout
        readbacks: dict[str, float] = {}
        started: list[Axis] = []
        try:
            puts = []
            for a in self.axes:
                puts.append((a, self._start(a.setpoint, params[a.name], self.move_timeout)))
                started.append(a)
            for a, put in puts:
                self._finish(put, deadline, run, f"{a.name} did not finish moving to {params[a.name]!r}",
                             self.move_timeout, probe=a.done or a.readback or a.setpoint)
                if a.done:
                    self._wait_for(a.done, a.done_value, deadline, run,
                                   f"{a.name} did not finish moving ({a.done} != {a.done_value:g})",
                                   self.move_timeout)
                if a.readback:
                    readbacks[a.name] = self._arrive(a, float(params[a.name]), deadline, run)
        except InstrumentError as exc:
            raise InstrumentError(f"{exc}{self._stop(started)}", retryable=exc.retryable) from None
        return readbacks

    def _stop(self, axes: list[Axis]) -> str:
        """Put the stop PVs of these axes (each awaited for `timeout`); what it did, to end an error message."""
        stops: dict[str, list[str]] = {}
        for a in axes:
            if a.stop:
                stops.setdefault(a.stop, []).append(a.name)
        notes = []
        for name, names in stops.items():
            value = next(a.stop_value for a in axes if a.stop == name)
            try:
                self._put(name, value)
                notes.append(f"put {name} to stop {', '.join(names)}")
            except InstrumentError as exc:
                notes.append(f"putting {name} to stop {', '.join(names)} failed too: {exc}")
        loose = [a.name for a in axes if not a.stop]
        if loose:
            verb = "has" if len(loose) == 1 else "have"
            notes.append(f"{', '.join(loose)} {verb} no stop PV and may still be moving")
        return f" ({'; '.join(notes)})" if notes else ""

    def _arrive(self, a: Axis, target: float, deadline: float, run: threading.Event) -> float:
        """The readback once within tolerance of `target` (polled until the move deadline without a done PV)."""
        assert a.readback is not None and a.tolerance is not None
        while True:
            value = self._scalar(a.readback)
            if abs(value - target) <= a.tolerance:
                return value
            if a.done or time.monotonic() >= deadline:
                waited = "after it stopped moving" if a.done else f"within {self.move_timeout:g} s"
                raise InstrumentError(f"{a.name} did not reach {target:g} {waited}: {a.readback} reads {value:g} "
                                      f"(tolerance {a.tolerance:g})")
            self._pause(run)

    def _acquire(self, run: threading.Event) -> None:
        """Put the trigger, then wait for the acquire-done value or a fresh monitor update; an acquisition that
        fails or runs out of time is stopped (the trigger's stop PV) before this raises."""
        t = self.trigger
        if t is None:
            return
        try:
            self._acquire_with(t, run)
        except InstrumentError as exc:
            raise InstrumentError(f"{exc}{self._stop_acquisition(t)}", retryable=exc.retryable) from None

    def _stop_acquisition(self, t: Trigger) -> str:
        """Put the trigger's stop PV (awaited for `timeout`); what it did, to end an error message."""
        if not t.stop:
            return " (the trigger has no stop PV: the acquisition may still run)"
        try:
            self._put(t.stop, t.stop_value)
        except InstrumentError as exc:
            return f" (putting {t.stop} to stop the acquisition failed too: {exc})"
        return f" (put {t.stop}={t.stop_value:g} to stop the acquisition)"

    def _acquire_with(self, t: Trigger, run: threading.Event) -> None:
        deadline = time.monotonic() + self.acquire_timeout
        if t.monitor:
            assert self._updates is not None
            if not self._updates.wait_beyond(0, deadline, run):  # the subscription's first (current) value
                self._check(run)
                raise InstrumentError(f"PV {t.monitor} sent no monitor update within {self.acquire_timeout:g} s")
            seen = self._updates.count
        self._finish(self._start(t.pv, t.value, self.acquire_timeout), deadline, run,
                     "the acquisition did not finish", self.acquire_timeout, probe=t.done or t.pv)
        if t.done:
            self._wait_for(t.done, t.done_value, deadline, run, f"the acquisition did not finish ({t.done} != "
                           f"{t.done_value:g})", self.acquire_timeout)
        elif t.monitor and not self._updates.wait_beyond(seen, deadline, run):  # type: ignore[union-attr]
            self._check(run)
            raise InstrumentError(f"the acquisition did not finish: no update of PV {t.monitor} within "
                                  f"{self.acquire_timeout:g} s of putting {t.pv}")

    def _wait_for(self, name: str, value: float, deadline: float, run: threading.Event, what: str,
                  limit: float) -> None:
        while self._scalar(name) != value:
            if time.monotonic() >= deadline:
                raise InstrumentError(f"{what} within {limit:g} s")
            self._pause(run)

    def _pause(self, run: threading.Event) -> None:
        if run.wait(POLL):
            raise Aborted

    @staticmethod
    def _check(run: threading.Event) -> None:
        if run.is_set():
            raise Aborted

    def abort(self) -> None:
        """End the measurement in progress at its next wait and put every stop PV, the axes' and the
        acquisition's (without waiting)."""
        if not self._in_flight.abort():
            return
        stops = {a.stop: a.stop_value for a in self.axes if a.stop}
        if self.trigger is not None and self.trigger.stop:
            stops[self.trigger.stop] = self.trigger.stop_value
        for name, value in stops.items():
            if name not in self._pvs or not self._pvs[name].connected:
                continue
            try:
                self._put(name, value, wait=False)
            except InstrumentError:
                pass

    def close(self) -> None:
        """Abort a measurement in progress (stop PVs put), then disconnect from every server and end the client's
        threads and sockets (its context's and its search broadcaster's). Idempotent; a later measure() connects
        again."""
        self.abort()
        with self._lock:
            ctx, broadcaster = self._ctx, self._broadcaster
            # _pvs stay: a measurement being aborted may still read them (and fail)
            self._ctx = self._broadcaster = self._subscription = None
        if ctx is not None:
            ctx.disconnect(wait=True)
        if broadcaster is not None:
            broadcaster.disconnect(wait=True)


def _axis(name: str, spec: str | dict[str, Any], prefix: str) -> Axis:
    """An Axis from the campaign file's entry: a setpoint PV name, or a mapping of PVs and values."""
    if isinstance(spec, str):
        return Axis(name, prefix + spec)
    pvs = {k: prefix + v for k, v in spec.items() if k in ("setpoint", "readback", "done", "stop") and v}
    rest = {k: v for k, v in spec.items() if k in ("tolerance", "done_value", "stop_value") and v is not None}
    return Axis(name, **pvs, **rest)
