"""Weather for simulated nights: cloud cover bootstrapped from real hourly records, seeing as a random walk.

Clouds: `simulators/data/SEO_cloud_oktas.csv` holds 9,055 hourly reports (2021-2022) of Stone Edge
Observatory (see `SEO_weather_LICENSE.md`). Missing hours take the nearest report; a simulated
night copies the cover of one recorded night hour by hour at the same local solar time
(consecutive simulated nights copy consecutive recorded nights), so the fraction of clear hours,
the persistence of cloud and the evening-to-morning cycle are those of the records.
Seeing: a log-normal AR(1) series at 5-minute steps (zenith, 500 nm).
"""
from __future__ import annotations

import csv
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

CLOUD_RECORDS = Path(__file__).resolve().parent.parent / "data" / "SEO_cloud_oktas.csv"
SEEING_STEP_MINUTES = 5.0


@lru_cache(maxsize=4)
def cloud_records(path: str | None = None) -> np.ndarray:
    """Hourly cover in oktas, shape (n_days, 24): row d holds local noon of day d to 11:00 the day after."""
    with open(path or CLOUD_RECORDS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    stamps = np.array([r["hour"] for r in rows], dtype="datetime64[h]")
    values = np.array([int(r["oktas"]) for r in rows], dtype=np.int64)
    first_noon = stamps.min().astype("datetime64[D]") + np.timedelta64(12, "h")
    if stamps.min() < first_noon:
        first_noon -= np.timedelta64(24, "h")
    index = (stamps - first_noon).astype(np.int64)
    n_hours = (index.max() // 24 + 1) * 24
    observed = np.full(n_hours, -1, dtype=np.int64)
    observed[index] = values
    have = np.flatnonzero(observed >= 0)
    nearest = np.searchsorted(have, np.arange(n_hours)).clip(1, len(have) - 1)
    left, right = have[nearest - 1], have[nearest]
    pick = np.where(np.arange(n_hours) - left <= right - np.arange(n_hours), left, right)
    filled = observed[pick].reshape(-1, 24)
    filled.setflags(write=False)
    return filled


def record_clear_fraction(hours: range = range(6, 19)) -> float:
    """Fraction of recorded hours with 0 oktas at local hours-after-noon `hours` (default 18:00 to 06:00)."""
    return float((cloud_records()[:, list(hours)] == 0).mean())


@lru_cache(maxsize=4)
def _ar1_filter(rho: float, steps: int) -> torch.Tensor:
    """Lower-triangular L with (L @ eps) a stationary unit-variance AR(1) series of coefficient rho."""
    j = torch.arange(steps, dtype=torch.float64)
    lag = j.view(-1, 1) - j.view(1, -1)
    scale = torch.full((steps,), math.sqrt(1.0 - rho * rho), dtype=torch.float64)
    scale[0] = 1.0
    return torch.where(lag >= 0, rho ** lag.clamp(min=0), torch.zeros_like(lag)) * scale


class Weather:
    """Cloud cover and seeing for consecutive simulated days, day k running from local noon `noon0 + k`.

    Day k copies the cloud record of recorded day `first + k` (wrapping round the records); its
    seeing is a fresh AR(1) draw. Days are drawn lazily, in order, from the generator.
    """

    def __init__(self, noon0: float, generator: torch.Generator, device: torch.device | str = "cpu",
                 seeing_median: float = 0.7, seeing_spread: float = 0.25, seeing_hours: float = 1.0):
        self.noon0 = noon0
        self.records = torch.from_numpy(cloud_records().astype(np.float64))
        self.generator = generator
        self.device = torch.device(device)
        self.seeing_median = seeing_median
        self.seeing_spread = seeing_spread
        self.rho = math.exp(-SEEING_STEP_MINUTES / 60.0 / seeing_hours)
        self.first = int(torch.randint(0, self.records.shape[0], (1,), generator=generator))
        self.steps = int(24 * 60 / SEEING_STEP_MINUTES) + 1
        self.oktas = torch.empty(0, 24, dtype=torch.float64, device=self.device)
        self.seeing_zenith = torch.empty(0, self.steps, dtype=torch.float64, device=self.device)

    def ensure(self, n_days: int) -> None:
        """Draw days until at least `n_days` exist."""
        k0 = self.oktas.shape[0]
        if n_days <= k0:
            return
        rows = [(self.first + k) % self.records.shape[0] for k in range(k0, n_days)]
        eps = torch.randn(n_days - k0, self.steps, generator=self.generator, dtype=torch.float64)
        log_s = eps @ _ar1_filter(self.rho, self.steps).T * self.seeing_spread
        self.oktas = torch.cat([self.oktas, self.records[rows].to(self.device)])
        self.seeing_zenith = torch.cat([self.seeing_zenith, (self.seeing_median * torch.exp(log_s)).to(self.device)])

    def _day(self, mjd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offset = mjd - self.noon0
        day = offset.floor().long().clamp(min=0)
        self.ensure(int(day.max()) + 1 if day.numel() else 1)
        return day, (offset - day).clamp(0.0, 1.0)

    def cloud(self, mjd: torch.Tensor) -> torch.Tensor:
        """Cloud cover in oktas at each time (float64, same shape as mjd)."""
        day, frac = self._day(mjd)
        return self.oktas[day, (frac * 24.0).long().clamp(max=23)]

    def seeing(self, mjd: torch.Tensor) -> torch.Tensor:
        """Zenith seeing FWHM at 500 nm in arcsec at each time (linear in time between 5-minute steps)."""
        day, frac = self._day(mjd)
        pos = frac * (self.steps - 1)
        i = pos.floor().long().clamp(max=self.steps - 2)
        w = pos - i
        return self.seeing_zenith[day, i] * (1.0 - w) + self.seeing_zenith[day, i + 1] * w
