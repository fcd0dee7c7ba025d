"""Analytic resolution: Highland multiple-scattering angles and the first-order errors of the track fit."""
from __future__ import annotations

import torch


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

