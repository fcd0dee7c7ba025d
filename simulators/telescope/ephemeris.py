"""Low-precision positional astronomy in torch: sidereal time, precession, Sun, Moon, alt/az, airmass.

Every function broadcasts over its tensor arguments, so one call handles all targets at one time,
one target at many times, or b (target, time) pairs. Times are MJD (UTC) in float64; UT1 - UTC and
TT - UTC are ignored, as are nutation, aberration and refraction (together < 0.02 deg). Angles go
in and come out in degrees. Formulas: IAU 1982 GMST, Lieske (1977) precession angles, and the
Astronomical Almanac's low-precision Sun (~0.01 deg) and Moon (~0.3 deg) series.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import torch

MJD_J2000 = 51544.5
_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=timezone.utc)
_RAD = math.pi / 180.0


def mjd_from_datetime(when: datetime) -> float:
    """MJD of a datetime (naive means UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - _MJD_EPOCH).total_seconds() / 86400.0


def datetime_from_mjd(mjd: float) -> datetime:
    """UTC datetime of an MJD."""
    return _MJD_EPOCH + timedelta(days=float(mjd))


def _centuries(mjd: torch.Tensor) -> torch.Tensor:
    return (mjd - MJD_J2000) / 36525.0


def _sind(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x * _RAD)


def _cosd(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(x * _RAD)


def gmst(mjd: torch.Tensor) -> torch.Tensor:
    """Greenwich mean sidereal time in degrees [0, 360) (IAU 1982, UT1 taken as UTC)."""
    d = mjd.to(torch.float64) - MJD_J2000
    t = d / 36525.0
    theta = 280.46061837 + 360.98564736629 * d + 0.000387933 * t * t - t * t * t / 38710000.0
    return torch.remainder(theta, 360.0)


def local_sidereal_time(mjd: torch.Tensor, longitude: float) -> torch.Tensor:
    """Local mean sidereal time in degrees for an east-positive longitude."""
    return torch.remainder(gmst(mjd) + longitude, 360.0)


def unit_vector(ra: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    """Cartesian unit vectors (..., 3) of spherical angles in degrees."""
    cd = _cosd(dec)
    return torch.stack([cd * _cosd(ra), cd * _sind(ra), _sind(dec)], dim=-1)


def spherical(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ra in [0, 360), dec) in degrees of vectors (..., 3)."""
    x, y, z = v.unbind(-1)
    ra = torch.remainder(torch.rad2deg(torch.atan2(y, x)), 360.0)
    dec = torch.rad2deg(torch.atan2(z, torch.sqrt(x * x + y * y)))
    return ra, dec


def precession_matrix(mjd: float) -> torch.Tensor:
    """3 x 3 float64 rotation from J2000 (ICRS) to the mean equator and equinox of date."""
    t = (float(mjd) - MJD_J2000) / 36525.0
    zeta = (2306.2181 * t + 0.30188 * t**2 + 0.017998 * t**3) / 3600.0 * _RAD
    z = (2306.2181 * t + 1.09468 * t**2 + 0.018203 * t**3) / 3600.0 * _RAD
    theta = (2004.3109 * t - 0.42665 * t**2 - 0.041833 * t**3) / 3600.0 * _RAD

    def r3(a: float) -> torch.Tensor:
        c, s = math.cos(a), math.sin(a)
        return torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)

    def r2(a: float) -> torch.Tensor:
        c, s = math.cos(a), math.sin(a)
        return torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]], dtype=torch.float64)

    return r3(-z) @ r2(theta) @ r3(-zeta)


def precess(ra: torch.Tensor, dec: torch.Tensor, mjd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """J2000 (ICRS) coordinates to the mean equinox of date, in degrees, same dtype and device."""
    p = precession_matrix(mjd).to(device=ra.device, dtype=ra.dtype)
    return spherical(unit_vector(ra, dec) @ p.T)


def obliquity(mjd: torch.Tensor) -> torch.Tensor:
    """Mean obliquity of the ecliptic in degrees."""
    return 23.439291 - 0.0130042 * _centuries(mjd)


def _ecliptic_to_equatorial(lon: torch.Tensor, lat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    v = unit_vector(lon, lat)
    x, y, z = v.unbind(-1)
    ce, se = _cosd(eps), _sind(eps)
    return torch.stack([x, ce * y - se * z, se * y + ce * z], dim=-1)


def sun_position(mjd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apparent-enough (ra, dec) of the Sun, equinox of date, in degrees."""
    mjd = mjd.to(torch.float64)
    n = mjd - MJD_J2000
    mean_lon = 280.460 + 0.9856474 * n
    anomaly = 357.528 + 0.9856003 * n
    lon = mean_lon + 1.915 * _sind(anomaly) + 0.020 * _sind(2.0 * anomaly)
    return spherical(_ecliptic_to_equatorial(lon, torch.zeros_like(lon), obliquity(mjd)))


_MOON_LON = ((6.29, 135.0, 477198.87), (-1.27, 259.3, -413335.36), (0.66, 235.7, 890534.22),
             (0.21, 269.9, 954397.74), (-0.19, 357.5, 35999.05), (-0.11, 186.5, 966404.03))
_MOON_LAT = ((5.13, 93.3, 483202.02), (0.28, 228.2, 960400.89), (-0.28, 318.3, 6003.15),
             (-0.17, 217.6, -407332.21))
_MOON_PAR = ((0.0518, 135.0, 477198.87), (0.0095, 259.3, -413335.36), (0.0078, 235.7, 890534.22),
             (0.0028, 269.9, 954397.74))


def moon_vector(mjd: torch.Tensor) -> torch.Tensor:
    """Geocentric Moon position (..., 3) in Earth radii, equator and equinox of date."""
    mjd = mjd.to(torch.float64)
    t = _centuries(mjd)
    lon = 218.32 + 481267.881 * t
    for amp, phase, rate in _MOON_LON:
        lon = lon + amp * _sind(phase + rate * t)
    lat = torch.zeros_like(t)
    for amp, phase, rate in _MOON_LAT:
        lat = lat + amp * _sind(phase + rate * t)
    parallax = 0.9508 + torch.zeros_like(t)
    for amp, phase, rate in _MOON_PAR:
        parallax = parallax + amp * _cosd(phase + rate * t)
    distance = 1.0 / _sind(parallax)
    return _ecliptic_to_equatorial(lon, lat, obliquity(mjd)) * distance.unsqueeze(-1)


def observer_vector(lst: torch.Tensor, latitude: float, elevation: float) -> torch.Tensor:
    """Geocentric observer position (..., 3) in Earth radii, equator of date, at local sidereal time lst."""
    u = math.atan(0.996647189 * math.tan(latitude * _RAD))
    h = elevation / 6378140.0
    rho_sin = 0.996647189 * math.sin(u) + h * math.sin(latitude * _RAD)
    rho_cos = math.cos(u) + h * math.cos(latitude * _RAD)
    return torch.stack([rho_cos * _cosd(lst), rho_cos * _sind(lst), torch.full_like(lst, rho_sin)], dim=-1)


def moon_position(mjd: torch.Tensor, lst: torch.Tensor, latitude: float, elevation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Topocentric (ra, dec) of the Moon in degrees, equinox of date."""
    v = moon_vector(mjd) - observer_vector(lst.to(torch.float64), latitude, elevation)
    return spherical(v)


def moon_phase_angle(mjd: torch.Tensor) -> torch.Tensor:
    """Sun-Moon-Earth angle in degrees (0 = full Moon, 180 = new Moon)."""
    moon = moon_vector(mjd)
    sun_ra, sun_dec = sun_position(mjd)
    sun = unit_vector(sun_ra, sun_dec) * 23455.0
    distance = moon.norm(dim=-1)
    cos_elong = (moon * sun).sum(-1) / (distance * sun.norm(dim=-1))
    elong = torch.acos(cos_elong.clamp(-1.0, 1.0))
    phase = torch.atan2(23455.0 * torch.sin(elong), distance - 23455.0 * torch.cos(elong))
    return torch.rad2deg(phase)


def illuminated_fraction(phase_angle: torch.Tensor) -> torch.Tensor:
    """Fraction of the Moon's disc that is lit."""
    return 0.5 * (1.0 + _cosd(phase_angle))


def horizontal(hour_angle: torch.Tensor, dec: torch.Tensor, latitude: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(altitude, azimuth) in degrees from hour angle and declination; azimuth from north through east."""
    sl, cl = math.sin(latitude * _RAD), math.cos(latitude * _RAD)
    sd, cd = _sind(dec), _cosd(dec)
    ch = _cosd(hour_angle)
    alt = torch.rad2deg(torch.asin((sl * sd + cl * cd * ch).clamp(-1.0, 1.0)))
    az = torch.rad2deg(torch.atan2(-cd * _sind(hour_angle), sd * cl - cd * sl * ch))
    return alt, torch.remainder(az, 360.0)


def wrap180(angle: torch.Tensor) -> torch.Tensor:
    """Angle folded into [-180, 180)."""
    return torch.remainder(angle + 180.0, 360.0) - 180.0


def airmass(altitude: torch.Tensor) -> torch.Tensor:
    """Kasten & Young (1989) relative air mass, finite down to the horizon (capped at 40 below it)."""
    h = altitude.clamp(min=0.0)
    x = 1.0 / (_sind(h) + 0.50572 * (h + 6.07995) ** -1.6364)
    return x.clamp(max=40.0)


def separation(ra1: torch.Tensor, dec1: torch.Tensor, ra2: torch.Tensor, dec2: torch.Tensor) -> torch.Tensor:
    """Great-circle angle in degrees (haversine, accurate at small and large angles)."""
    s = _sind((dec2 - dec1) / 2.0) ** 2 + _cosd(dec1) * _cosd(dec2) * _sind((ra2 - ra1) / 2.0) ** 2
    return torch.rad2deg(2.0 * torch.asin(s.clamp(0.0, 1.0).sqrt()))
