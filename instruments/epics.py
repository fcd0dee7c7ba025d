"""EPICS Channel Access as an instrument, through caproto's threading client.

Each parameter is a setpoint PV, optionally with a readback PV and a tolerance, a motor's
done-moving PV and a stop PV; an optional trigger PV starts an acquisition, which is over when an
acquire-done PV reaches its value or a monitored PV updates (else when the put completes); each
metric is a scalar PV, and `data` a waveform PV whose array is the data product. Every connection,
put and get has `timeout` seconds; a PV that does not answer is a retryable InstrumentError naming it.
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


class EpicsInstrument:
    """Moves parameters, triggers, and reads metrics and a waveform over Channel Access (see the module docstring)."""

    def __init__(self, parameters: dict[str, Any], metrics: dict[str, str], prefix: str = "",
                 trigger: dict[str, Any] | None = None, data: str | None = None, timeout: float = 5.0,
                 move_timeout: float = 60.0, acquire_timeout: float = 60.0):
        self.prefix = prefix
        self.axes = [_axis(name, spec, prefix) for name, spec in parameters.items()]
        self.trigger = Trigger(**{**trigger, **{k: prefix + trigger[k] for k in ("pv", "done", "monitor")
                                                 if trigger.get(k)}}) if trigger else None
        self.metrics = {name: prefix + pv for name, pv in metrics.items()}
        self.data = prefix + data if data else None
        self.timeout, self.move_timeout, self.acquire_timeout = timeout, move_timeout, acquire_timeout
        self._ctx: Any = None
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
            names += [n for n in (self.trigger.pv, self.trigger.done, self.trigger.monitor) if n]
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
        """Create the client context and its PVs once; searching runs in caproto's threads."""
        if self._ctx is not None:
            return
        from caproto.threading.client import Context

        self._ctx = Context(timeout=self.timeout)
        self._pvs = dict(zip(self.names(), self._ctx.get_pvs(*self.names(), timeout=self.timeout)))
        if self.trigger and self.trigger.monitor:
            self._updates = _Updates()
            self._subscription = self._pvs[self.trigger.monitor].subscribe(data_type="time")
            self._subscription.add_callback(self._updates)

    def _ready(self, names: list[str]) -> None:
        """Wait (one `timeout` in all) for these PVs to connect; name every one that does not."""
        deadline = time.monotonic() + self.timeout
        missing = []
        for name in names:
            try:
                self._pvs[name].wait_for_connection(timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                missing.append(name)
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
        payload = value if isinstance(value, str) else [value]
        self._call(name, "put", lambda: self._pvs[name].write(payload, wait=wait, timeout=self.timeout,
                                                              notify=wait))

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
                self._ready(self.names())
                t0 = time.monotonic()
                readbacks = self._move(params, run)
                t1 = time.monotonic()
                self._acquire(run)
                t2 = time.monotonic()
                metrics = {name: self._scalar(pv) for name, pv in self.metrics.items()}
                data = self._get(self.data).astype(float) if self.data else None
        except Aborted:
            raise InstrumentTimeout("the EPICS measurement was aborted (trial timeout or stop)") from None
        meta = {"move_s": t1 - t0, "acquire_s": t2 - t1, **{f"{k}_readback": v for k, v in readbacks.items()}}
        return Measurement(metrics=metrics, data=data, metadata=meta)

    def _move(self, params: dict[str, Any], run: threading.Event) -> dict[str, float]:
        """Put every setpoint (axes travel together), then wait until each is done and within tolerance."""
        missing = [a.name for a in self.axes if a.name not in params]
        if missing:
            raise InstrumentError(f"no value for parameter(s) {', '.join(missing)}", retryable=False)
        for a in self.axes:
            self._put(a.setpoint, params[a.name])
        deadline = time.monotonic() + self.move_timeout
        readbacks = {}
        for a in self.axes:
            if a.done:
                self._wait_for(a.done, a.done_value, deadline, run,
                               f"{a.name} did not finish moving ({a.done} != {a.done_value:g})")
            if a.readback:
                readbacks[a.name] = self._arrive(a, float(params[a.name]), deadline, run)
        return readbacks

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
        """Put the trigger, then wait for the acquire-done value or a fresh monitor update."""
        t = self.trigger
        if t is None:
            return
        deadline = time.monotonic() + self.acquire_timeout
        if t.monitor:
            assert self._updates is not None
            if not self._updates.wait_beyond(0, deadline, run):  # the subscription's first (current) value
                self._check(run)
                raise InstrumentError(f"PV {t.monitor} sent no monitor update within {self.acquire_timeout:g} s")
            seen = self._updates.count
        self._put(t.pv, t.value)
        if t.done:
            self._wait_for(t.done, t.done_value, deadline, run, f"the acquisition did not finish ({t.done} != "
                           f"{t.done_value:g})")
        elif t.monitor and not self._updates.wait_beyond(seen, deadline, run):  # type: ignore[union-attr]
            self._check(run)
            raise InstrumentError(f"the acquisition did not finish: no update of PV {t.monitor} within "
                                  f"{self.acquire_timeout:g} s of putting {t.pv}")

    def _wait_for(self, name: str, value: float, deadline: float, run: threading.Event, what: str) -> None:
        while self._scalar(name) != value:
            if time.monotonic() >= deadline:
                raise InstrumentError(f"{what} by its deadline")
            self._pause(run)

    def _pause(self, run: threading.Event) -> None:
        if run.wait(POLL):
            raise Aborted

    @staticmethod
    def _check(run: threading.Event) -> None:
        if run.is_set():
            raise Aborted

    def abort(self) -> None:
        """End the measurement in progress at its next wait and put every stop PV (without waiting)."""
        if not self._in_flight.abort():
            return
        stops = {a.stop: a.stop_value for a in self.axes if a.stop and a.stop in self._pvs and self._pvs[a.stop].connected}
        for name, value in stops.items():
            try:
                self._put(name, value, wait=False)
            except InstrumentError:
                pass

    def close(self) -> None:
        """Disconnect from every server (the context's threads end)."""
        if self._ctx is not None:
            self._ctx.disconnect(wait=False)
            self._ctx = None


def _axis(name: str, spec: str | dict[str, Any], prefix: str) -> Axis:
    """An Axis from the campaign file's entry: a setpoint PV name, or a mapping of PVs and values."""
    if isinstance(spec, str):
        return Axis(name, prefix + spec)
    pvs = {k: prefix + v for k, v in spec.items() if k in ("setpoint", "readback", "done", "stop") and v}
    rest = {k: v for k, v in spec.items() if k in ("tolerance", "done_value", "stop_value") and v is not None}
    return Axis(name, **pvs, **rest)
