"""A device factory for examples/beamline_ophyd.yaml: ophyd's simulated motors and a Gaussian detector.

A facility writes the same kind of function (`mybeamline.devices:make`) returning its own ophyd
devices; aec only needs a dict {name: device} whose devices follow bluesky's Movable/Readable protocols.
"""
from __future__ import annotations

from typing import Any

from ophyd.sim import SynAxis, SynGauss


def make(center: float = 0.3, sigma: float = 0.25, noise: float = 0.0) -> dict[str, Any]:
    """A slit motor, a mirror pitch motor and a detector peaked at (center, -center)."""
    slit = SynAxis(name="slit", labels={"motors"})
    pitch = SynAxis(name="pitch", labels={"motors"})
    det = SynGauss("det", slit, "slit", center=center, Imax=100.0, sigma=sigma,
                   noise="uniform" if noise else "none", noise_multiplier=noise, labels={"detectors"})
    flux = SynGauss("flux", pitch, "pitch", center=-center, Imax=1.0, sigma=2 * sigma, labels={"detectors"})
    return {"slit": slit, "pitch": pitch, "det": det, "flux": flux}
