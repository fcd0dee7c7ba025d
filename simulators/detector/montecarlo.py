"""Monte-Carlo resolution: helices propagated exactly through the surfaces, scattered, smeared and fitted in batches."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from simulators.detector.geometry import TrackSetup

FitTracks = Callable[[TrackSetup, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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


def resolution_moments(
    setup: TrackSetup, tracks: int, generator: torch.Generator, batch_elements: int, fit: FitTracks = fit_tracks
) -> tuple[torch.Tensor, ...]:
    """RMS relative curvature error (%) and RMS d0 (um) per configuration (C,), each with its standard error.

    The same `tracks` random tracks go through every configuration, at most `batch_elements` configurations x tracks at once.
    """
    configs, surfaces = setup.radius.shape
    dtype, device = setup.radius.dtype, setup.radius.device
    z = torch.randn((2, surfaces, tracks), generator=generator, dtype=dtype, device=device)
    moments = torch.zeros((4, configs), dtype=torch.float64, device=device)
    step = max(1, batch_elements // configs)
    for start in range(0, tracks, step):
        k, d0, _ = fit(setup, z[0, :, start : start + step], z[1, :, start : start + step])
        for i, err in enumerate(((k / setup.curvature - 1.0).double() * 100.0, d0.double() * 1e6)):
            sq = err * err
            moments[2 * i] += sq.sum(1)
            moments[2 * i + 1] += (sq * sq).sum(1)
    out = []
    for i in range(2):
        m2, m4 = moments[2 * i] / tracks, moments[2 * i + 1] / tracks
        rms = m2.sqrt()
        out += [rms, (m4 - m2 * m2).clamp_min(0.0).sqrt() / (2.0 * rms * math.sqrt(tracks))]
    return tuple(out)
