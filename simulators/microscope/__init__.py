"""Scanning spectral microscope over specimens built from real images (see `simulator` for the physics)."""
from simulators.microscope.sample import IMAGES, Sample, build_sample
from simulators.microscope.simulator import MicroscopeSimulator

__all__ = ["IMAGES", "MicroscopeSimulator", "Sample", "build_sample"]
