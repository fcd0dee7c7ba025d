"""Autoencoders that learn what is already known: the networks and how one is chosen for a shape.

A data product of shape `shape` (a vector or spectrum `(d,)`, an image `(H, W)` or `(C, H, W)`)
gets an MLP or a small convolutional autoencoder (`architecture_for`); `build_autoencoder` makes it
with seeded weights. Scaling is in `scaling`, training in `training`, scores in `detector`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from policies.selection.errors import SelectionError


@dataclass(frozen=True)
class Architecture:
    """What network to build: kind 'mlp' or 'conv', one sample's shape, latent width, layer widths.

    `hidden` holds the MLP's hidden widths (encoder order; the decoder mirrors them) or the
    convolutional encoder's channels (each layer halves the image); `latent` is the MLP's code
    width or the channels of each cell of the convolutional network's spatial code.
    """

    kind: str
    shape: tuple[int, ...]
    latent: int
    hidden: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "latent": self.latent, "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict) -> Architecture:
        return cls(str(d["kind"]), tuple(int(s) for s in d["shape"]), int(d["latent"]), tuple(int(h) for h in d["hidden"]))


def _is_image(shape: tuple[int, ...]) -> bool:
    if len(shape) == 2:
        return min(shape) >= 16
    return len(shape) == 3 and shape[0] <= 8 and min(shape[1:]) >= 16


def architecture_for(
    shape: tuple[int, ...], latent: int = 8, kind: str = "auto", hidden: tuple[int, ...] | list[int] | None = None
) -> Architecture:
    """Pick a network for data products of `shape`.

    Images ((H, W) or (C, H, W) with C <= 8, both sides >= 16) get the convolutional network
    with latent // 4 channels per code cell (64x64 with latent 8: 8x8 cells x 2 = 128 numbers),
    everything else is flattened into the MLP. Default MLP widths: d/2 clipped to [128, 256], then
    64; scoring cost is dominated by the first and last layers (for d = 256: 256-128-64-8).
    """
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise SelectionError(f"a data product must have at least one feature, got shape {shape}")
    if latent < 1:
        raise SelectionError(f"latent: expected a positive width, got {latent}")
    if kind == "auto":
        kind = "conv" if _is_image(shape) else "mlp"
    if kind == "conv":
        if len(shape) not in (2, 3):
            raise SelectionError(f"a convolutional autoencoder needs (H, W) or (C, H, W) data, got shape {shape}")
        return Architecture("conv", shape, max(1, latent // 4), tuple(hidden) if hidden else (8, 16, 32))
    if kind != "mlp":
        raise SelectionError(f"architecture: expected 'auto', 'mlp' or 'conv', got {kind!r}")
    d = math.prod(shape)
    if hidden is None:
        h1 = int(min(256, max(128, d // 2)))
        h2 = int(max(2 * latent, min(64, h1 // 2)))
        hidden = (h1, h2)
    return Architecture("mlp", shape, latent, tuple(int(h) for h in hidden))


class MLPAutoencoder(nn.Module):
    """Fully connected autoencoder over flattened samples: (b, *shape) -> (reconstruction, latent (b, k))."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.shape = arch.shape
        widths = [math.prod(arch.shape), *arch.hidden, arch.latent]
        self.encoder = self._stack(widths)
        self.decoder = self._stack(widths[::-1])

    @staticmethod
    def _stack(widths: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(x.shape[0], -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decoder(z).reshape(x.shape), z


class ConvAutoencoder(nn.Module):
    """Small convolutional autoencoder for image cutouts (b, H, W) or (b, C, H, W).

    Each encoder layer is a stride-2 3x3 convolution; a 1x1 convolution then squeezes every cell
    of the coarse grid to `arch.latent` channels, so the code is spatial (64x64 -> 8x8 cells x 2).
    A spatial code reconstructs what is common anywhere in a cutout (stars, galaxies, noise) and
    fails on shapes never seen (a streak, a ring), which a dense code of a few numbers cannot tell
    apart from a busy star field. Images are zero-padded to a multiple of 2**layers and the
    reconstruction cropped back, so any size >= 16 works.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.shape = arch.shape
        c, h, w = (1, *arch.shape) if len(arch.shape) == 2 else arch.shape
        self.channels, self.height, self.width = c, h, w
        m = 2 ** len(arch.hidden)
        self.pad_h, self.pad_w = (-h) % m, (-w) % m
        chans = [c, *arch.hidden]
        enc: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        enc.append(nn.Conv2d(chans[-1], arch.latent, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(arch.latent, chans[-1], 1), nn.ReLU(inplace=True)]
        rev = chans[::-1]
        for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            dec.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(rev) - 2:
                dec.append(nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(*dec)

    def _as_image(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.channels, self.height, self.width)
        if self.pad_h or self.pad_w:
            x = F.pad(x, (0, self.pad_w, 0, self.pad_h))
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._as_image(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(self._as_image(x))
        out = self.decoder(code)[:, :, : self.height, : self.width]
        return out.reshape(x.shape), code.flatten(1)


def build_autoencoder(arch: Architecture, seed: int | None = None) -> nn.Module:
    """The network for `arch`, its weights drawn from `seed` (without touching torch's global RNG)."""
    model: nn.Module = MLPAutoencoder(arch) if arch.kind == "mlp" else ConvAutoencoder(arch)
    if seed is not None:
        g = torch.Generator().manual_seed(int(seed))
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(m.weight, a=0.0, nonlinearity="relu", generator=g)
                bound = 1.0 / math.sqrt(max(m.weight[0].numel(), 1))
                with torch.no_grad():
                    m.bias.uniform_(-bound, bound, generator=g)
    return model
