"""Observatory sites and the astronomical night (Sun below -18 deg) at a site on a date."""
from __future__ import annotations

from dataclasses import dataclass
import math
from datetime import date, datetime, timedelta
from typing import Any, Mapping

import torch

from simulators.base import SimulatorError
from simulators.telescope import ephemeris

TWILIGHT_ALTITUDE = -18.0


@dataclass(frozen=True)
class Site:
    """An observatory: geodetic latitude and east-positive longitude in degrees, elevation in metres."""

    name: str
    latitude: float
    longitude: float
    elevation: float


SITES: dict[str, Site] = {
    "cerro_pachon": Site("cerro_pachon", -30.2446, -70.7494, 2663.0),
    "paranal": Site("paranal", -24.6272, -70.4042, 2635.0),
    "la_silla": Site("la_silla", -29.2563, -70.7380, 2400.0),
    "mauna_kea": Site("mauna_kea", 19.8206, -155.4681, 4205.0),
    "la_palma": Site("la_palma", 28.7606, -17.8816, 2396.0),
    "kitt_peak": Site("kitt_peak", 31.9583, -111.5967, 2096.0),
    "palomar": Site("palomar", 33.3563, -116.8650, 1712.0),
}


def resolve_site(spec: str | Mapping[str, Any] | Site) -> Site:
    """A Site from a name in SITES or a mapping {latitude, longitude, elevation[, name]}."""
    if isinstance(spec, Site):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace(" ", "_").replace("-", "_")
        if key not in SITES:
            raise SimulatorError(f"site: unknown name {spec!r}; expected one of {sorted(SITES)} "
                                 "or a mapping with latitude, longitude, elevation")
        return SITES[key]
    if isinstance(spec, Mapping):
        try:
            lat = float(spec["latitude"])
            lon = float(spec["longitude"])
            elev = float(spec.get("elevation", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise SimulatorError("site: a mapping needs numeric latitude and longitude (degrees) "
                                 f"and optional elevation (m): {exc}") from exc
        if not -90.0 <= lat <= 90.0:
            raise SimulatorError(f"site: latitude must lie in [-90, 90] degrees, got {lat}")
        if not -360.0 <= lon <= 360.0:
            raise SimulatorError(f"site: longitude must lie in [-360, 360] degrees, got {lon}")
        if not -500.0 <= elev <= 9000.0:
            raise SimulatorError(f"site: elevation must lie in [-500, 9000] m, got {elev}")
        return Site(str(spec.get("name", "custom")), lat, ((lon + 180.0) % 360.0) - 180.0, elev)
    raise SimulatorError(f"site: expected a name or a mapping, got {type(spec).__name__}")


def parse_date(value: str | date | datetime) -> date:
    """The local calendar date on whose evening a night starts."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return datetime.fromisoformat(str(value)).date()
    except ValueError as exc:
        raise SimulatorError(f"date: expected an ISO date such as '2025-03-20', got {value!r}") from exc


def sun_altitude(mjd: torch.Tensor, site: Site) -> torch.Tensor:
    """Altitude of the Sun in degrees at the site (float64)."""
    ra, dec = ephemeris.sun_position(mjd)
    lst = ephemeris.local_sidereal_time(mjd, site.longitude)
    return ephemeris.horizontal(lst - ra, dec, site.latitude)[0]


def local_noon(site: Site, day: date) -> float:
    """MJD of local mean noon (12:00 mean solar time at the site's longitude) on `day`."""
    return ephemeris.mjd_from_datetime(datetime(day.year, day.month, day.day, 12)) - site.longitude / 360.0


def night_bounds(site: Site, day: date, twilight: float = TWILIGHT_ALTITUDE) -> tuple[float, float]:
    """(evening, morning) MJD when the Sun crosses `twilight` degrees, for the night after local noon of `day`."""
    noon = local_noon(site, day)
    grid = noon + torch.arange(0, 24 * 60 + 1, dtype=torch.float64) / (24 * 60)
    below = sun_altitude(grid, site) < twilight
    if not bool(below.any()):
        raise SimulatorError(f"no astronomical night at latitude {site.latitude} on {day.isoformat()}: "
                             f"the Sun stays above {twilight} deg")
    first = int(torch.nonzero(below)[0])
    last = int(torch.nonzero(below)[-1])
    if first == 0 or last == grid.numel() - 1:
        raise SimulatorError(f"the night at latitude {site.latitude} on {day.isoformat()} has no twilight "
                             "(polar night); choose another date or site")

    def crossing(i: int, j: int) -> float:
        t = grid[[i, j]]
        a = sun_altitude(t, site) - twilight
        return float(t[0] + (t[1] - t[0]) * a[0] / (a[0] - a[1]))

    return crossing(first - 1, first), crossing(last, last + 1)


class Calendar:
    """Consecutive nights at a site from a start date: night k runs between the twilights after local noon of day k."""

    def __init__(self, site: Site, start: date, twilight: float = TWILIGHT_ALTITUDE):
        self.site = site
        self.start = start
        self.twilight = twilight
        self._nights: list[tuple[float, float]] = []
        self.noon0 = self.noon(0)
        self.night(0)

    def noon(self, k: int) -> float:
        """MJD of local mean noon on day k."""
        return local_noon(self.site, self.start + timedelta(days=k))

    def night(self, k: int) -> tuple[float, float]:
        """(evening, morning) twilight MJD of night k (0 = the first)."""
        while len(self._nights) <= k:
            day = self.start + timedelta(days=len(self._nights))
            self._nights.append(night_bounds(self.site, day, self.twilight))
        return self._nights[k]

    def index(self, mjd: float) -> int:
        """The night whose day (noon to noon) holds `mjd`."""
        return max(0, int(math.floor(mjd - self.noon0)))

    def fit(self, t: float, seconds: float) -> float:
        """Earliest time >= t at which `seconds` fit inside a night."""
        k = self.index(t)
        while True:
            evening, morning = self.night(k)
            start = max(t, evening)
            if start + seconds / 86400.0 <= morning:
                return start
            k += 1
