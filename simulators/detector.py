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
"""
from __future__ import annotations

import difflib
import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from simulators.base import SimResult, SimulatorError

GEV_PER_TESLA_METRE = 0.299792458
SILICON_X0_UM = 93_700.0
PION_MASS_GEV = 0.13957
FIDELITIES = ("analytic", "montecarlo")
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {"thickness": (50.0, 300.0), "pitch": (10.0, 100.0), "field": (0.5, 4.0)}
REACH_MARGIN = 1.1
_CHUNK_ELEMENTS = {"cpu": 1 << 16, "cuda": 1 << 22}


def highland_angle(x_over_x0: torch.Tensor, momentum: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """RMS plane scattering angle (rad) of a unit-charge particle of momentum p (GeV) after x/X0 of material.

    Highland's formula as revised by Lynch and Dahl (PDG eq. 34.16):
    theta0 = 13.6 MeV / (beta p) * sqrt(x/X0) * (1 + 0.038 ln(x / (X0 beta^2))), within 11 % for 1e-3 < x/X0 < 100.
    """
    x = x_over_x0.clamp_min(0.0)
    log_term = (1.0 + 0.038 * torch.log(x.clamp_min(1e-12) / beta**2)).clamp_min(0.0)
    return 0.0136 / (beta * momentum) * torch.sqrt(x) * log_term


def fit_variances(
    radii: torch.Tensor, weight: torch.Tensor, sigma: torch.Tensor, scatter_radii: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Variances of the fitted (phi0, k/2, d0) from hit smearing and from scattering, each C x 3.

    The hits y_i = a x_i + b r_i^2 + c (x_i ~ r_i to first order in k r) are fitted by least squares with
    weights `weight` (C x N, 0 for absent layers), giving the linear map G = (A^T W A)^-1 A^T W. Hit errors
    sigma (C,) give G G^T sigma^2, which for N equally spaced layers over a lever arm L is Gluckstern's
    sigma_k = (sigma / L^2) sqrt(720 (N-1)^3 / ((N-2) N (N+1) (N+2))) ~ (sigma / L^2) sqrt(720 / (N+4)).
    A kick of RMS theta_s (C x S) at radius s displaces hit i by theta_s (r_i - r_s) for r_i > r_s, so the
    scattering term is G M diag(theta^2) M^T G^T with M_is = max(r_i - r_s, 0).
    """
    ones = torch.ones_like(radii)
    design = torch.stack([radii, radii**2, ones], dim=-1)
    weighted = (design * weight.unsqueeze(-1)).transpose(-1, -2)
    gain = torch.linalg.solve(weighted @ design, weighted)
    var_meas = (gain**2).sum(-1) * sigma.unsqueeze(-1) ** 2
    lever = (radii.unsqueeze(-1) - scatter_radii.unsqueeze(-2)).clamp_min(0.0)
    var_ms = ((gain @ lever) * theta.unsqueeze(-2)).pow(2).sum(-1)
    return var_meas, var_ms


@dataclass
class TrackSetup:
    """Per-configuration constants of the track model (C configurations = designs x momenta), in metres."""

    radius: torch.Tensor  # C x S surfaces: the beam pipe (if any), then the layers (absent ones repeat the last)
    weight: torch.Tensor  # C x S: 1 for a measuring layer, 0 for the beam pipe and absent layers
    theta: torch.Tensor  # C x S: RMS scattering angle at each surface (0 where absent)
    sigma: torch.Tensor  # C x 1: hit resolution pitch / sqrt(12)
    curvature: torch.Tensor  # C x 1: true curvature k = 0.2998 B / pT (1/m)
    measuring: tuple[bool, ...] = field(init=False)  # surfaces where some configuration has a layer
    full: tuple[bool, ...] = field(init=False)  # surfaces where every configuration has a layer

    def __post_init__(self) -> None:
        self.measuring = tuple((self.weight > 0).any(0).tolist())
        self.full = tuple((self.weight == 1).all(0).tolist())

    def to(self, dtype: torch.dtype) -> "TrackSetup":
        return TrackSetup(*(t.to(dtype) for t in (self.radius, self.weight, self.theta, self.sigma, self.curvature)))


def fit_tracks(setup: TrackSetup, z_scatter: torch.Tensor, z_hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Propagate helices through the surfaces, scatter and smear them, and fit circles: (k, d0, phi0), each C x t.

    z_scatter and z_hit (S x t) are standard normals for t tracks, shared by all C configurations. With t the
    unit direction at the last point P and n its left normal, the helix obeys X.(n + k P) = P.n + k (|X|^2 +
    |P|^2) / 2; on the cylinder |X| = r this is solved for X without forming the radius 1/k, so stiff tracks
    lose no precision, and the direction at X is t + k rot90(X - P). The fit minimises sum w (y - a x - b r^2
    - c)^2 (the circle x^2 + y^2 + D x + E y + F = 0 divided through) and recovers curvature and impact
    parameter as Karimaki does: k = 2 kappa / sqrt(1 - 4 kappa delta), d0 = 2 delta / (1 + sqrt(1 - 4 kappa delta)).
    The sums see y - (k/2) r^2, which lies in the span of the fit and is added back to b, so the result is the
    same in exact arithmetic while float32 sums hold only the small deviations from the nominal track.
    """
    k = setup.curvature
    weight = setup.weight
    shape = (k.shape[0], z_scatter.shape[-1])
    px = py = ty = torch.zeros_like(k)
    tx = torch.ones_like(k)
    sx, sy, sxx, sxy, sxr, sry = (torch.zeros(shape, dtype=k.dtype, device=k.device) for _ in range(6))
    radius = setup.radius
    r2 = radius**2
    r_prev2 = torch.nn.functional.pad(r2[:, :-1], (1, 0))
    offset = 0.5 * k * (r2 + r_prev2)
    norm0, norm1 = 1.0 + k * k * r_prev2, 2.0 * k
    scale = 1.0 / radius
    r2w = r2 * weight
    smear = setup.sigma * scale
    nominal_y = 0.5 * k * r2
    measuring, full = setup.measuring, setup.full
    last = max(i for i, m in enumerate(measuring) if m)
    one = torch.ones((), dtype=k.dtype, device=k.device)
    for s in range(last + 1):
        pn = (py * tx).addcmul_(px, ty, value=-1.0)
        inv = torch.addcmul(norm0[:, s : s + 1], norm1, pn).rsqrt_()
        q = (pn + offset[:, s : s + 1]).mul_(inv).mul_(scale[:, s : s + 1])
        cq = torch.addcmul(one, q, q, value=-1.0).sqrt_()
        ax, ay = torch.addcmul(tx, k, py), torch.addcmul(ty, k, px, value=-1.0)
        ri = inv * radius[:, s : s + 1]
        x = (ax * cq).addcmul_(ay, q, value=-1.0).mul_(ri)
        y = (ax * q).addcmul_(ay, cq).mul_(ri)
        if measuring[s]:
            shift = z_hit[s] * smear[:, s : s + 1]
            mx, my = torch.addcmul(x, y, shift, value=-1.0), torch.addcmul(y - nominal_y[:, s : s + 1], x, shift)
            wx, wy = (mx, my) if full[s] else (weight[:, s : s + 1] * mx, weight[:, s : s + 1] * my)
            sx += wx
            sy += wy
            sxx.addcmul_(wx, mx)
            sxy.addcmul_(wx, my)
            sxr.addcmul_(r2w[:, s : s + 1], mx)
            sry.addcmul_(r2w[:, s : s + 1], my)
        if s == last:
            break
        tx, ty = torch.addcmul(tx, k, y - py, value=-1.0), torch.addcmul(ty, k, x - px)
        kick = z_scatter[s] * setup.theta[:, s : s + 1]
        keep = torch.addcmul(one, kick, kick, value=-0.5)
        tx, ty = (tx * keep).addcmul_(kick, ty, value=-1.0), (ty * keep).addcmul_(kick, tx)
        px, py = x, y
    total = weight.sum(1, keepdim=True)
    sr = r2w.sum(1, keepdim=True)
    c22 = (r2w * r2).sum(1, keepdim=True) - sr * sr / total
    mean_x, mean_y = sx / total, sy / total
    c11 = sxx - sx * mean_x
    c12 = sxr - sr * mean_x
    c1y = sxy - sx * mean_y
    c2y = sry - sr * mean_y
    det = c11 * c22 - c12 * c12
    a = (c22 * c1y - c12 * c2y) / det
    b = (c11 * c2y - c12 * c1y) / det
    c = mean_y - a * mean_x - b * (sr / total)
    b = b + 0.5 * k
    g = torch.rsqrt(1.0 + a * a)
    kappa, delta = b * g, c * g
    root = torch.sqrt(1.0 - 4.0 * kappa * delta)
    return 2.0 * kappa / root, 2.0 * delta / (1.0 + root), torch.atan(a)


def _momentum_label(p: float) -> str:
    return (f"{p:g}".replace(".", "p")) + "GeV"


class DetectorSimulator:
    """A barrel silicon tracker in a solenoid: resolutions, material and cost of a batch of designs per call."""

    name = "detector"

    def __init__(
        self,
        *,
        fidelity: str = "analytic",
        tracks: int = 10_000,
        momenta: Sequence[float] = (1.0, 10.0, 100.0),
        d0_momentum: float = 1.0,
        envelope: Sequence[float] = (30.0, 800.0),
        min_gap: float = 20.0,
        min_layers: int = 3,
        max_layers: int = 8,
        bounds: Mapping[str, Sequence[float]] | None = None,
        support_material: float = 0.2,
        beampipe: Sequence[float] | None = (20.0, 0.15),
        eta_max: float = 1.0,
        cost_per_cm2: float = 10.0,
        cost_per_channel: float = 2e-4,
        max_material: float = 5.0,
        mass: float = PION_MASS_GEV,
        seed: int = 0,
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        batch_elements: int | None = None,
        compile: bool = False,
        **unknown: Any,
    ):
        """Options: lengths in mm, materials in % of X0, momenta in GeV; see the module docstring for the physics.

        `tracks` Monte-Carlo tracks per design and momentum; `bounds` overrides the search ranges of thickness,
        pitch and field; `beampipe` is (radius mm, x/X0 %) or None; `dtype` is the Monte-Carlo float type;
        `batch_elements` caps designs x tracks propagated at once (memory against speed); `compile` fuses the
        Monte-Carlo kernel with torch.compile (several times faster once compiled; compiling takes a minute or more).
        """
        if unknown:
            known = [n for n in inspect.signature(type(self)).parameters if n != "unknown"]
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, known, 1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise SimulatorError(f"detector: unknown option {', '.join(hints)}; the options are {', '.join(known)}")
        if fidelity not in FIDELITIES:
            raise SimulatorError(f"option 'fidelity' must be one of {list(FIDELITIES)}, got {fidelity!r}")
        self.fidelity = fidelity
        self.tracks = _positive_int("tracks", tracks, minimum=10)
        self.momenta = _positive_floats("momenta", momenta)
        if len(set(self.momenta)) != len(self.momenta):
            raise SimulatorError(f"option 'momenta' must not repeat a value, got {list(momenta)}")
        self.d0_momentum = _positive_float("d0_momentum", d0_momentum)
        inner, outer = _positive_floats("envelope", envelope, length=2)
        if not inner < outer:
            raise SimulatorError(f"option 'envelope' must be (inner, outer) radii in mm with inner < outer, got {list(envelope)}")
        self.envelope = (inner, outer)
        self.min_gap = _non_negative("min_gap", min_gap)
        self.min_layers = _positive_int("min_layers", min_layers, minimum=3)
        self.max_layers = _positive_int("max_layers", max_layers, minimum=self.min_layers)
        if inner + (self.max_layers - 1) * self.min_gap > outer:
            raise SimulatorError(
                f"options 'min_gap' and 'max_layers': {self.max_layers} layers {self.min_gap:g} mm apart "
                f"do not fit in the envelope {list(self.envelope)} mm"
            )
        self.bounds = dict(DEFAULT_BOUNDS)
        for key, value in (bounds or {}).items():
            if key not in DEFAULT_BOUNDS:
                raise SimulatorError(f"option 'bounds' takes keys {sorted(DEFAULT_BOUNDS)}, got {key!r}")
            low, high = _positive_floats(f"bounds.{key}", value, length=2)
            if not low < high:
                raise SimulatorError(f"option 'bounds.{key}' must be [low, high] with 0 < low < high, got {list(value)}")
            self.bounds[key] = (low, high)
        self.support_material = _non_negative("support_material", support_material)
        if beampipe is None:
            self.beampipe = (0.0, 0.0)
        else:
            radius, material = _positive_floats("beampipe", beampipe, length=2, allow_zero=True)
            if radius == 0 and material > 0:
                raise SimulatorError(f"option 'beampipe': a beam pipe with material needs a radius > 0 mm, got {list(beampipe)}")
            if radius >= inner:
                raise SimulatorError(f"option 'beampipe': radius {radius:g} mm must be inside the envelope's inner radius {inner:g} mm")
            self.beampipe = (radius, material)
        self.eta_max = _positive_float("eta_max", eta_max)
        self.cost_per_cm2 = _non_negative("cost_per_cm2", cost_per_cm2)
        self.cost_per_channel = _non_negative("cost_per_channel", cost_per_channel)
        self.max_material = _positive_float("max_material", max_material)
        self.mass = _non_negative("mass", mass)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise SimulatorError(f"option 'device' must be 'cpu' or 'cuda[:n]', got {device!r}") from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SimulatorError("option 'device' is 'cuda' but torch sees no CUDA device; use device: cpu")
        if self.device.type not in _CHUNK_ELEMENTS:
            raise SimulatorError(f"option 'device' must be 'cpu' or 'cuda[:n]', got {device!r}")
        dtypes = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32, torch.float64: torch.float64}
        if not isinstance(dtype, (str, torch.dtype)) or dtype not in dtypes:
            raise SimulatorError(f"option 'dtype' must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = dtypes[dtype]
        self.batch_elements = _positive_int("batch_elements", batch_elements or _CHUNK_ELEMENTS[self.device.type])
        if not isinstance(compile, bool):
            raise SimulatorError(f"option 'compile' must be true or false, got {compile!r}")
        self._fit_tracks = torch.compile(fit_tracks, dynamic=True) if compile else fit_tracks
        slowest = min(self.momenta + [self.d0_momentum])
        reach = 2.0 * slowest / (GEV_PER_TESLA_METRE * self.bounds["field"][1]) * 1000.0
        if reach < REACH_MARGIN * outer:
            raise SimulatorError(
                f"option 'momenta' (or 'd0_momentum'): a {slowest:g} GeV track in {self.bounds['field'][1]:g} T "
                f"curls up within {reach:.0f} mm and "
                f"misses the outer envelope at {outer:g} mm; use momenta above "
                f"{REACH_MARGIN * GEV_PER_TESLA_METRE * self.bounds['field'][1] * outer / 2000.0:.3g} GeV or a lower field bound"
            )
        self.reset(seed)

    def reset(self, seed: int) -> None:
        """Restart the random stream, so a simulator with the same seed repeats its results."""
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise SimulatorError(f"option 'seed' must be an integer, got {seed!r}")
        self.seed = int(seed)
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)

    # description ---------------------------------------------------------------------------------

    def parameters(self) -> list[dict[str, Any]]:
        """The search space in the campaign file's shape; only r1..r<layers> of a design are used."""
        inner, outer = self.envelope
        specs: list[dict[str, Any]] = [{"name": "layers", "type": "integer", "low": self.min_layers, "high": self.max_layers}]
        for j in range(self.max_layers):
            low = inner + j * self.min_gap
            high = outer - (self.max_layers - 1 - j) * self.min_gap
            specs.append({"name": f"r{j + 1}", "type": "real", "low": low, "high": high})
        for name in ("thickness", "pitch", "field"):
            low, high = self.bounds[name]
            specs.append({"name": name, "type": "real", "low": low, "high": high, **({"log": True} if name != "field" else {})})
        return specs

    def constraints(self) -> list[str]:
        """Radii ordered with at least `min_gap` mm between neighbours, as linear constraints."""
        return [f"r{j + 1} - r{j} >= {self.min_gap:g}" for j in range(1, self.max_layers)]

    def objectives(self) -> list[dict[str, Any]]:
        return [
            {"metric": self._pt_metric(self.momenta[len(self.momenta) // 2]), "goal": "minimize"},
            {"metric": "d0_resolution", "goal": "minimize"},
            {"metric": "cost", "goal": "minimize"},
        ]

    def outcome_constraints(self) -> list[dict[str, Any]]:
        """Suggested outcome constraints: total material below `max_material` %."""
        return [{"metric": "material_budget", "op": "<=", "bound": self.max_material}]

    def metrics(self) -> list[str]:
        return (
            [self._pt_metric(p) for p in self.momenta]
            + [f"d0_resolution_{_momentum_label(p)}" for p in self.momenta]
            + ["d0_resolution", "material_budget", "cost"]
        )

    @staticmethod
    def _pt_metric(p: float) -> str:
        return f"pt_resolution_{_momentum_label(p)}"

    # evaluation ----------------------------------------------------------------------------------

    def evaluate(self, params: dict[str, torch.Tensor]) -> SimResult:
        """Metrics of b designs (each params[name] of shape (b,)); Monte-Carlo errors go to `sem`.

        Within one call every design sees the same random numbers, so a design's result does not depend
        on what else is in its batch, and differences between designs carry less noise.
        """
        design = self._designs(params)
        momenta = sorted(set(self.momenta) | {self.d0_momentum})
        setup = self._setup(design, momenta)
        b, m = design["field"].shape[0], len(momenta)
        if self.fidelity == "analytic":
            var_meas, var_ms = fit_variances(setup.radius, setup.weight, setup.sigma[:, 0], setup.radius, setup.theta)
            var = var_meas + var_ms
            pt = (100.0 * 2.0 * var[:, 1].sqrt() / setup.curvature[:, 0]).view(b, m)
            d0 = (1e6 * var[:, 2].sqrt()).view(b, m)
            pt_sem = d0_sem = None
        else:
            pt, pt_sem, d0, d0_sem = (v.view(b, m) for v in self._monte_carlo(setup))
        metrics: dict[str, torch.Tensor] = {}
        sem: dict[str, torch.Tensor] = {}
        column = {p: i for i, p in enumerate(momenta)}
        for p in self.momenta:
            metrics[self._pt_metric(p)] = pt[:, column[p]]
            metrics[f"d0_resolution_{_momentum_label(p)}"] = d0[:, column[p]]
        metrics["d0_resolution"] = d0[:, column[self.d0_momentum]]
        if pt_sem is not None:
            for p in self.momenta:
                sem[self._pt_metric(p)] = pt_sem[:, column[p]]
                sem[f"d0_resolution_{_momentum_label(p)}"] = d0_sem[:, column[p]]
            sem["d0_resolution"] = d0_sem[:, column[self.d0_momentum]]
        metrics["material_budget"], metrics["cost"] = self._material_and_cost(design)
        meta = {"fidelity": self.fidelity, **({"tracks": self.tracks} if self.fidelity == "montecarlo" else {})}
        return SimResult(metrics=metrics, sem=sem, metadata=[dict(meta, layers=int(n)) for n in design["layers"].tolist()])

    def simulate_tracks(self, design: Mapping[str, float], n_tracks: int, momentum: float = 10.0) -> dict[str, torch.Tensor]:
        """Fit `n_tracks` independent Monte-Carlo tracks of one design: fitted pt (GeV), curvature (1/m), d0 (um), phi0."""
        n_tracks = _positive_int("n_tracks", n_tracks)
        momentum = _positive_float("momentum", momentum)
        one = self._designs({k: torch.as_tensor([float(v)], dtype=torch.float64, device=self.device) for k, v in design.items()})
        setup = self._setup(one, [momentum]).to(self.dtype)
        surfaces = setup.radius.shape[1]
        curvature = torch.empty(n_tracks, dtype=self.dtype, device=self.device)
        d0, phi0 = torch.empty_like(curvature), torch.empty_like(curvature)
        for start in range(0, n_tracks, self.batch_elements):
            t = min(self.batch_elements, n_tracks - start)
            z = torch.randn((2, surfaces, t), generator=self._generator, dtype=self.dtype, device=self.device)
            k, d, f = self._fit_tracks(setup, z[0], z[1])
            curvature[start : start + t], d0[start : start + t], phi0[start : start + t] = k[0], d[0], f[0]
        b_field = float(one["field"][0])
        return {"pt": GEV_PER_TESLA_METRE * b_field / curvature, "curvature": curvature, "d0": 1e6 * d0, "phi0": phi0}

    # internals -----------------------------------------------------------------------------------

    def _monte_carlo(self, setup: TrackSetup) -> tuple[torch.Tensor, ...]:
        """RMS relative curvature error (%) and RMS d0 (um) per configuration, each with its standard error."""
        setup = setup.to(self.dtype)
        configs, surfaces = setup.radius.shape
        z = torch.randn((2, surfaces, self.tracks), generator=self._generator, dtype=self.dtype, device=self.device)
        moments = torch.zeros((4, configs), dtype=torch.float64, device=self.device)
        step = max(1, self.batch_elements // configs)
        for start in range(0, self.tracks, step):
            k, d0, _ = self._fit_tracks(setup, z[0, :, start : start + step], z[1, :, start : start + step])
            for i, err in enumerate(((k / setup.curvature - 1.0).double() * 100.0, d0.double() * 1e6)):
                sq = err * err
                moments[2 * i] += sq.sum(1)
                moments[2 * i + 1] += (sq * sq).sum(1)
        out = []
        for i in range(2):
            m2, m4 = moments[2 * i] / self.tracks, moments[2 * i + 1] / self.tracks
            rms = m2.sqrt()
            out += [rms, (m4 - m2 * m2).clamp_min(0.0).sqrt() / (2.0 * rms * math.sqrt(self.tracks))]
        return tuple(out)

    def _designs(self, params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Validated designs as float64 tensors on the device: layers (b,), radii b x max_layers (m), etc."""
        names = ["layers", "thickness", "pitch", "field"]
        radius_names = [f"r{j + 1}" for j in range(self.max_layers)]
        unknown = sorted(set(params) - set(names) - set(radius_names))
        if unknown:
            raise SimulatorError(
                f"detector: unknown parameters {unknown}; expected layers, r1..r{self.max_layers}, thickness, pitch, field"
            )
        missing = [n for n in names if n not in params]
        if missing:
            raise SimulatorError(f"detector: missing parameters {missing}")
        values = {n: self._column(n, params[n]) for n in names}
        b = max(v.shape[0] for v in values.values())
        values = {n: self._broadcast(n, v, b) for n, v in values.items()}
        layers = values["layers"]
        bad = ((layers - layers.round()).abs() > 1e-6) | (layers < self.min_layers - 0.5) | (layers > self.max_layers + 0.5)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise SimulatorError(
                f"design {i}: layers must be a whole number in [{self.min_layers}, {self.max_layers}], got {float(layers[i]):g}"
            )
        used = int(layers.max())
        missing = [n for n in radius_names[:used] if n not in params]
        if missing:
            raise SimulatorError(f"detector: missing parameters {missing} for designs with {used} layers")
        unused = torch.zeros(b, dtype=torch.float64, device=self.device)
        radii = torch.stack(
            [self._broadcast(n, self._column(n, params[n]), b) if j < used else unused for j, n in enumerate(radius_names)], dim=1
        )
        n_used = layers.round().long()
        values["layers"] = n_used.to(torch.float64)
        active = torch.arange(self.max_layers, device=self.device) < n_used.unsqueeze(1)
        inner, outer = self.envelope
        tol = 1e-6 * outer
        outside = active & ((radii < inner - tol) | (radii > outer + tol))
        if outside.any():
            i, j = (int(v) for v in outside.nonzero()[0])
            raise SimulatorError(
                f"design {i}: r{j + 1} = {float(radii[i, j]):g} mm is outside the envelope [{inner:g}, {outer:g}] mm"
            )
        gaps = radii[:, 1:] - radii[:, :-1]
        close = active[:, 1:] & (gaps < self.min_gap - tol)
        if close.any():
            i, j = (int(v) for v in close.nonzero()[0])
            raise SimulatorError(
                f"design {i}: r{j + 2} - r{j + 1} = {float(gaps[i, j]):g} mm; "
                f"layers must be ordered at least min_gap = {self.min_gap:g} mm apart"
            )
        for n, what in (("thickness", "um"), ("pitch", "um"), ("field", "T")):
            bad = values[n] <= 0
            if bad.any():
                i = int(bad.nonzero()[0])
                raise SimulatorError(f"design {i}: {n} must be > 0 {what}, got {float(values[n][i]):g}")
        last = radii.gather(1, (n_used - 1).unsqueeze(1))
        values["radii"] = torch.where(active, radii, last) / 1000.0
        values["active"] = active
        return values

    def _column(self, name: str, value: Any) -> torch.Tensor:
        try:
            column = torch.as_tensor(value, dtype=torch.float64, device=self.device).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise SimulatorError(f"detector: parameter {name!r} must be numbers, got {value!r}") from exc
        if column.numel() == 0 or not torch.isfinite(column).all():
            raise SimulatorError(f"detector: parameter {name!r} must hold finite numbers, got {value!r}")
        return column

    @staticmethod
    def _broadcast(name: str, column: torch.Tensor, b: int) -> torch.Tensor:
        if column.shape[0] not in (1, b):
            raise SimulatorError(f"detector: parameter {name!r} has {column.shape[0]} values but the batch has {b} designs")
        return column.expand(b)

    def _check_reach(self, design: dict[str, torch.Tensor], momenta: Sequence[float]) -> None:
        reach = 2.0 * min(momenta) / (GEV_PER_TESLA_METRE * design["field"])
        short = reach < REACH_MARGIN * design["radii"][:, -1]
        if short.any():
            i = int(short.nonzero()[0])
            raise SimulatorError(
                f"design {i}: a {min(momenta):g} GeV track in {float(design['field'][i]):g} T curls up within "
                f"{1000 * float(reach[i]):.0f} mm and misses the outer layer at {1000 * float(design['radii'][i, -1]):.0f} mm"
            )

    def _setup(self, design: dict[str, torch.Tensor], momenta: Sequence[float]) -> TrackSetup:
        """Track-model constants for every (design, momentum) pair, designs major, in float64."""
        self._check_reach(design, momenta)
        b, m = design["field"].shape[0], len(momenta)
        p = torch.as_tensor(momenta, dtype=torch.float64, device=self.device).repeat(b)
        expand = lambda t: t.repeat_interleave(m, dim=0)  # noqa: E731
        radii, active = expand(design["radii"]), expand(design["active"])
        b_field, thickness, pitch = expand(design["field"]), expand(design["thickness"]), expand(design["pitch"])
        curvature = GEV_PER_TESLA_METRE * b_field / p
        layer_x0 = (thickness / SILICON_X0_UM + self.support_material / 100.0).unsqueeze(1) * active
        weight = active.to(radii.dtype)
        pipe_r, pipe_x0 = self.beampipe
        if pipe_r > 0:
            pipe = torch.ones_like(radii[:, :1])
            radius = torch.cat([pipe * (pipe_r / 1000.0), radii], dim=1)
            x_over_x0 = torch.cat([pipe * (pipe_x0 / 100.0), layer_x0], dim=1)
            weight = torch.cat([pipe * 0.0, weight], dim=1)
        else:
            radius, x_over_x0 = radii, layer_x0
        crossing = (0.5 * curvature.unsqueeze(1) * radius).clamp(max=1.0)
        path = x_over_x0 / torch.sqrt(1.0 - crossing**2)
        beta = p / torch.sqrt(p**2 + self.mass**2)
        theta = highland_angle(path, p.unsqueeze(1), beta.unsqueeze(1))
        sigma = (pitch * 1e-6 / math.sqrt(12.0)).unsqueeze(1)
        return TrackSetup(radius, weight, theta, sigma, curvature.unsqueeze(1))

    def _material_and_cost(self, design: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Material budget (% X0 of the used layers) and cost (millions) of each design."""
        active = design["active"].to(torch.float64)
        per_layer = design["thickness"] / SILICON_X0_UM * 100.0 + self.support_material
        material = per_layer * active.sum(1)
        r_cm = design["radii"] * 100.0
        area = (2.0 * math.pi * r_cm * 2.0 * r_cm * math.sinh(self.eta_max) * active).sum(1)
        channels = area / (design["pitch"] * 1e-4) ** 2
        return material, (area * self.cost_per_cm2 + channels * self.cost_per_channel) / 1e6


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    whole = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and value == int(value)
    if not whole or value < minimum:
        raise SimulatorError(f"option {name!r} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise SimulatorError(f"option {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise SimulatorError(f"option {name!r} must be a finite number > 0, got {value!r}")
    return float(value)


def _positive_floats(name: str, values: Any, length: int | None = None, allow_zero: bool = False) -> list[float]:
    """A list of finite positive numbers (non-negative with allow_zero), optionally of a given length."""
    shape = f"a list of {length} numbers" if length else "a list of numbers"
    listed = isinstance(values, Sequence) and not isinstance(values, (str, bytes)) and len(values) > 0
    if not listed or (length is not None and len(values) != length):
        raise SimulatorError(f"option {name!r} must be {shape}, got {values!r}")
    out = []
    for v in values:
        ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
        if not ok:
            raise SimulatorError(f"option {name!r} must hold finite numbers {'>= 0' if allow_zero else '> 0'}, got {values!r}")
        out.append(float(v))
    return out
