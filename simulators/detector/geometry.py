"""The barrel layout of a tracker design: validated designs, their material and cost, and the track-model constants."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from simulators.base import SimulatorError
from simulators.detector.analytic import highland_angle

GEV_PER_TESLA_METRE = 0.299792458
SILICON_X0_UM = 93_700.0
PION_MASS_GEV = 0.13957
REACH_MARGIN = 1.1


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


@dataclass(frozen=True)
class Tracker:
    """What every design shares: envelope and layer limits (mm), support and beam-pipe material (% X0), cost rates.

    `designs` validates a batch of parameter columns, `setup` turns designs into per-(design, momentum)
    track-model constants, `material_and_cost` scores them; all tensors live on `device`.
    """

    envelope: tuple[float, float]
    min_gap: float
    min_layers: int
    max_layers: int
    support_material: float
    beampipe: tuple[float, float]
    eta_max: float
    cost_per_cm2: float
    cost_per_channel: float
    mass: float
    device: torch.device

    def designs(self, params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
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
        values = {n: self.column(n, params[n]) for n in names}
        b = max(v.shape[0] for v in values.values())
        values = {n: self.broadcast(n, v, b) for n, v in values.items()}
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
            [self.broadcast(n, self.column(n, params[n]), b) if j < used else unused for j, n in enumerate(radius_names)], dim=1
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

    def column(self, name: str, value: Any) -> torch.Tensor:
        try:
            column = torch.as_tensor(value, dtype=torch.float64, device=self.device).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise SimulatorError(f"detector: parameter {name!r} must be numbers, got {value!r}") from exc
        if column.numel() == 0 or not torch.isfinite(column).all():
            raise SimulatorError(f"detector: parameter {name!r} must hold finite numbers, got {value!r}")
        return column

    @staticmethod
    def broadcast(name: str, column: torch.Tensor, b: int) -> torch.Tensor:
        if column.shape[0] not in (1, b):
            raise SimulatorError(f"detector: parameter {name!r} has {column.shape[0]} values but the batch has {b} designs")
        return column.expand(b)

    def check_reach(self, design: dict[str, torch.Tensor], momenta: Sequence[float]) -> None:
        reach = 2.0 * min(momenta) / (GEV_PER_TESLA_METRE * design["field"])
        short = reach < REACH_MARGIN * design["radii"][:, -1]
        if short.any():
            i = int(short.nonzero()[0])
            raise SimulatorError(
                f"design {i}: a {min(momenta):g} GeV track in {float(design['field'][i]):g} T curls up within "
                f"{1000 * float(reach[i]):.0f} mm and misses the outer layer at {1000 * float(design['radii'][i, -1]):.0f} mm"
            )

    def setup(self, design: dict[str, torch.Tensor], momenta: Sequence[float]) -> TrackSetup:
        """Track-model constants for every (design, momentum) pair, designs major, in float64."""
        self.check_reach(design, momenta)
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

    def material_and_cost(self, design: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Material budget (% X0 of the used layers) and cost (millions) of each design."""
        active = design["active"].to(torch.float64)
        per_layer = design["thickness"] / SILICON_X0_UM * 100.0 + self.support_material
        material = per_layer * active.sum(1)
        r_cm = design["radii"] * 100.0
        area = (2.0 * math.pi * r_cm * 2.0 * r_cm * math.sinh(self.eta_max) * active).sum(1)
        channels = area / (design["pitch"] * 1e-4) ** 2
        return material, (area * self.cost_per_cm2 + channels * self.cost_per_channel) / 1e6

