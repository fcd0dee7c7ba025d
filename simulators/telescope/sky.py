"""Sky brightness, delivered seeing and the 5-sigma limiting magnitude of a point source.

Sky: the dark sky of the band brightened toward the horizon (Krisciunas & Schaefer 1991, eq. 2),
plus scattered moonlight (their V-band model: phase, Moon-target separation, both airmasses)
and a twilight term that grows by one magnitude per degree of Sun altitude above -18 deg; the last
two are solar-coloured, so they brighten blue bands by more magnitudes than red ones.
Depth: the LSST formula (Ivezic et al. 2019, eq. 6) with its per-band constants, less the
transparency lost to cloud.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_RAD = math.pi / 180.0


@dataclass(frozen=True)
class Band:
    """A filter: effective wavelength (nm), depth constant Cm, dark zenith sky (mag/arcsec^2), extinction (mag/airmass)."""

    name: str
    wavelength: float
    cm: float
    sky_dark: float
    extinction: float


BANDS: dict[str, Band] = {
    "u": Band("u", 367.0, 23.09, 22.99, 0.491),
    "g": Band("g", 482.0, 24.42, 22.26, 0.213),
    "r": Band("r", 622.0, 24.44, 21.20, 0.126),
    "i": Band("i", 755.0, 24.32, 20.48, 0.096),
    "z": Band("z", 869.0, 24.16, 19.60, 0.069),
    "y": Band("y", 971.0, 23.73, 18.61, 0.170),
}

REFERENCE_APERTURE = 6.42
_K_V = 0.172
_TWILIGHT_AT_18 = 24.95


def nanolambert(mag: torch.Tensor) -> torch.Tensor:
    """Surface brightness in nanolamberts from mag/arcsec^2."""
    return 34.08 * torch.exp(20.7233 - 0.92104 * mag)


def mag_from_nanolambert(b: torch.Tensor) -> torch.Tensor:
    """mag/arcsec^2 from nanolamberts."""
    return (20.7233 - torch.log(b / 34.08)) / 0.92104


def scattering_airmass(altitude: torch.Tensor) -> torch.Tensor:
    """Krisciunas & Schaefer's airmass for scattered light, finite (10.2) at the horizon."""
    zenith = (90.0 - altitude.clamp(min=0.0)) * _RAD
    return (1.0 - 0.96 * torch.sin(zenith) ** 2).rsqrt()


def moonlight(separation: torch.Tensor, moon_altitude: torch.Tensor, phase_angle: torch.Tensor,
              target_altitude: torch.Tensor) -> torch.Tensor:
    """Scattered moonlight in nanolamberts (V); zero while the Moon is below the horizon."""
    alpha = phase_angle.abs()
    illuminance = 10.0 ** (-0.4 * (3.84 + 0.026 * alpha + 4e-9 * alpha**4))
    rho = separation.clamp(min=1.0)
    scatter = 10.0**5.36 * (1.06 + torch.cos(rho * _RAD) ** 2) + 10.0 ** (6.15 - rho / 40.0)
    x_moon = scattering_airmass(moon_altitude)
    x_target = scattering_airmass(target_altitude)
    b = scatter * illuminance * 10.0 ** (-0.4 * _K_V * x_moon) * (1.0 - 10.0 ** (-0.4 * _K_V * x_target))
    return torch.where(moon_altitude > 0.0, b, torch.zeros_like(b))


def twilight(sun_altitude: torch.Tensor, target_altitude: torch.Tensor) -> torch.Tensor:
    """Twilight sky in nanolamberts: one magnitude brighter per degree of Sun altitude above -18."""
    mag = _TWILIGHT_AT_18 - (sun_altitude + 18.0).clamp(max=12.0)
    return nanolambert(mag) * scattering_airmass(target_altitude).sqrt()


def sky_brightness(band: Band, altitude: torch.Tensor, moon_separation: torch.Tensor, moon_altitude: torch.Tensor,
                   phase_angle: torch.Tensor, sun_altitude: torch.Tensor) -> torch.Tensor:
    """Sky surface brightness in mag/arcsec^2 at the target (smaller = brighter)."""
    x = scattering_airmass(altitude)
    dark = nanolambert(torch.full_like(x, band.sky_dark)) * 10.0 ** (-0.4 * band.extinction * (x - 1.0)) * x
    extra = moonlight(moon_separation, moon_altitude, phase_angle, altitude) + twilight(sun_altitude, altitude)
    return mag_from_nanolambert(dark + extra)


def delivered_seeing(band: Band, seeing_zenith: torch.Tensor, airmass: torch.Tensor, system: float = 0.4) -> torch.Tensor:
    """Image FWHM in arcsec: atmosphere (500 nm zenith seeing scaled by X^0.6 and wavelength^-0.2) plus optics."""
    atmosphere = seeing_zenith * airmass**0.6 * (band.wavelength / 500.0) ** -0.2
    return torch.sqrt(atmosphere**2 + system**2)


def limiting_magnitude(band: Band, sky: torch.Tensor, seeing: torch.Tensor, airmass: torch.Tensor,
                       exposure: torch.Tensor | float, cloud_loss: torch.Tensor | float = 0.0,
                       aperture: float = REFERENCE_APERTURE) -> torch.Tensor:
    """5-sigma point-source depth (AB mag) for a background-limited exposure of `exposure` seconds."""
    exposure = torch.as_tensor(exposure, dtype=sky.dtype, device=sky.device)
    return (band.cm + 2.5 * math.log10(aperture / REFERENCE_APERTURE) + 0.5 * (sky - 21.0)
            + 2.5 * torch.log10(0.7 / seeing) + 1.25 * torch.log10(exposure / 30.0)
            - band.extinction * (airmass - 1.0) - cloud_loss)


def point_source_snr(magnitude: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise of a point source of `magnitude` in an exposure of 5-sigma depth `depth`."""
    return 5.0 * 10.0 ** (-0.4 * (magnitude - depth))
