"""The specimen: a real image turned into phase abundance maps, each phase with its own spectrum.

An image shipped with scikit-image (or a user's file) is mapped to a feature space (stain
densities from colour deconvolution for immunohistochemistry, colour for other RGB images,
intensity for grey images) and split into `n` phases by soft k-means, so every pixel holds a
mixture whose fractions sum to one. Each phase has an EDS/XRF-like spectrum on a keV axis: a
decaying continuum plus pseudo-Voigt lines. A reference line is common to all phases; a marker
line belongs to the target phase only (the stained, rare or feature-bearing one), so the ratio
of the two line integrals marks the regions of interest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import color, data, io, transform

from simulators.base import SimulatorError

# Images shipped inside scikit-image itself (no download): option name -> skimage.data function.
IMAGES: dict[str, str] = {
    "ihc": "immunohistochemistry",
    "cell": "cell",
    "retina": "retina",
    "coins": "coins",
    "moon": "moon",
    "microaneurysms": "microaneurysms",
    "hubble": "hubble_deep_field",
    "gravel": "gravel",
}
_ALIASES = {"immunohistochemistry": "ihc", "hubble_deep_field": "hubble"}

ENERGY_RANGE_KEV = (0.5, 10.0)
REFERENCE_LINE_KEV = 2.0
MARKER_LINE_KEV = 7.5
# Lines of the non-target phases, at least 1 keV away from both lines above.
PHASE_LINES_KEV = (4.5, 3.4, 6.4, 5.4, 9.0)
MAX_PHASES = len(PHASE_LINES_KEV) + 1
_LORENTZ_FRACTION = 0.25
_MIN_TARGET_AREA = 0.02


def line_sigma(energy_kev: np.ndarray | float) -> np.ndarray | float:
    """Gaussian width (keV) of a line: detector resolution that grows with energy."""
    return 0.05 + 0.004 * np.asarray(energy_kev)


@dataclass(frozen=True)
class Sample:
    """A specimen of H x W pixels and n phases.

    abundances: (n, H, W) phase fractions, summing to 1 at every pixel.
    spectra: (n, C) expected counts per unit flux of each pure phase (its yield folded in).
    energies: (C,) channel centres in keV.
    target: index of the phase that carries the marker line.
    windows: (C, 2) weights giving background-subtracted net integrals of the marker line
        (column 0) and the reference line (column 1) from a spectrum by one matmul.
    """

    name: str
    abundances: np.ndarray
    spectra: np.ndarray
    energies: np.ndarray
    target: int
    yields: np.ndarray
    windows: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.abundances.shape[1], self.abundances.shape[2]


def load_image(image: str, size: int | tuple[int, int]) -> tuple[np.ndarray, str, str]:
    """The image as floats in [0, 1], (H, W) or (H, W, 3), resized; plus its kind and name.

    An int size centre-crops to a square first (keeps the aspect); (H, W) resizes as given.
    """
    key = _ALIASES.get(str(image).lower(), str(image).lower())
    if key in IMAGES:
        pixels = getattr(data, IMAGES[key])()
        name = key
    else:
        path = Path(str(image)).expanduser()
        if not path.is_file():
            raise SimulatorError(
                f"option 'image': {image!r} is neither a built-in sample "
                f"({', '.join(sorted(IMAGES))}) nor an image file"
            )
        try:
            pixels = io.imread(str(path))
        except (OSError, ValueError) as exc:
            raise SimulatorError(f"option 'image': cannot read {path}: {exc}") from exc
        name = path.name
    img = np.asarray(pixels)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3) or min(img.shape[:2]) < 4:
        raise SimulatorError(f"option 'image': expected a grey or RGB picture, got shape {img.shape}")
    img = img.astype(np.float64)
    if img.max() > 1.0:
        img = img / (255.0 if img.max() <= 255 else img.max())
    if isinstance(size, int):
        h, w = img.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        img = img[top : top + s, left : left + s]
        out_shape = (size, size)
    else:
        out_shape = (int(size[0]), int(size[1]))
    img = transform.resize(img, out_shape + img.shape[2:], anti_aliasing=True)
    kind = "ihc" if key == "ihc" else ("rgb" if img.ndim == 3 else "gray")
    return np.clip(img, 0.0, 1.0), kind, name


def _features(img: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per-pixel features (N, d) for clustering, the marker feature (N,) and a density (N,)."""
    if kind == "ihc":
        hed = color.rgb2hed(img).reshape(-1, 3)
        feats, marker = hed, hed[:, 2]
        density = 1.0 - color.rgb2gray(img).ravel()
    elif kind == "rgb":
        feats = img.reshape(-1, 3)
        marker = None
        density = 1.0 - color.rgb2gray(img).ravel()
    else:
        smooth = ndimage.gaussian_filter(img, 1.5)
        feats = np.stack([img.ravel(), smooth.ravel()], axis=1)
        marker = None
        density = img.ravel()
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-12)
    return feats, marker, density


def _sq_distances(feats: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distances (N, n) without an (N, n, d) temporary."""
    d2 = (feats**2).sum(1)[:, None] - 2 * feats @ centres.T + (centres**2).sum(1)[None]
    return np.maximum(d2, 0.0)


def _kmeans(feats: np.ndarray, n: int, iterations: int = 30, max_points: int = 65536) -> np.ndarray:
    """Deterministic k-means centres (n, d), started at quantiles along the first principal axis."""
    points = feats[:: max(1, len(feats) // max_points)]
    _, _, vt = np.linalg.svd(points - points.mean(0), full_matrices=False)
    order = np.argsort(points @ vt[0])
    centres = points[order[((np.arange(n) + 0.5) / n * len(order)).astype(int)]].copy()
    for _ in range(iterations):
        labels = _sq_distances(points, centres).argmin(1)
        for k in range(n):
            members = points[labels == k]
            if len(members):
                centres[k] = members.mean(0)
    return centres


def abundance_maps(img: np.ndarray, kind: str, n: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Soft phase fractions (n, H, W), the target phase and each phase's yield in [0.3, 1].

    Memberships fall off as a Gaussian of the feature distance to each phase centre (width a
    third of the closest centre spacing), so phase interiors are nearly pure and borders mix.
    The target is the phase richest in the marker stain (DAB for IHC), otherwise the rarest
    phase that covers at least 2 % of the image.
    """
    h, w = img.shape[:2]
    feats, marker, density = _features(img, kind)
    centres = _kmeans(feats, n)
    d2 = _sq_distances(feats, centres)
    spacing = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    spacing[np.eye(n, dtype=bool)] = np.inf
    tau = max(float(spacing.min()) / 3.0, 1e-6)
    logits = -d2 / (2 * tau**2)
    member = np.exp(logits - logits.max(1, keepdims=True))
    member /= member.sum(1, keepdims=True)
    area = member.mean(0)
    if marker is not None:
        target = int(np.argmax((member * marker[:, None]).sum(0) / (member.sum(0) + 1e-12)))
    else:
        eligible = np.where(area >= _MIN_TARGET_AREA)[0]
        pool = eligible if len(eligible) else np.arange(n)
        target = int(pool[np.argmin(area[pool])])
    phase_density = (member * density[:, None]).sum(0) / (member.sum(0) + 1e-12)
    span = float(np.ptp(phase_density))
    yields = 0.3 + 0.7 * (phase_density - phase_density.min()) / span if span > 0 else np.ones(n)
    return member.T.reshape(n, h, w), target, yields


def _pseudo_voigt(energies: np.ndarray, centre: float) -> np.ndarray:
    sigma = float(line_sigma(centre))
    gamma = sigma * np.sqrt(2 * np.log(2))
    gauss = np.exp(-0.5 * ((energies - centre) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    lorentz = gamma / (np.pi * ((energies - centre) ** 2 + gamma**2))
    return (1 - _LORENTZ_FRACTION) * gauss + _LORENTZ_FRACTION * lorentz


def phase_spectra(energies: np.ndarray, n: int, target: int) -> np.ndarray:
    """Unit-sum spectra (n, C): continuum with a low-energy absorption edge, reference line, own line."""
    out = np.empty((n, energies.size))
    others = iter(PHASE_LINES_KEV)
    for k in range(n):
        slope = 1.6 + 0.3 * (k % 3)
        continuum = energies ** (-slope) * (1 - np.exp(-((energies / 1.0) ** 3)))
        own = MARKER_LINE_KEV if k == target else next(others)
        ref_share = 0.10 if k == target else 0.14 + 0.04 * (k % 3)
        parts = [
            (0.55, continuum),
            (ref_share, _pseudo_voigt(energies, REFERENCE_LINE_KEV)),
            (0.45 - ref_share, _pseudo_voigt(energies, own)),
        ]
        spec = sum(share * shape / shape.sum() for share, shape in parts)
        out[k] = spec / spec.sum()
    return out


def line_windows(energies: np.ndarray) -> np.ndarray:
    """Weights (C, 2): +1 inside each line's +-2 sigma window, flanks subtract the local background."""
    de = energies[1] - energies[0]
    out = np.zeros((energies.size, 2))
    for col, centre in enumerate((MARKER_LINE_KEV, REFERENCE_LINE_KEV)):
        c0 = int(np.argmin(np.abs(energies - centre)))
        hw = max(1, int(round(2 * float(line_sigma(centre)) / de)))
        fw = hw
        out[c0 - hw : c0 + hw + 1, col] = 1.0
        scale = (2 * hw + 1) / (2 * fw)
        out[c0 - hw - fw : c0 - hw, col] = -scale
        out[c0 + hw + 1 : c0 + hw + 1 + fw, col] = -scale
    return out


def build_sample(image: str, size: int | tuple[int, int], channels: int, n_phases: int) -> Sample:
    """The specimen for the given options (deterministic: the seed only drives noise and drift)."""
    img, kind, name = load_image(image, size)
    abundances, target, yields = abundance_maps(img, kind, n_phases)
    energies = np.linspace(*ENERGY_RANGE_KEV, channels)
    spectra = phase_spectra(energies, n_phases, target) * yields[:, None]
    return Sample(
        name=name,
        abundances=abundances,
        spectra=spectra,
        energies=energies,
        target=target,
        yields=yields,
        windows=line_windows(energies),
    )
