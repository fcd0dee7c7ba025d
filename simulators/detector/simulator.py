"""DetectorSimulator: a batch of tracker designs in, resolutions, material budget and cost out (physics: the package docstring)."""
from __future__ import annotations

import difflib
import inspect
import numbers
from typing import Any, Mapping, Sequence

import torch

from simulators.base import SimResult, SimulatorError
from simulators.detector.analytic import fit_variances
from simulators.detector.checks import non_negative, positive_float, positive_floats, positive_int
from simulators.detector.geometry import GEV_PER_TESLA_METRE, PION_MASS_GEV, REACH_MARGIN, Tracker
from simulators.detector.montecarlo import fit_tracks, resolution_moments

FIDELITIES = ("analytic", "montecarlo")
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {"thickness": (50.0, 300.0), "pitch": (10.0, 100.0), "field": (0.5, 4.0)}
_CHUNK_ELEMENTS = {"cpu": 1 << 16, "cuda": 1 << 22}


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
        self.tracks = positive_int("tracks", tracks, minimum=10)
        self.momenta = positive_floats("momenta", momenta)
        if len(set(self.momenta)) != len(self.momenta):
            raise SimulatorError(f"option 'momenta' must not repeat a value, got {list(momenta)}")
        self.d0_momentum = positive_float("d0_momentum", d0_momentum)
        inner, outer = positive_floats("envelope", envelope, length=2)
        if not inner < outer:
            raise SimulatorError(f"option 'envelope' must be (inner, outer) radii in mm with inner < outer, got {list(envelope)}")
        self.envelope = (inner, outer)
        self.min_gap = non_negative("min_gap", min_gap)
        self.min_layers = positive_int("min_layers", min_layers, minimum=3)
        self.max_layers = positive_int("max_layers", max_layers, minimum=self.min_layers)
        if inner + (self.max_layers - 1) * self.min_gap > outer:
            raise SimulatorError(
                f"options 'min_gap' and 'max_layers': {self.max_layers} layers {self.min_gap:g} mm apart "
                f"do not fit in the envelope {list(self.envelope)} mm"
            )
        self.bounds = dict(DEFAULT_BOUNDS)
        for key, value in (bounds or {}).items():
            if key not in DEFAULT_BOUNDS:
                raise SimulatorError(f"option 'bounds' takes keys {sorted(DEFAULT_BOUNDS)}, got {key!r}")
            low, high = positive_floats(f"bounds.{key}", value, length=2)
            if not low < high:
                raise SimulatorError(f"option 'bounds.{key}' must be [low, high] with 0 < low < high, got {list(value)}")
            self.bounds[key] = (low, high)
        self.support_material = non_negative("support_material", support_material)
        if beampipe is None:
            self.beampipe = (0.0, 0.0)
        else:
            radius, material = positive_floats("beampipe", beampipe, length=2, allow_zero=True)
            if radius == 0 and material > 0:
                raise SimulatorError(f"option 'beampipe': a beam pipe with material needs a radius > 0 mm, got {list(beampipe)}")
            if radius >= inner:
                raise SimulatorError(f"option 'beampipe': radius {radius:g} mm must be inside the envelope's inner radius {inner:g} mm")
            self.beampipe = (radius, material)
        self.eta_max = positive_float("eta_max", eta_max)
        self.cost_per_cm2 = non_negative("cost_per_cm2", cost_per_cm2)
        self.cost_per_channel = non_negative("cost_per_channel", cost_per_channel)
        self.max_material = positive_float("max_material", max_material)
        self.mass = non_negative("mass", mass)
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
        self.batch_elements = positive_int("batch_elements", batch_elements or _CHUNK_ELEMENTS[self.device.type])
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
        self.tracker = Tracker(self.envelope, self.min_gap, self.min_layers, self.max_layers, self.support_material,
                               self.beampipe, self.eta_max, self.cost_per_cm2, self.cost_per_channel, self.mass, self.device)
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
        design = self.tracker.designs(params)
        momenta = sorted(set(self.momenta) | {self.d0_momentum})
        setup = self.tracker.setup(design, momenta)
        b, m = design["field"].shape[0], len(momenta)
        if self.fidelity == "analytic":
            var_meas, var_ms = fit_variances(setup.radius, setup.weight, setup.sigma[:, 0], setup.radius, setup.theta)
            var = var_meas + var_ms
            pt = (100.0 * 2.0 * var[:, 1].sqrt() / setup.curvature[:, 0]).view(b, m)
            d0 = (1e6 * var[:, 2].sqrt()).view(b, m)
            pt_sem = d0_sem = None
        else:
            moments = resolution_moments(setup.to(self.dtype), self.tracks, self._generator, self.batch_elements, self._fit_tracks)
            pt, pt_sem, d0, d0_sem = (v.view(b, m) for v in moments)
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
        metrics["material_budget"], metrics["cost"] = self.tracker.material_and_cost(design)
        meta = {"fidelity": self.fidelity, **({"tracks": self.tracks} if self.fidelity == "montecarlo" else {})}
        return SimResult(metrics=metrics, sem=sem, metadata=[dict(meta, layers=int(n)) for n in design["layers"].tolist()])

    def simulate_tracks(self, design: Mapping[str, float], n_tracks: int, momentum: float = 10.0) -> dict[str, torch.Tensor]:
        """Fit `n_tracks` independent Monte-Carlo tracks of one design: fitted pt (GeV), curvature (1/m), d0 (um), phi0."""
        n_tracks = positive_int("n_tracks", n_tracks)
        momentum = positive_float("momentum", momentum)
        one = self.tracker.designs({k: torch.as_tensor([float(v)], dtype=torch.float64, device=self.device) for k, v in design.items()})
        setup = self.tracker.setup(one, [momentum]).to(self.dtype)
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
