"""Targets: survey fields (a sky tiling, a CSV list or explicit arrays) and a transient population.

Transients follow Bazin et al. (2009) light curves, f(t) = exp(-(t - t0)/fall) / (1 + exp(-(t - t0)/rise)),
normalised to a drawn peak magnitude at a drawn peak time: a fast rise and a slower decline, with
Ia-like (short decline) and II-like (long plateau-ish decline) timescales. Bazin's form is a fit near the
peak whose exponential rise never reaches zero flux (a bright Ia would be detectable a month before peak),
so each transient also has an explosion epoch, a drawn rise time before the peak (Ia 15-22 days, Firth et
al. 2015; II 5-15 days, Gall et al. 2015), before which it emits nothing.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from simulators.base import SimulatorError

TRANSIENT_CLASSES = ("Ia", "II")
_TIMESCALES = {"Ia": ((2.0, 4.0), (18.0, 35.0)), "II": ((1.0, 3.0), (50.0, 110.0))}
_CLASS_WEIGHTS = (0.6, 0.4)
_RISE_TIMES = {"Ia": (15.0, 22.0), "II": (5.0, 15.0)}
NO_FLUX_MAG = 99.0  # the magnitude catalogues give a source with no flux; finite, so records stay strict JSON


@dataclass
class Fields:
    """A target catalogue in ICRS degrees; `field_id` is the user's identifier, rows are indexed 0..n-1."""

    field_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    priority: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return len(self.ra)


def _fields(ra: Sequence[float], dec: Sequence[float], field_id: Sequence[int] | None = None,
            priority: Sequence[float] | None = None, kind: Sequence[str] | None = None, where: str = "catalogue") -> Fields:
    try:
        ra_a = np.asarray(ra, dtype=np.float64).reshape(-1)
        dec_a = np.asarray(dec, dtype=np.float64).reshape(-1)
        n = len(ra_a)
        ids = np.arange(n, dtype=np.int64) if field_id is None else np.asarray(field_id, dtype=np.int64).reshape(-1)
        prio = np.ones(n) if priority is None else np.asarray(priority, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise SimulatorError(f"{where}: ra, dec, field_id and priority must be numeric: {exc}") from exc
    kinds = np.full(n, "survey", dtype=object) if kind is None else np.asarray(list(kind), dtype=object)
    if n == 0:
        raise SimulatorError(f"{where}: no fields")
    if not (len(dec_a) == len(ids) == len(prio) == len(kinds) == n):
        raise SimulatorError(f"{where}: ra, dec, field_id, priority and class must have the same length")
    if not np.all(np.isfinite(ra_a) & np.isfinite(dec_a)) or np.any(np.abs(dec_a) > 90.0):
        raise SimulatorError(f"{where}: ra must be finite degrees and dec within [-90, 90]")
    if np.any(~np.isfinite(prio)) or np.any(prio < 0):
        raise SimulatorError(f"{where}: priority must be finite and >= 0")
    if len(np.unique(ids)) != n:
        raise SimulatorError(f"{where}: field_id values must be unique")
    return Fields(ids, np.remainder(ra_a, 360.0), dec_a, prio, kinds.astype(str))


def tiling(spacing: float = 3.5, dec_min: float = -90.0, dec_max: float = 90.0,
           ra_min: float = 0.0, ra_max: float = 360.0) -> Fields:
    """Rings of constant declination `spacing` degrees apart, each split into near-square fields; ra_min..ra_max kept."""
    if not 0.05 <= spacing <= 30.0:
        raise SimulatorError(f"catalogue.spacing must lie in [0.05, 30] degrees, got {spacing}")
    if not -90.0 <= dec_min < dec_max <= 90.0:
        raise SimulatorError(f"catalogue: need -90 <= dec_min < dec_max <= 90, got {dec_min}, {dec_max}")
    if not 0.0 <= ra_min < ra_max <= 360.0:
        raise SimulatorError(f"catalogue: need 0 <= ra_min < ra_max <= 360, got {ra_min}, {ra_max}")
    n_rings = max(1, int(math.ceil((dec_max - dec_min) / spacing)))
    step = (dec_max - dec_min) / n_rings
    ras, decs = [], []
    for k in range(n_rings):
        dec = dec_min + (k + 0.5) * step
        n = max(1, int(round(360.0 * math.cos(math.radians(dec)) / spacing)))
        ras.append((np.arange(n) + 0.5 * (k % 2)) * 360.0 / n)
        decs.append(np.full(n, dec))
    ra, dec = np.concatenate(ras), np.concatenate(decs)
    keep = (ra >= ra_min) & (ra <= ra_max)
    if not keep.any():
        raise SimulatorError(f"catalogue: no tiling field has ra in [{ra_min}, {ra_max}]")
    return _fields(ra[keep], dec[keep], where="catalogue tiling")


def read_csv(path: str | Path) -> Fields:
    """Fields from a CSV with columns ra, dec (degrees) and optional field_id (or id), class, priority."""
    path = Path(path)
    if not path.is_file():
        raise SimulatorError(f"catalogue: no such file {str(path)!r}")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"ra", "dec"} <= set(rows[0]):
        raise SimulatorError(f"catalogue {path.name}: needs a header with at least 'ra' and 'dec' columns and one row")
    cols = rows[0].keys()
    id_col = "field_id" if "field_id" in cols else ("id" if "id" in cols else None)
    return _fields(
        [r["ra"] for r in rows], [r["dec"] for r in rows],
        None if id_col is None else [r[id_col] for r in rows],
        [r["priority"] for r in rows] if "priority" in cols else None,
        [r["class"] for r in rows] if "class" in cols else None,
        where=f"catalogue {path.name}",
    )


def build_fields(spec: Any, dec_range: tuple[float, float]) -> Fields:
    """The `catalogue` option: a CSV path, {'file': path}, a tiling {spacing, dec_min, dec_max, ra_min, ra_max}
    (optionally under 'tiling') or explicit columns {'ra': [...], 'dec': [...], 'field_id', 'priority', 'class'}."""
    if spec is None:
        return tiling(3.5, *dec_range)
    if isinstance(spec, (str, Path)):
        return read_csv(spec)
    if not isinstance(spec, Mapping):
        raise SimulatorError(f"catalogue: expected a CSV path or a mapping, got {type(spec).__name__}")
    if "file" in spec:
        return read_csv(spec["file"])
    if "ra" in spec:
        unknown = set(spec) - {"ra", "dec", "field_id", "priority", "class"}
        if unknown:
            raise SimulatorError(f"catalogue: unknown keys {sorted(unknown)}")
        return _fields(spec["ra"], spec.get("dec", []), spec.get("field_id"), spec.get("priority"), spec.get("class"))
    tiling_spec = dict(spec.get("tiling", spec))
    unknown = set(tiling_spec) - {"spacing", "dec_min", "dec_max", "ra_min", "ra_max"}
    if unknown:
        raise SimulatorError(f"catalogue: unknown keys {sorted(unknown)}; a tiling takes spacing, dec_min, dec_max, ra_min, ra_max")
    try:
        return tiling(float(tiling_spec.get("spacing", 3.5)), float(tiling_spec.get("dec_min", dec_range[0])),
                      float(tiling_spec.get("dec_max", dec_range[1])), float(tiling_spec.get("ra_min", 0.0)),
                      float(tiling_spec.get("ra_max", 360.0)))
    except (TypeError, ValueError) as exc:
        raise SimulatorError(f"catalogue: tiling values must be numbers: {exc}") from exc


@dataclass
class Transients:
    """m transients: host field row, pixel position in the field's cutout, and light-curve parameters;
    `explosion` (MJD) is when each starts to shine (None: the Bazin curve alone, unbounded in the past)."""

    field: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    peak_mjd: torch.Tensor
    peak_mag: torch.Tensor
    rise: torch.Tensor
    fall: torch.Tensor
    kind: torch.Tensor
    explosion: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.field.numel())

    def magnitude(self, mjd: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """AB magnitude of transients `index` (all by default) at times `mjd` (broadcast with index); NO_FLUX_MAG
        before the explosion."""
        sel = (lambda v: v) if index is None else (lambda v: v[index])
        rise, fall = sel(self.rise), sel(self.fall)
        dt = mjd - sel(self.peak_mjd)
        to_peak = rise * torch.log(fall / rise - 1.0)
        s = dt + to_peak
        log_f = -s / fall - torch.nn.functional.softplus(-s / rise)
        log_peak = -to_peak / fall - torch.nn.functional.softplus(-to_peak / rise)
        mag = sel(self.peak_mag) - 2.5 / math.log(10.0) * (log_f - log_peak)
        if self.explosion is None:
            return mag
        return torch.where(mjd >= sel(self.explosion), mag, torch.full_like(mag, NO_FLUX_MAG))


def draw_transients(n: int, n_fields: int, weights: torch.Tensor, window: tuple[float, float],
                    generator: torch.Generator, peak_mag: tuple[float, float] = (18.5, 23.5)) -> Transients:
    """n transients in fields drawn with probability proportional to `weights`, peaking uniformly in `window` (MJD)."""
    g = generator
    w = weights.to(torch.float64).cpu()
    if n == 0 or float(w.sum()) <= 0:
        field = torch.zeros(0, dtype=torch.long)
    else:
        field = torch.multinomial(w / w.sum(), n, replacement=True, generator=g)
    m = int(field.numel())
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(m, generator=g, dtype=torch.float64)  # noqa: E731
    kind = (torch.rand(m, generator=g, dtype=torch.float64) >= _CLASS_WEIGHTS[0]).long()
    rise = torch.empty(m, dtype=torch.float64)
    fall = torch.empty(m, dtype=torch.float64)
    for k, name in enumerate(TRANSIENT_CLASSES):
        (r0, r1), (f0, f1) = _TIMESCALES[name]
        sel = kind == k
        rise[sel] = u(r0, r1)[sel]
        fall[sel] = u(f0, f1)[sel]
    peak_mjd, peak_mag_drawn = u(*window), u(*peak_mag)
    rise_time = torch.empty(m, dtype=torch.float64)
    for k, name in enumerate(TRANSIENT_CLASSES):
        rise_time[kind == k] = u(*_RISE_TIMES[name])[kind == k]
    return Transients(
        field=field, x=torch.zeros(m, dtype=torch.float64), y=torch.zeros(m, dtype=torch.float64),
        peak_mjd=peak_mjd, peak_mag=peak_mag_drawn, rise=rise, fall=fall, kind=kind, explosion=peak_mjd - rise_time,
    )
