"""An alt-az mount: slew time from per-axis speed and acceleration limits, plus settling."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from simulators.telescope.ephemeris import wrap180


@dataclass(frozen=True)
class Mount:
    """Axis limits in deg/s and deg/s^2, settle and readout in seconds (readout overlaps the next slew)."""

    az_speed: float = 7.0
    alt_speed: float = 3.5
    az_accel: float = 7.0
    alt_accel: float = 3.5
    settle: float = 3.0
    readout: float = 2.0

    @staticmethod
    def _axis_time(distance: torch.Tensor, speed: float, accel: float) -> torch.Tensor:
        ramp = speed * speed / accel
        return torch.where(distance > ramp, distance / speed + speed / accel, 2.0 * torch.sqrt(distance / accel))

    def slew_time(self, alt0: torch.Tensor, az0: torch.Tensor, alt1: torch.Tensor, az1: torch.Tensor) -> torch.Tensor:
        """Seconds to move and settle between two (alt, az) pointings in degrees (0 when already there)."""
        d_az = wrap180(az1 - az0).abs()
        d_alt = (alt1 - alt0).abs()
        move = torch.maximum(self._axis_time(d_az, self.az_speed, self.az_accel),
                             self._axis_time(d_alt, self.alt_speed, self.alt_accel))
        moved = (d_az > 1e-6) | (d_alt > 1e-6)
        return torch.where(moved, move + self.settle, torch.zeros_like(move))
