"""A scanning spectral microscope (STEM-EELS / EDS / Raman mapping) over a specimen built from a real image.

Positions `x` (column) and `y` (row) are stage coordinates in pixels of the specimen map,
0 <= x <= W-1 and 0 <= y <= H-1; `pixel_size` (um per pixel) converts them to stage travel.
A measurement moves the stage (travel at `stage_speed` um/s plus `settle_time` s whenever it
moves), then dwells: a Gaussian probe of `probe_sigma` pixels lands at the position plus the
current stage drift (a seeded random walk in time, `drift_std` pixels per sqrt(s)) and collects
a spectrum with Poisson counts, `flux` counts/s from the specimen plus `background`
counts/s per channel. With `beam_damage` > 0 every pixel's signal decays as
exp(-beam_damage * dose), dose being the seconds of beam current it has received.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from simulators.base import SimResult, SimulatorError
from simulators.microscope import truth
from simulators.microscope.counting import poisson_counts
from simulators.microscope.sample import MAX_PHASES, Sample, build_sample

_DRIFT_STEP_S = 1.0
_DRIFT_BLOCK = 4096
_METRICS = ["peak_ratio", "roi_score", "total_counts"]


def _real(name: str, value: Any, low: float | None = None, high: float | None = None, strict_low: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SimulatorError(f"option {name!r}: expected a number, got {value!r}") from None
    too_low = low is not None and (v < low or (strict_low and v == low))
    too_high = high is not None and v > high
    if not math.isfinite(v) or too_low or too_high:
        limits = [f"{'>' if strict_low else '>='} {low:g}"] if low is not None else []
        limits += [f"<= {high:g}"] if high is not None else []
        raise SimulatorError(f"option {name!r}: expected a number {' and '.join(limits)}, got {value!r}")
    return v


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (isinstance(value, float) and value.is_integer()):
        raise SimulatorError(f"option {name!r}: expected an integer in [{low}, {high}], got {value!r}")
    if not low <= int(value) <= high:
        raise SimulatorError(f"option {name!r}: expected an integer in [{low}, {high}], got {value!r}")
    return int(value)


class DriftPath:
    """Stage drift (pixels) as a seeded 2-D random walk sampled every second, interpolated in time.

    The walk is drawn in fixed blocks in time order, so the offset at time t depends only on the
    seed, never on how measurements were batched.
    """

    def __init__(self, std_per_sqrt_s: float, seed: int, device: torch.device):
        self.scale = std_per_sqrt_s * math.sqrt(_DRIFT_STEP_S)
        self.device = device
        self._generator = torch.Generator().manual_seed(int(seed) + 7919)
        self._path = torch.zeros(1, 2, dtype=torch.float64, device=device)

    def at(self, t: torch.Tensor) -> torch.Tensor:
        """Offsets (b, 2) in pixels at times t (b,) in seconds."""
        if self.scale == 0.0:
            return torch.zeros(t.shape[0], 2, dtype=torch.float64, device=t.device)
        need = int(math.floor(float(t.max()) / _DRIFT_STEP_S)) + 2
        while self._path.shape[0] < need:
            steps = torch.randn(_DRIFT_BLOCK, 2, generator=self._generator, dtype=torch.float64) * self.scale
            block = self._path[-1] + torch.cumsum(steps.to(self.device), 0)
            self._path = torch.cat([self._path, block])
        pos = t / _DRIFT_STEP_S
        i = pos.floor().long()
        frac = (pos - i)[:, None]
        return self._path[i] * (1 - frac) + self._path[i + 1] * frac


class MicroscopeSimulator:
    """Hyperspectral scanning microscope over a specimen from a real image; see the module docstring.

    Metrics per measurement: `peak_ratio` (net marker-line / net reference-line integral, the
    feature of interest), `roi_score` (target-phase fraction from least-squares unmixing,
    0..1) and `total_counts`. Data product: the spectrum, float32 counts (b, channels).

    Options: image (a name in `simulators.microscope.IMAGES` or a path), size (int: square crop,
    or [H, W]), channels, n_endmembers (phases, 2..6), dwell (s, default when not a parameter),
    dwell_range ([low, high] s: makes `dwell` a log-scale parameter), flux (counts/s), background
    (counts/s/channel), probe_sigma (pixels), drift_std (pixels/sqrt(s)), stage_speed (um/s),
    settle_time (s), pixel_size (um), beam_damage (1/s, 0 = off), roi_threshold (target fraction
    that makes a pixel part of a region of interest), min_roi_area (pixels), grid_step (pixels
    between candidates), seed (noise and drift; the specimen does not depend on it), device, dtype.
    """

    name = "microscope"

    def __init__(
        self,
        image: str = "ihc",
        size: int | Sequence[int] = 128,
        channels: int = 256,
        n_endmembers: int = 3,
        dwell: float = 0.1,
        dwell_range: Sequence[float] | None = None,
        flux: float = 2.0e4,
        background: float = 1.0,
        probe_sigma: float = 1.0,
        drift_std: float = 0.05,
        stage_speed: float = 100.0,
        settle_time: float = 0.05,
        pixel_size: float = 1.0,
        beam_damage: float = 0.0,
        roi_threshold: float = 0.5,
        min_roi_area: int = 4,
        grid_step: int = 4,
        seed: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
        **unknown: Any,
    ):
        if unknown:
            raise SimulatorError(
                f"unknown microscope option(s) {sorted(unknown)}; expected some of "
                "image, size, channels, n_endmembers, dwell, dwell_range, flux, background, probe_sigma, "
                "drift_std, stage_speed, settle_time, pixel_size, beam_damage, roi_threshold, "
                "min_roi_area, grid_step, seed, device, dtype"
            )
        if isinstance(size, (list, tuple)):
            if len(size) != 2:
                raise SimulatorError(f"option 'size': expected an integer or [height, width], got {size!r}")
            shape: int | tuple[int, int] = (_integer("size", size[0], 8, 2048), _integer("size", size[1], 8, 2048))
        else:
            shape = _integer("size", size, 8, 2048)
        channels = _integer("channels", channels, 32, 4096)
        n = _integer("n_endmembers", n_endmembers, 2, MAX_PHASES)
        self.dwell = _real("dwell", dwell, 0.0, strict_low=True)
        self.dwell_range: tuple[float, float] | None = None
        if dwell_range is not None:
            expected = f"option 'dwell_range': expected [low, high] in seconds with 0 < low < high, got {dwell_range!r}"
            if not isinstance(dwell_range, (list, tuple)) or len(dwell_range) != 2:
                raise SimulatorError(expected)
            lo, hi = (_real("dwell_range", v) for v in dwell_range)
            if not 0 < lo < hi:
                raise SimulatorError(expected)
            self.dwell_range = (lo, hi)
        self.flux = _real("flux", flux, 0.0, strict_low=True)
        self.background = _real("background", background, 0.0)
        self.drift_std = _real("drift_std", drift_std, 0.0)
        self.stage_speed = _real("stage_speed", stage_speed, 0.0, strict_low=True)
        self.settle_time = _real("settle_time", settle_time, 0.0)
        self.pixel_size = _real("pixel_size", pixel_size, 0.0, strict_low=True)
        self.beam_damage = _real("beam_damage", beam_damage, 0.0)
        _real("probe_sigma", probe_sigma, 0.0)
        self.roi_threshold = _real("roi_threshold", roi_threshold, 0.0, 1.0, strict_low=True)
        self.min_roi_area = _integer("min_roi_area", min_roi_area, 1, 10**7)
        self.seed = _integer("seed", seed, -(2**62), 2**62)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise SimulatorError(f"option 'device': expected 'cpu' or 'cuda[:i]', got {device!r}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SimulatorError("option 'device': CUDA was asked for but torch sees no CUDA device")
        if self.device.type not in ("cpu", "cuda"):
            raise SimulatorError(f"option 'device': expected 'cpu' or 'cuda[:i]', got {device!r}")
        dtypes = {"float32": torch.float32, "float64": torch.float64}
        key = str(dtype).replace("torch.", "")
        if key not in dtypes:
            raise SimulatorError(f"option 'dtype': expected one of {sorted(dtypes)}, got {dtype!r}")
        self.dtype = dtypes[key]

        self.sample: Sample = build_sample(image, shape, channels, n)
        self.height, self.width = self.sample.shape
        self.probe_sigma = _real("probe_sigma", probe_sigma, 0.0, min(self.height, self.width) / 4)
        self.grid_step = _integer("grid_step", grid_step, 1, max(self.height, self.width))
        self.channels = channels

        dev, dt = self.device, self.dtype
        self._abundance_rows = torch.as_tensor(
            self.sample.abundances.reshape(n, -1).T.copy(), dtype=dt, device=dev
        )
        self._spectra = torch.as_tensor(self.sample.spectra, dtype=dt, device=dev)
        self._windows = torch.as_tensor(self.sample.windows, dtype=torch.float64, device=dev)
        self._unmix = torch.as_tensor(np.linalg.pinv(self.sample.spectra), dtype=torch.float64, device=dev)
        radius = int(math.ceil(3 * self.probe_sigma)) if self.probe_sigma > 0 else 0
        span = torch.arange(-radius, radius + 1, dtype=torch.float64, device=dev)
        self._patch_dy, self._patch_dx = (g.reshape(-1) for g in torch.meshgrid(span, span, indexing="ij"))
        self._truth: dict[str, Any] | None = None
        self.reset(self.seed)

    # ------------------------------------------------------------------ description
    def parameters(self) -> list[dict[str, Any]]:
        specs: list[dict[str, Any]] = [
            {"name": "x", "type": "real", "low": 0.0, "high": float(self.width - 1)},
            {"name": "y", "type": "real", "low": 0.0, "high": float(self.height - 1)},
        ]
        if self.dwell_range is not None:
            lo, hi = self.dwell_range
            specs.append({"name": "dwell", "type": "real", "low": lo, "high": hi, "log": True})
        return specs

    def metrics(self) -> list[str]:
        return list(_METRICS)

    def objectives(self) -> list[dict[str, Any]]:
        return [{"metric": "peak_ratio", "goal": "maximize"}]

    def data_shape(self) -> tuple[int, ...]:
        return (self.channels,)

    def energies(self) -> np.ndarray:
        """Channel centres of the spectra, keV."""
        return self.sample.energies.copy()

    def candidates(self) -> dict[str, np.ndarray]:
        """A raster scan grid every `grid_step` pixels, row by row: columns x, y."""
        ys, xs = np.meshgrid(
            np.arange(0, self.height, self.grid_step, dtype=float),
            np.arange(0, self.width, self.grid_step, dtype=float),
            indexing="ij",
        )
        return {"x": xs.ravel(), "y": ys.ravel()}

    @property
    def optimal_value(self) -> float:
        """Largest noiseless peak_ratio on the specimen (for regret)."""
        return float(self.ground_truth()["peak_ratio"].max())

    # ------------------------------------------------------------------ state
    def reset(self, seed: int | None = None) -> None:
        """Back to time 0 at stage position (0, 0), no dose, a fresh drift walk and noise stream."""
        if seed is not None:
            self.seed = int(seed)
        self.clock = 0.0
        self.measurements = 0
        self._stage = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._dose = torch.zeros(self.height * self.width, dtype=torch.float64, device=self.device)
        self._drift = DriftPath(self.drift_std, self.seed, self.device)

    @property
    def stage_position(self) -> tuple[float, float]:
        return float(self._stage[0]), float(self._stage[1])

    def dose_map(self) -> np.ndarray:
        """Beam seconds each pixel has received, (H, W)."""
        return self._dose.reshape(self.height, self.width).cpu().numpy()

    def drift_at(self, t: float | torch.Tensor) -> torch.Tensor:
        """Stage drift (pixels) at time(s) t in seconds: (b, 2)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device).reshape(-1)
        return self._drift.at(t)

    def move_cost(self, a: dict[str, Any], b: dict[str, Any]) -> float:
        """Seconds to go from setting a to setting b: stage travel plus settling if it moves."""
        dist = math.hypot(float(b["x"]) - float(a["x"]), float(b["y"]) - float(a["y"]))
        return dist * self.pixel_size / self.stage_speed + (self.settle_time if dist > 0 else 0.0)

    # ------------------------------------------------------------------ measurement
    def _column(self, values: Any) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float64).to(self.device).reshape(-1)

    def _settings(self, params: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = [k for k in ("x", "y") if k not in params]
        if missing:
            raise SimulatorError(f"microscope: missing parameter(s) {missing}; expected x and y in pixels")
        x, y = self._column(params["x"]), self._column(params["y"])
        dwell = self._column(params["dwell"]) if "dwell" in params else torch.full_like(x, self.dwell)
        if dwell.numel() == 1 and x.numel() > 1:
            dwell = dwell.expand_as(x)
        if not x.shape == y.shape == dwell.shape:
            raise SimulatorError(f"microscope: x, y and dwell must have the same length, got {x.numel()}, {y.numel()}, {dwell.numel()}")
        for name, v, hi in (("x", x, self.width - 1), ("y", y, self.height - 1)):
            bad = ~torch.isfinite(v) | (v < -1e-9) | (v > hi + 1e-9)
            if bool(bad.any()):
                raise SimulatorError(
                    f"{name}={float(v[bad][0]):g} is outside the sample (0 <= {name} <= {hi} pixels)"
                )
        bad = ~torch.isfinite(dwell) | (dwell <= 0)
        if bool(bad.any()):
            raise SimulatorError(f"dwell={float(dwell[bad][0]):g} s: dwell time must be positive")
        return x, y, dwell

    def _probe(self, landed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel indices (b, P) under the probe and their weights (b, P), zero off the sample."""
        cx, cy = landed[:, 0].round(), landed[:, 1].round()
        px = cx[:, None] + self._patch_dx[None]
        py = cy[:, None] + self._patch_dy[None]
        if self.probe_sigma > 0:
            r2 = (px - landed[:, :1]) ** 2 + (py - landed[:, 1:]) ** 2
            w = torch.exp(-r2 / (2 * self.probe_sigma**2))
            w = w / w.sum(1, keepdim=True)
        else:
            w = torch.ones_like(px)
        on = (px >= 0) & (px <= self.width - 1) & (py >= 0) & (py <= self.height - 1)
        index = (py.clamp(0, self.height - 1) * self.width + px.clamp(0, self.width - 1)).long()
        return index, w * on

    def _fractions(self, index: torch.Tensor, weight: torch.Tensor, dwell: torch.Tensor) -> torch.Tensor:
        """Phase fractions (b, n) seen by each probe, after damage; adds each probe's dose."""
        if self.beam_damage == 0.0:
            out = torch.einsum("bp,bpn->bn", weight.to(self.dtype), self._abundance_rows[index])
            self._dose.index_put_((index.reshape(-1),), (weight * dwell[:, None]).reshape(-1), accumulate=True)
            return out
        rows = []
        for i in range(index.shape[0]):
            idx, w = index[i], weight[i]
            intact = torch.exp(-self.beam_damage * self._dose[idx])
            rows.append(((w * intact).to(self.dtype)[:, None] * self._abundance_rows[idx]).sum(0))
            self._dose.index_put_((idx,), w * dwell[i], accumulate=True)
        return torch.stack(rows)

    def evaluate(self, params: dict[str, Any]) -> SimResult:
        """Measure a batch in order: params x, y (and optionally dwell, s) are tensors of shape (b,)."""
        x, y, dwell = self._settings(params)
        b = x.numel()
        target = torch.stack([x, y], 1)
        previous = torch.cat([self._stage[None], target[:-1]])
        dist = (target - previous).norm(dim=1)
        travel = dist * self.pixel_size / self.stage_speed + torch.where(dist > 0, self.settle_time, 0.0)
        steps = torch.cat([torch.tensor([self.clock], dtype=torch.float64, device=self.device), travel + dwell])
        done = torch.cumsum(steps, 0)[1:]
        start = done - dwell
        landed = target + self._drift.at(start + dwell / 2)

        index, weight = self._probe(landed)
        fractions = self._fractions(index, weight, dwell)
        expected = dwell[:, None].to(self.dtype) * (self.flux * fractions @ self._spectra + self.background)
        counts = poisson_counts(expected, self.seed, self.measurements)

        metrics, sem = self._metrics(counts, dwell)
        metadata = [
            {"x_landed": lx, "y_landed": ly, "start_s": t0, "travel_s": tr, "dwell_s": dw}
            for lx, ly, t0, tr, dw in zip(
                landed[:, 0].tolist(), landed[:, 1].tolist(), start.tolist(), travel.tolist(), dwell.tolist()
            )
        ]
        self.clock = float(done[-1])
        self._stage = target[-1].clone()
        self.measurements += b
        return SimResult(metrics=metrics, sem=sem, data=counts.to(torch.float32), metadata=metadata)

    def _metrics(self, counts: torch.Tensor, dwell: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        net = counts @ self._windows
        var = counts.clamp_min(1.0) @ self._windows**2
        ref = net[:, 1].clamp_min(1.0)
        ratio = net[:, 0] / ref
        ratio_sem = torch.sqrt(var[:, 0] + ratio**2 * var[:, 1]) / ref
        total = counts.sum(1)
        rate = counts / dwell[:, None] - self.background
        phases = (rate @ self._unmix / self.flux).clamp_min(0.0)
        score = (phases[:, self.sample.target] / phases.sum(1).clamp_min(1e-12)).clamp(0.0, 1.0)
        metrics = {"peak_ratio": ratio, "roi_score": score, "total_counts": total}
        return metrics, {"peak_ratio": ratio_sem, "total_counts": total.sqrt()}

    # ------------------------------------------------------------------ ground truth (evaluation only)
    def ground_truth(self) -> dict[str, Any]:
        """Truth for scoring, never for policies: numpy maps (H, W) and the specimen's make-up.

        Keys: abundances (n, H, W), spectra (n, C) per unit flux, energies (C,) keV, target,
        peak_ratio / roi_score / total_counts (noiseless, unblurred, undamaged, at the default
        dwell), roi_mask (target fraction > roi_threshold), roi_labels (regions of at least
        min_roi_area pixels, numbered from 1) and roi_count.
        """
        if self._truth is None:
            maps = truth.truth_maps(self.sample, self.flux, self.background, self.dwell)
            mask = self.sample.abundances[self.sample.target] > self.roi_threshold
            labels, count = truth.roi_labels(mask, self.min_roi_area)
            self._truth = {
                "abundances": self.sample.abundances,
                "spectra": self.sample.spectra,
                "energies": self.sample.energies,
                "target": self.sample.target,
                **maps,
                "roi_mask": mask,
                "roi_labels": labels,
                "roi_count": count,
            }
        return self._truth

    def roi_recall(self, visited_xy: Any, radius: float = 0.0) -> float:
        """Fraction of regions of interest hit by a visited position (within radius pixels)."""
        gt = self.ground_truth()
        return truth.roi_recall(gt["roi_labels"], gt["roi_count"], visited_xy, radius)

    def coverage(self, visited_xy: Any) -> float:
        """Fraction of the specimen's pixels visited."""
        return truth.coverage((self.height, self.width), visited_xy)

    def reconstruction_error(self, pred_map: Any, metric: str = "peak_ratio") -> float:
        """Normalised RMSE of a reconstructed (H, W) map of a metric against its noiseless truth."""
        if metric not in _METRICS:
            raise SimulatorError(f"unknown metric {metric!r}; expected one of {_METRICS}")
        return truth.reconstruction_error(self.ground_truth()[metric], pred_map)
