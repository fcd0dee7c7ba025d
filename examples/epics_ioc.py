#!/usr/bin/env python3
"""A Channel Access IOC (caproto) that serves the simulated microscope, so aec can drive a real CA server.

    python examples/epics_ioc.py --list-pvs                      # prefix aec:microscope:
    python examples/epics_ioc.py --prefix lab1: --interfaces 127.0.0.1 --speed 50

PVs (after the prefix): X, Y stage setpoints (pixels) with X_RBV, Y_RBV readbacks that travel at
VELO pixels/s (`--speed` at start) and settle for `--settle` s, X_DMOV, Y_DMOV (1 when at rest),
STOP (put 1: halt both axes where they are); DWELL (s), ACQUIRE (put 1: acquire at the readback
position; back to 0 when done; put 0 while acquiring: stop the acquisition, as areaDetector's Acquire),
ACQUIRE_DONE (0 while acquiring), COUNTER (acquisitions finished), ABORTED (acquisitions stopped); the
last finished acquisition's SPECTRUM (waveform, counts per channel) and scalars PEAK_RATIO, ROI_SCORE,
TOTAL_COUNTS.
With --callback-puts, a put to X, Y or ACQUIRE completes (its put-callback) only when the move or the
acquisition ends, as a motor record's and an areaDetector's do; without it, at once.
The server port comes from EPICS_CA_SERVER_PORT (default 5064), as for any IOC.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caproto import ChannelType  # noqa: E402
from caproto.server import PVGroup, pvproperty, run, template_arg_parser  # noqa: E402

from simulators.base import SimulatorError, as_batch  # noqa: E402
from simulators.microscope import MicroscopeSimulator  # noqa: E402

log = logging.getLogger("aec.epics_ioc")

CHANNELS = 256
TICK = 0.02
"""Seconds between readback updates while an axis travels."""


def axis_pvs(name: str) -> tuple[pvproperty, pvproperty, pvproperty]:
    """A setpoint, its readback and its done-moving flag, as a motor record would serve them."""
    return (pvproperty(name=name, value=0.0, precision=3, units="px", doc=f"stage {name} setpoint"),
            pvproperty(name=f"{name}_RBV", value=0.0, precision=3, units="px", read_only=True,
                       doc=f"stage {name} readback"),
            pvproperty(name=f"{name}_DMOV", value=1, read_only=True, doc=f"1 when {name} is at rest"))


class MicroscopeIOC(PVGroup):
    """Stage x/y with travel time, an acquire trigger, and the spectrum and scalars of the last acquisition."""

    x, x_rbv, x_dmov = axis_pvs("X")
    y, y_rbv, y_dmov = axis_pvs("Y")
    velo = pvproperty(name="VELO", value=100.0, units="px/s", doc="stage speed (a motor record's VELO)")
    stop = pvproperty(name="STOP", value=0, doc="put 1 to halt both axes where they are")
    dwell = pvproperty(name="DWELL", value=0.1, precision=3, units="s", doc="acquisition time")
    acquire = pvproperty(name="ACQUIRE", value=0, doc="put 1 to acquire; returns to 0 when done; put 0 to stop")
    acquire_done = pvproperty(name="ACQUIRE_DONE", value=1, read_only=True, doc="0 while acquiring")
    counter = pvproperty(name="COUNTER", value=0, read_only=True, doc="acquisitions finished")
    aborted = pvproperty(name="ABORTED", value=0, read_only=True, doc="acquisitions stopped by a put of ACQUIRE=0")
    spectrum = pvproperty(name="SPECTRUM", value=[0.0] * CHANNELS, dtype=ChannelType.DOUBLE, read_only=True,
                          doc="counts per channel of the last acquisition")
    peak_ratio = pvproperty(name="PEAK_RATIO", value=0.0, precision=4, read_only=True)
    roi_score = pvproperty(name="ROI_SCORE", value=0.0, precision=4, read_only=True)
    total_counts = pvproperty(name="TOTAL_COUNTS", value=0.0, read_only=True)

    def __init__(self, *args: Any, simulator: MicroscopeSimulator, speed: float, settle: float, dwell: float,
                 callback_puts: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.simulator = simulator
        self.callback_puts = callback_puts
        self.speed, self.settle, self.initial_dwell = speed, settle, dwell
        self.limits = {"X": simulator.width - 1, "Y": simulator.height - 1}
        self._moves: dict[str, asyncio.Task] = {}
        self._acquisition: asyncio.Task | None = None

    def _axis(self, name: str) -> tuple[Any, Any, Any]:
        return {"X": (self.x, self.x_rbv, self.x_dmov), "Y": (self.y, self.y_rbv, self.y_dmov)}[name]

    async def _start_move(self, name: str, target: float) -> float:
        """Start travelling to `target`; outside the soft limits the axis stays put, as a motor record's does."""
        setpoint = self._axis(name)[0]
        if not 0.0 <= target <= self.limits[name]:
            log.warning("%s=%g refused: outside the soft limits 0..%d pixels", name, target, self.limits[name])
            return float(setpoint.value)
        old = self._moves.pop(name, None)
        if old is not None:
            old.cancel()
        await self._axis(name)[2].write(0)
        task = self._moves[name] = asyncio.get_running_loop().create_task(self._travel(name, target))
        if self.callback_puts:  # complete the put when the move ends, or where STOP (or a new put) left the axis
            await asyncio.wait([task])
            if task.cancelled():
                return float(self._axis(name)[1].value)
        return target

    async def _travel(self, name: str, target: float) -> None:
        """Ramp the readback to `target` at `speed`, settle, then raise the done-moving flag."""
        _, rbv, dmov = self._axis(name)
        start = float(rbv.value)
        speed = max(float(self.velo.value), 1e-6)
        steps = max(1, int(abs(target - start) / speed / TICK))
        for i in range(1, steps + 1):
            await asyncio.sleep(TICK if steps > 1 else abs(target - start) / speed)
            await rbv.write(start + (target - start) * i / steps)
        if target != start:
            await asyncio.sleep(self.settle)
        await dmov.write(1)
        self._moves.pop(name, None)

    @velo.startup
    async def velo(self, instance, async_lib):
        await instance.write(self.speed)

    @dwell.startup
    async def dwell(self, instance, async_lib):
        await instance.write(self.initial_dwell)

    @x.putter
    async def x(self, instance, value):
        return await self._start_move("X", float(value))

    @y.putter
    async def y(self, instance, value):
        return await self._start_move("Y", float(value))

    @stop.putter
    async def stop(self, instance, value):
        if value:
            for name in list(self._moves):
                self._moves.pop(name).cancel()
                setpoint, rbv, dmov = self._axis(name)
                await setpoint.write(rbv.value, verify_value=False)
                await dmov.write(1)
        return 0

    @acquire.putter
    async def acquire(self, instance, value):
        if not value:
            if self._acquisition is not None and not self._acquisition.done():
                self._acquisition.cancel()
                await self.aborted.write(self.aborted.value + 1)
                await self.acquire_done.write(1)
            return 0
        if self._acquisition is None or self._acquisition.done():
            await self.acquire_done.write(0)
            self._acquisition = asyncio.get_running_loop().create_task(self._acquire())
        if self.callback_puts:  # complete the put when the acquisition ends
            await asyncio.wait([self._acquisition])
            return 0
        return 1

    async def _acquire(self) -> None:
        """Dwell, measure the simulator at the readback position, publish, then signal done."""
        dwell = float(self.dwell.value)
        await asyncio.sleep(dwell)
        params = {"x": float(self.x_rbv.value), "y": float(self.y_rbv.value), "dwell": dwell}
        metrics, _, data, _ = self.simulator.evaluate(as_batch(params)).row(0)
        await self.spectrum.write(data.astype(float).tolist())
        await self.peak_ratio.write(metrics["peak_ratio"])
        await self.roi_score.write(metrics["roi_score"])
        await self.total_counts.write(metrics["total_counts"])
        await self.counter.write(self.counter.value + 1)
        await self.acquire_done.write(1)
        await self.acquire.write(0, verify_value=False)


def main(argv: list[str] | None = None) -> None:
    parser, split_args = template_arg_parser(default_prefix="aec:microscope:", desc=__doc__.split("\n")[0],
                                             supported_async_libs=["asyncio"])
    parser.add_argument("--image", default="ihc", help="specimen image (see simulators.microscope.IMAGES)")
    parser.add_argument("--size", type=int, default=128, help="specimen map, pixels per side")
    parser.add_argument("--seed", type=int, default=7, help="noise and drift seed")
    parser.add_argument("--speed", type=float, default=100.0, help="stage speed, pixels/s")
    parser.add_argument("--settle", type=float, default=0.05, help="settling time after a move, s")
    parser.add_argument("--dwell", type=float, default=0.1, help="acquisition time at start (the DWELL PV), s")
    parser.add_argument("--callback-puts", action="store_true",
                        help="complete puts to X, Y, ACQUIRE when the move or acquisition ends (as a motor record)")
    args = parser.parse_args(argv)
    if not (args.speed > 0 and args.settle >= 0 and args.dwell > 0):
        parser.error("--speed and --dwell must be > 0, --settle >= 0")
    ioc_options, run_options = split_args(args)
    try:
        simulator = MicroscopeSimulator(image=args.image, size=args.size, channels=CHANNELS, seed=args.seed)
    except SimulatorError as exc:
        parser.error(str(exc))
    ioc = MicroscopeIOC(simulator=simulator, speed=args.speed, settle=args.settle, dwell=args.dwell,
                        callback_puts=args.callback_puts, **ioc_options)
    run(ioc.pvdb, **run_options)


if __name__ == "__main__":
    main()
