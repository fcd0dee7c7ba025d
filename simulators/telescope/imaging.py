"""Image cutouts: a real static sky (the Hubble Deep Field), the transients, seeing blur and sky noise.

Each field sees its own patch of `skimage.data.hubble_deep_field()` (a seeded offset and one of the
eight flips/rotations), so a field always shows the same galaxies. Images are in flux units with
zero point ZERO_POINT (flux = 10**(-0.4 * (mag - ZERO_POINT))), sky subtracted; noise is set so that
a point source at the exposure's 5-sigma depth has SNR 5 under PSF fitting.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

ZERO_POINT = 30.0
STATIC_MAG_PER_PIXEL = 23.0


@lru_cache(maxsize=1)
def _hubble_deep_field() -> np.ndarray:
    from skimage.data import hubble_deep_field

    rgb = hubble_deep_field().astype(np.float32) / 255.0
    gray = rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    gray = np.clip(gray - np.median(gray), 0.0, None)
    return gray / gray.max()


def flux(mag: torch.Tensor) -> torch.Tensor:
    """Flux in image units for an AB magnitude."""
    return 10.0 ** (-0.4 * (mag - ZERO_POINT))


class StaticSky:
    """Per-field patches of the Hubble Deep Field as static flux images of side `size`."""

    def __init__(self, n_fields: int, size: int, generator: torch.Generator, device: torch.device):
        image = torch.as_tensor(_hubble_deep_field())
        if size > min(image.shape):
            raise ValueError(f"cutout size {size} exceeds the static image ({tuple(image.shape)})")
        self.size = size
        self.device = device
        self.image = (image * float(flux(torch.tensor(STATIC_MAG_PER_PIXEL)))).to(device)
        h, w = image.shape
        self.y0 = torch.randint(0, h - size + 1, (n_fields,), generator=generator).to(device)
        self.x0 = torch.randint(0, w - size + 1, (n_fields,), generator=generator).to(device)
        self.orientation = torch.randint(0, 8, (n_fields,), generator=generator).to(device)

    def pixels(self, fields: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Static flux at cutout pixel (row i, column j) of field rows `fields` (all broadcast)."""
        fields = fields.to(self.device)
        code = self.orientation[fields]
        transposed = (code & 4).bool()
        r, c = torch.where(transposed, j, i), torch.where(transposed, i, j)
        r = torch.where((code & 1).bool(), self.size - 1 - r, r)
        c = torch.where((code & 2).bool(), self.size - 1 - c, c)
        return self.image[self.y0[fields] + r, self.x0[fields] + c]

    def cutouts(self, fields: torch.Tensor) -> torch.Tensor:
        """Static flux images (b, size, size) of field rows `fields` (b,)."""
        s = torch.arange(self.size, device=self.device)
        return self.pixels(fields.to(self.device).view(-1, 1, 1), s.view(1, -1, 1), s.view(1, 1, -1))


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image (b, h, w) by its own Gaussian sigma (b,) in pixels (separable, zero padded)."""
    b = images.shape[0]
    half = int(math.ceil(3.0 * float(sigma.max()))) if b else 0
    half = max(1, min(half, images.shape[-1] // 2))
    t = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-0.5 * (t / sigma.to(images.dtype).unsqueeze(1)) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    x = images.unsqueeze(0)
    x = torch.nn.functional.conv2d(x, k.view(b, 1, 1, -1), padding=(0, half), groups=b)
    x = torch.nn.functional.conv2d(x, k.view(b, 1, -1, 1), padding=(half, 0), groups=b)
    return x.squeeze(0)


def point_sources(size: int, x: torch.Tensor, y: torch.Tensor, fluxes: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Images (b, size, size) of Gaussian point sources at (x, y) (b, m) with `fluxes` (b, m), sigma (b,) pixels."""
    p = torch.arange(size, device=x.device, dtype=x.dtype)
    s = sigma.to(x.dtype).view(-1, 1, 1)
    gx = torch.exp(-0.5 * ((p.view(1, 1, -1) - x.unsqueeze(-1)) / s) ** 2)
    gy = torch.exp(-0.5 * ((p.view(1, 1, -1) - y.unsqueeze(-1)) / s) ** 2)
    norm = fluxes / (2.0 * math.pi * s.squeeze(-1) ** 2)
    return torch.einsum("bm,bmy,bmx->byx", norm, gy, gx)


def noise_sigma(depth: torch.Tensor, psf_sigma: torch.Tensor) -> torch.Tensor:
    """Per-pixel noise (flux units) at which a point source at 5-sigma `depth` has PSF-fit SNR 5."""
    return flux(depth) / (5.0 * math.sqrt(4.0 * math.pi) * psf_sigma)


def host_positions(static: StaticSky, fields: torch.Tensor, generator: torch.Generator, margin: int = 4,
                   tries: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel (x, y) float64 for transients in `fields`: of `tries` uniform candidates, one drawn in proportion
    to the static sky's light there (plus a floor), so most transients sit on galaxies."""
    m = int(fields.numel())
    cand = torch.randint(margin, static.size - margin, (2, m, tries), generator=generator)
    light = static.pixels(fields.view(-1, 1), cand[0].to(static.device), cand[1].to(static.device))
    w = light.to(torch.float64).cpu()
    w = (w + 0.05 * float(static.image.mean()) + 1e-12).cumsum(dim=1)
    u = torch.rand(m, 1, generator=generator, dtype=torch.float64) * w[:, -1:]
    pick = torch.searchsorted(w, u).clamp(max=tries - 1)
    y = cand[0].gather(1, pick).squeeze(1).to(torch.float64)
    x = cand[1].gather(1, pick).squeeze(1).to(torch.float64)
    jitter = torch.rand(2, m, generator=generator, dtype=torch.float64) - 0.5
    return x + jitter[0], y + jitter[1]


def render(static: StaticSky, rows: torch.Tensor, psf_sigma: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
           fluxes: torch.Tensor, depth: torch.Tensor, dome_open: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cutouts (b, s, s) float32: static sky plus point sources (x, y, fluxes: b x m, zero-padded), blurred by
    the PSF (sigma b, pixels), with the noise of 5-sigma `depth` (b); blank where the dome is closed."""
    device = static.device
    psf = psf_sigma.to(device=device, dtype=torch.float32)
    image = gaussian_blur(static.cutouts(rows).to(torch.float32), psf)
    if x.shape[1]:
        f32 = lambda v: v.to(device=device, dtype=torch.float32)  # noqa: E731
        image = image + point_sources(static.size, f32(x), f32(y), f32(fluxes), psf)
    sigma = noise_sigma(depth.to(device=device, dtype=torch.float32), psf)
    noise = torch.randn(image.shape, generator=generator, device=device, dtype=torch.float32)
    image = image + sigma.view(-1, 1, 1) * noise
    return torch.where(dome_open.to(device).view(-1, 1, 1), image, torch.zeros_like(image))
