"""Fast simulation of a barrel silicon tracker in a solenoid, for tracker design studies.

A design is `layers` cylindrical pixel layers at radii r1 < r2 < ... (mm) inside an envelope, with
silicon sensors `thickness` um thick, square pixels of `pitch` um and a solenoid field of `field`
tesla, behind a beam pipe. Tracks are studied in the transverse (bending) plane at eta = 0 (theta =
90 deg, so p = pT); they start at the origin with phi0 = 0 and d0 = 0, which loses nothing because
the barrel is rotationally symmetric. Each design is scored by:

- ``pt_resolution_<p>GeV``: relative transverse-momentum resolution pT * sigma(1/pT), in percent;
- ``d0_resolution_<p>GeV`` and ``d0_resolution`` (at ``d0_momentum``): transverse impact-parameter
  resolution in um;
- ``material_budget``: summed x/X0 of the used layers (sensors + support) at normal incidence, in %;
- ``cost``: silicon area times ``cost_per_cm2`` plus pixel channels times ``cost_per_channel``, in
  millions of that currency (barrel layers are 2 r sinh(eta_max) long, so they cover |eta| < eta_max).

Two fidelities share one track model. ``analytic`` propagates the errors of the track fit to first
order in k*r (k the curvature): the measurement term generalises Gluckstern's formula to any layer
spacing, the multiple-scattering term propagates Highland angles through the same fit, and the two
add in quadrature; for d0 this is the familiar a + b / (p beta sin^(3/2) theta) in quadrature, with sin
theta = 1, a set by the hits' lever arms and b by scattering in the beam pipe and inner layers. ``montecarlo`` propagates batches of helices exactly through the layers, with
Gaussian Highland kicks and Gaussian hit smearing of pitch/sqrt(12), fits each track with a
non-iterative least-squares circle fit, and reports RMS residuals with their standard errors.

Both use a hit fit with equal weights per layer (no scattering correlations in the weights, as in
the textbook quadrature estimate); a Kalman fit would do somewhat better where scattering dominates.
Energy loss, the longitudinal view, sensor inefficiency and fake hits are not modelled.

References: R. L. Gluckstern, NIM 24 (1963) 381; V. L. Highland, NIM 129 (1975) 497; G. R. Lynch and
O. I. Dahl, NIM B58 (1991) 6; V. Karimaki, NIM A305 (1991) 187 (the circle parametrisation);
Particle Data Group, Rev. Part. Phys. (2024), sections "Passage of particles through matter" (eq.
34.16) and "Particle detectors at accelerators" (momentum and impact-parameter resolution).

Modules: `geometry` (the layout, its material and cost, the per-design track-model constants),
`analytic` (Highland scattering and the first-order fit errors), `montecarlo` (helices propagated and
fitted in batches), `checks` (option validation) and `simulator` (DetectorSimulator, the seam).
"""
from simulators.detector.analytic import fit_variances, highland_angle
from simulators.detector.geometry import TrackSetup, Tracker
from simulators.detector.montecarlo import fit_tracks
from simulators.detector.simulator import DetectorSimulator

__all__ = ["DetectorSimulator", "TrackSetup", "Tracker", "fit_tracks", "fit_variances", "highland_angle"]
